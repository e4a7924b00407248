"""The apps that test_asgi.py serves with uvicorn and with `gunicorn -w 4
-k uvicorn_worker.UvicornWorker`: ``app`` (FastAPI: dependency limits,
per-path and default limits) and ``plain`` (a bare ASGI callable behind
the middleware). Every request a limited endpoint serves appends a line to
``$ASGI_SERVED_LOG`` (O_APPEND: whole lines from every worker), so a test
can compare the app's own count with the limiter's."""

import asyncio
import os
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, WebSocket

from ratekeeper.asgi import Ratekeeper, header

SERVED_LOG = os.environ.get("ASGI_SERVED_LOG")


def served(what: str) -> None:
    if SERVED_LOG:
        fd = os.open(SERVED_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{what} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


@asynccontextmanager
async def lifespan(app):
    app.state.lifespan_ran = True  # proves the lifespan scope went through the middleware
    yield


app = FastAPI(lifespan=lifespan)
# engine: the shared file of $RATEKEEPER_SHARED_PATH (set by ratekeeper.gunicorn's
# hooks, or by the test for uvicorn), else in-process.
rk = Ratekeeper(app, default="50/hour", paths={"/nap": None, "/pid": None, "/path-limited": "4/hour"},
                # no X-Forwarded-For trust: uvicorn is started with --no-proxy-headers too
                trusted_proxies=0)


@app.get("/hourly", dependencies=[Depends(rk.limit("20/hour"))])
async def hourly():
    """No refill during a test (one token per 3 minutes): exact totals.
    Returns a dict: the middleware adds the RateLimit fields."""
    served("hourly")
    return {"pid": os.getpid()}


@app.get("/multi")
async def multi(_a=Depends(rk.limit("3/hour", name="small")),
                _b=Depends(rk.limit("100/day", name="wide", key=header("X-API-Key")))):
    served("multi")
    return {"pid": os.getpid()}


@app.get("/too-costly", dependencies=[Depends(rk.limit("2/hour", cost=5))])
async def too_costly():
    return {"never": True}


@app.get("/path-limited")
async def path_limited():
    served("path-limited")
    return {"pid": os.getpid()}


@app.get("/defaulted")
async def defaulted():
    return {"pid": os.getpid()}


@app.post("/upload", dependencies=[Depends(rk.limit("30/hour"))])
async def upload(request: Request):
    body = await request.body()  # a client that disconnects mid-body ends this with ClientDisconnect
    served("upload")
    return {"bytes": len(body)}


@app.get("/lifespan")
async def lifespan_state(request: Request):
    return {"lifespan_ran": getattr(request.app.state, "lifespan_ran", False)}


@app.get("/pid")
async def pid():
    return {"pid": os.getpid()}


@app.get("/nap")
async def nap():
    """Blocks its worker's event loop for 0.2 s on purpose: concurrent naps
    reach every ready worker, which is how the fixture waits until all of
    them have booted."""
    time.sleep(0.2)
    return {"pid": os.getpid()}


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo:{text}")
    await websocket.close()


# -- a plain ASGI app (no framework) behind the middleware ------------------

plain_rk = Ratekeeper(default="6/hour", paths={"/login": "2/hour", "/free": None})


async def _plain(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    served("plain")
    await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


plain = plain_rk.wrap(_plain)
