"""Flask extension: rate limits for every route, checked in one engine call
per request, with standard 429 responses.

.. code-block:: python

    from flask import Flask
    from ratekeeper.flask import Ratekeeper, remote_addr, header

    app = Flask(__name__)
    rk = Ratekeeper(app, default="100/minute", key=remote_addr)

    @app.get("/search")
    @rk.limit("10/second", name="burst")
    @rk.limit("1000/hour", name="hourly", key=header("X-API-Key"))
    def search(): ...

Which limits apply to a request (all of them are checked together, with one
``Engine.check_many`` call: the request passes only if every one allows, and
then every one is charged):

- application limits (``RATEKEEPER_APPLICATION_LIMITS``): one counter per
  client across the whole app;
- the route's own limits (``@rk.limit``, ``@rk.shared_limit``); else its
  blueprint's limits (``rk.limit(...)(bp)`` / ``rk.blueprint_limit``); else
  the default limits (``RATEKEEPER_DEFAULT``), counted per route. A route
  limit with ``override_defaults=False`` keeps the defaults too;
- nothing for ``@rk.exempt`` views; an exempt blueprint keeps only its views'
  own limits.

Every distinct spec string becomes one engine policy (named
``<RATEKEEPER_KEY_PREFIX>:<spec>``); limits are kept apart by the key, which
is ``scope + key function value`` (scope: the endpoint for route, blueprint
and default limits, ``scope=`` for shared limits, one app-wide scope for
application limits).

Over-limit response: ``429`` with ``Retry-After`` (whole seconds, rounded
up), ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-
headers-10), optionally the legacy ``X-RateLimit-*`` fields, and an RFC 9457
``application/problem+json`` body. If the engine fails, requests pass
(``RATEKEEPER_FAIL_OPEN = True``, the default, with a logged warning) or get
``503`` (``False``): a failing limiter is the server's fault, not the
client's, so it is not reported as 429.

Many hosts: with ``RATEKEEPER_REDIS_URL`` (config, else the environment
variable) the limits live in Redis, shared by every host: one round trip per
request, whatever the number of its limits. Redis going down is not an
engine failure: within the engine's timeout (default 0.1 s) the request is
decided by ``RATEKEEPER_REDIS_ON_FAILURE`` (config or environment):
``"local"`` (the default: this host's own tables, in the shared file of
``RATEKEEPER_SHARED_PATH`` when set, so each host still enforces the limit
for its workers: 200 or 429), ``"open"`` (every request passes: 200) or
``"closed"`` (every request is throttled: 429 with a ``Retry-After`` until
the next reconnect try). The engine goes back to Redis by itself when it
answers again.

Layout (one module per concern): ``_keys`` (key functions), ``_plan`` (the
per-route plan), ``_responses`` (the WSGI header middleware, Flask
responses), ``_extension`` (:class:`Ratekeeper`). What is not Flask's is in
``ratekeeper._web``, shared with :mod:`ratekeeper.asgi`: ``constants``
(config keys and defaults), ``options`` (frozen option bundles and enums),
``client_ip`` (trusted proxies, IPv6 grouping, allow/deny lists), ``plan``
(declarations), ``state`` (options, engine, policies, header fragments),
``responses`` (header fields, problem+json, breaches).
"""

from __future__ import annotations

from .._core import Penalty, redis_engine, shared_engine
from .._web.constants import DEFAULTS
from .._web.options import Access, OnFailure, PolicyOptions, WhenFull
from ._extension import Ratekeeper
from ._keys import KeyFunc, endpoint, header, remote_addr, user
from ._plan import LimitDecl, Spec
from ._responses import Breach

__all__ = [
    "Ratekeeper",
    "Breach",
    "LimitDecl",
    "remote_addr",
    "header",
    "user",
    "endpoint",
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
]
