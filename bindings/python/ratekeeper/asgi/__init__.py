"""ASGI (FastAPI, Starlette, any ASGI app): the limits, keys, 429s and
options of :mod:`ratekeeper.flask`, as a pure ASGI middleware.

.. code-block:: python

    from fastapi import Depends, FastAPI
    from ratekeeper.asgi import Ratekeeper, header

    app = FastAPI()
    rk = Ratekeeper(app, default="100/minute", paths={"/health": None})

    @app.get("/search", dependencies=[Depends(rk.limit("10/second", key=header("X-API-Key")))])
    async def search(q: str):
        return {"q": q}              # RateLimit fields added by the middleware

Any ASGI app: ``app = Ratekeeper(default="100/minute").wrap(app)``.

Which limits apply to a request (all checked in one engine call: the
request passes only if all allow, and then all are charged): application
limits; the route's own ``rk.limit`` dependencies; unless they all override
the defaults, the limits of the longest matching ``paths`` pattern, else the
default limits (counted per route: the Starlette/FastAPI route's name, else
the path). A path mapped to ``None`` is exempt.

The event loop never blocks: with an in-process or shared-file engine the
check runs inline (a few hundred nanoseconds of engine time); with Redis,
every engine call (and opening an engine, the first request of a process)
runs in a worker thread through ``anyio.to_thread.run_sync`` (else
``asyncio.to_thread``). :func:`acquire` does the same for concurrency
permits with a ``timeout``.

Layout (one module per concern): ``_keys`` (key functions and the request
being checked), ``_extension`` (:class:`Ratekeeper`, the check, the
dependency), ``_middleware`` (:class:`RatekeeperMiddleware`),
``_responses`` (what the middleware writes itself), ``_threads`` (what
runs off the event loop); the rest is shared with the Flask extension in
``ratekeeper._web``.
"""

from __future__ import annotations

from .._core import Penalty, redis_engine, shared_engine
from .._web.constants import DEFAULTS
from .._web.options import Access, OnFailure, PolicyOptions, WhenFull
from .._web.plan import KeyFunc, LimitDecl, Spec
from .._web.responses import Breach
from ._extension import SCOPE_KEY, Ratekeeper
from ._middleware import RatekeeperMiddleware
from ._responses import RateLimited
from ._threads import acquire, release, run_off_loop
from ._keys import current_scope, endpoint, header, remote_addr, user

__all__ = [
    "Ratekeeper",
    "RatekeeperMiddleware",
    "RateLimited",
    "Breach",
    "LimitDecl",
    "remote_addr",
    "header",
    "user",
    "endpoint",
    "current_scope",
    "acquire",
    "release",
    "run_off_loop",
    "shared_engine",
    "redis_engine",
    "Penalty",
    "DEFAULTS",
    "KeyFunc",
    "Spec",
    "PolicyOptions",
    "OnFailure",
    "WhenFull",
    "Access",
    "SCOPE_KEY",
]
