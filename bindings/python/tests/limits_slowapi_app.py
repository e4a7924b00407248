"""A slowapi (Starlette) app whose only ratekeeper line is the storage URI
(test_limits_gunicorn.py serves it with `gunicorn -k
uvicorn_worker.UvicornWorker -w 4`). The strategy is $LIMITS_STRATEGY;
every request the endpoint serves appends a line to $SERVED_LOG."""

import os
import time

from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import ratekeeper.limits_storage  # noqa: F401  registers ratekeeper+shm:// with limits

limiter = Limiter(
    key_func=get_remote_address,
    storage_uri=f"ratekeeper+shm://{os.environ['RATEKEEPER_SHARED_PATH']}",
    strategy=os.environ["LIMITS_STRATEGY"],
    headers_enabled=True,
)
_served = os.open(os.environ["SERVED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


@limiter.limit("20/year")  # no window edge during a test: exact totals for every strategy
async def limited(request: Request):
    os.write(_served, f"{os.getpid()}\n".encode())
    return JSONResponse({"pid": os.getpid()})


async def nap(request: Request):
    """Blocks its worker's event loop for 0.2 s (on purpose: the fixture's
    wait for every worker needs each request to hold one worker)."""
    time.sleep(0.2)
    return JSONResponse({"pid": os.getpid()})


app = Starlette(routes=[Route("/limited", limited), Route("/nap", nap)])
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
