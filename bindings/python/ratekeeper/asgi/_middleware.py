"""The pure ASGI middleware: :class:`RatekeeperMiddleware`."""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple

from .._web.plan import LimitDecl
from .._web.responses import _deduct, _header_fields
from ._extension import SCOPE_KEY, Ratekeeper, _AsgiState, _LimitDependency, _Record
from ._responses import ASGIApp, RateLimited, Receive, Scope, Send, _ResponseView
from ._threads import run_off_loop


class RatekeeperMiddleware:
    """A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``): for
    each HTTP request, one engine call for every limit that applies; a
    denied request gets the 429 of :mod:`ratekeeper.flask` and never reaches
    the app; an allowed one gets the ``RateLimit-Policy`` and ``RateLimit``
    fields added to its ``http.response.start``. WebSocket and lifespan
    scopes pass through untouched.

    ``RatekeeperMiddleware(app, ratekeeper=rk)`` (also the form of
    Starlette's ``app.add_middleware(RatekeeperMiddleware, ratekeeper=rk)``).
    On a Starlette or FastAPI app, the request's route is found before the
    app routes it (its name is the endpoint, as in Flask), so that the
    route's :meth:`Ratekeeper.limit` dependencies are checked together with
    the application, path and default limits.
    """

    def __init__(self, app: ASGIApp, ratekeeper: Ratekeeper):
        if not isinstance(ratekeeper, Ratekeeper):
            raise TypeError(f"ratekeeper must be a ratekeeper.asgi.Ratekeeper, not {ratekeeper!r}")
        self.app = app
        self.rk = ratekeeper
        self._routes: Dict[Tuple[int, str, str], Tuple[Optional[str], Tuple[LimitDecl, ...]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websocket, lifespan: untouched
            await self.app(scope, receive, send)
            return
        rk = self.rk
        st = rk.state
        if not st.enabled:
            await self.app(scope, receive, send)
            return
        if st.metrics_registry is not None and scope.get("path") == st.metrics_endpoint:
            await self._metrics(st, send)
            return
        record = _Record(rk)
        scope[SCOPE_KEY] = record
        endpoint_name, own = self._route_of(scope)
        reply = await rk._check(scope, endpoint_name, own, record)
        if reply is not None:
            await reply.send(scope, receive, send)
            return
        started = False

        async def send_with_fields(message: Dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                c = record.ctx
                if c is not None:
                    if c.allowed and st.headers_enabled:
                        headers = list(message.get("headers") or ())
                        headers.extend((n.lower().encode("latin-1"), v.encode("latin-1"))
                                       for n, v in _header_fields(c))
                        message = dict(message, headers=headers)
                    if c.deduct:
                        view = _ResponseView(message["status"], {bytes(n).decode("latin-1").lower():
                                                                 bytes(v).decode("latin-1")
                                                                 for n, v in message.get("headers") or ()})
                        if st.engine_blocks():
                            await run_off_loop(functools.partial(_deduct, c, view))
                        else:
                            _deduct(c, view)
            await send(message)

        try:
            await self.app(scope, receive, send_with_fields)
        except RateLimited as e:
            if started:
                raise
            await e.reply.send(scope, receive, send)

    def _route_of(self, scope: Scope) -> Tuple[Optional[str], Tuple[LimitDecl, ...]]:
        """The endpoint name and the route's own limits (its
        ``rk.limit`` dependencies): a Starlette/FastAPI router's matching
        route (cached per method and path), else the path."""
        router = getattr(scope.get("app"), "router", None) or getattr(self.app, "router", None)
        path = scope.get("path", "")
        if router is None or not hasattr(router, "routes"):
            return path, ()
        cache_key = (id(router), scope.get("method", ""), path)
        found = self._routes.get(cache_key)
        if found is None:
            found = self._match(router, scope)
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[cache_key] = found
        return found

    def _match(self, router: Any, scope: Scope) -> Tuple[Optional[str], Tuple[LimitDecl, ...]]:
        from starlette.routing import Match

        partial = None
        for route in router.routes:
            try:
                match, child_scope = route.matches(scope)
            except Exception:  # a custom route that cannot match this scope
                continue
            if match is Match.FULL:
                inner = getattr(route, "app", None)
                inner_router = getattr(inner, "router", inner)
                if getattr(route, "routes", None) is not None and hasattr(inner_router, "routes"):
                    # a Mount of a FastAPI/Starlette app or router: its route
                    child = dict(scope)
                    child.update(child_scope)
                    return self._match(inner_router, child)
                return getattr(route, "name", None), self._limits_of(route)
            if match is Match.PARTIAL and partial is None:
                partial = route
        if partial is not None:  # e.g. 405: the route's name, not its limits (the app will refuse it)
            return getattr(partial, "name", None), ()
        return None, ()

    def _limits_of(self, route: Any) -> Tuple[LimitDecl, ...]:
        found: List[LimitDecl] = []
        dependant = getattr(route, "dependant", None)
        stack = list(reversed(getattr(dependant, "dependencies", None) or ()))
        while stack:
            dep = stack.pop()
            call = getattr(dep, "call", None)
            if isinstance(call, _LimitDependency) and call.rk is self.rk and call.decl not in found:
                found.append(call.decl)
            stack.extend(reversed(getattr(dep, "dependencies", None) or ()))
        return tuple(found)

    async def _metrics(self, st: _AsgiState, send: Send) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(st.metrics_registry)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode("latin-1")),
                                (b"content-length", str(len(body)).encode("latin-1"))]})
        await send({"type": "http.response.body", "body": body})
