"""The ASGI limiter: :class:`Ratekeeper` (options, declarations and the
per-request check: one engine call per request), its state, and the
FastAPI dependency of :meth:`Ratekeeper.limit`. The middleware that calls
the check is in ``_middleware``."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .._core import Engine, Penalty, Policy
from .._web.client_ip import client_ip_of
from .._web.constants import _CALLABLE_OPTIONS, _OPTION_NAMES, DEFAULTS
from .._web.options import Access
from .._web.plan import KeyFunc, LimitDecl, Spec, _base_name, _decl_kwargs, _Entry, decls_from
from .._web.responses import (
    FORBIDDEN_DETAIL, UNAVAILABLE_DETAIL, _Context, _header_fields, breach_of, log_shadow,
    over_limit_problem,
)
from .._web.state import LimiterState
from ..errors import RatekeeperError
from ._keys import _Checking, _checking, remote_addr
from ._responses import ASGIApp, RateLimited, Scope, _problem_reply, _rate_limited_handler, _Reply
from ._threads import run_off_loop

if TYPE_CHECKING:  # pragma: no cover
    from ._middleware import RatekeeperMiddleware

try:  # FastAPI injects the dependency's Request by this annotation
    from starlette.requests import Request
except ImportError:  # pragma: no cover - plain ASGI without Starlette
    Request = Any  # type: ignore[misc, assignment]

log = logging.getLogger("ratekeeper.asgi")

#: Where the middleware leaves a request's record in its scope (read by
#: the FastAPI dependency).
SCOPE_KEY = "ratekeeper"

class _Record:
    """A request's record in its scope (``scope["ratekeeper"]``): which
    declarations the middleware checked and the resulting context."""

    __slots__ = ("rk", "checked", "ctx")

    def __init__(self, rk: "Ratekeeper"):
        self.rk = rk
        self.checked: Tuple[LimitDecl, ...] = ()
        self.ctx: Optional[_Context] = None


class _AsgiState(LimiterState):
    """The limiter's options, engine and policies (framework-neutral, from
    :class:`~ratekeeper._web.state.LimiterState`), its application, default
    and per-path limits, and the plans per endpoint."""

    def __init__(self, rk: "Ratekeeper", config: Dict[str, Any], paths: Mapping[str, Any]):
        super().__init__(config, rk._engine, rk._key, rk._options.get("on_breach"), rk._options.get("response"))
        self.enabled = bool(config["RATEKEEPER_ENABLED"])
        self.app_limits = decls_from("application", config["RATEKEEPER_APPLICATION_LIMITS"], "app")
        self.default_limits = decls_from("default", config["RATEKEEPER_DEFAULT"], "default")
        #: (pattern, is_prefix, declarations or None: exempt), longest pattern first.
        self.path_limits: List[Tuple[str, bool, Optional[List[LimitDecl]]]] = []
        for pattern, specs in paths.items():
            if not isinstance(pattern, str) or not pattern.startswith("/"):
                raise ValueError(f"paths: a path must be a str starting with '/', not {pattern!r}")
            prefix = pattern.endswith("*")
            decls = None if specs is None else decls_from("path", specs, pattern)
            self.path_limits.append((pattern[:-1] if prefix else pattern, prefix, decls))
        self.path_limits.sort(key=lambda p: (len(p[0]), not p[1]), reverse=True)
        self.plans: Dict[Tuple[Optional[str], str, Tuple[LimitDecl, ...]], Tuple[_Entry, ...]] = {}
        self.metrics_registry: Any = None

    def engine_blocks(self) -> bool:
        """Whether an engine call may wait on the network or the file system:
        the engine is not open yet in this process (opening it connects to
        Redis or maps the file), or it is a Redis engine (a round trip).
        Such calls run off the event loop."""
        engine = self._engine
        return engine is None or engine.redis_url is not None

    def path_decls(self, path: str) -> Tuple[bool, Optional[List[LimitDecl]]]:
        """(whether a pattern matched, its declarations: None = exempt)."""
        for pattern, prefix, decls in self.path_limits:
            if path == pattern or (prefix and path.startswith(pattern)):
                return True, decls
        return False, None

    def plan(self, endpoint_name: Optional[str], path: str, own: Tuple[LimitDecl, ...]) -> Tuple[_Entry, ...]:
        """Application limits; the route's own (dependency) limits; unless
        they all override the defaults, the limits of the longest matching
        path pattern, else the default limits. Nothing on an exempt path
        (a pattern mapped to None)."""
        matched, by_path = self.path_decls(path)
        cache_key = (endpoint_name, path if matched else "", own)
        plan = self.plans.get(cache_key)
        if plan is not None:
            return plan
        decls: List[LimitDecl] = []
        if not (matched and by_path is None):
            decls.extend(self.app_limits)
            decls.extend(own)
            if not own or not all(d.override_defaults for d in own):
                decls.extend(by_path if matched and by_path else self.default_limits)
        plan = tuple(_Entry(d, _base_name(d, endpoint_name), endpoint_name, self.default_key, self.options(d),
                            remote_addr) for d in decls)
        if len(self.plans) >= 4096:
            self.plans.clear()
        self.plans[cache_key] = plan
        return plan


class _LimitDependency:
    """``Depends(rk.limit(...))``: a route's own limit. The middleware finds
    it among the route's dependencies and checks it with the route's other
    limits in its one engine call; when the dependency then runs it only
    confirms that. A route the middleware could not resolve is checked
    here (its own engine call)."""

    def __init__(self, rk: "Ratekeeper", decl: LimitDecl):
        self.rk = rk
        self.decl = decl

    def __repr__(self) -> str:
        return f"<ratekeeper.asgi limit {self.decl.spec!r}>"

    async def __call__(self, request: Request) -> None:
        scope = request.scope
        record = scope.get(SCOPE_KEY)
        if record is None or record.rk is not self.rk:
            raise RuntimeError(
                "ratekeeper.asgi: rk.limit(...) needs the middleware: rk.init_app(app), or "
                "app.add_middleware(RatekeeperMiddleware, ratekeeper=rk)")
        if self.decl in record.checked or not self.rk.state.enabled:
            return
        route = scope.get("route")
        name = getattr(route, "name", None) or scope.get("path", "")
        reply = await self.rk._check(scope, name, (self.decl,), record, own_only=True)
        if reply is not None:
            raise RateLimited(reply)


class Ratekeeper:
    """Rate limits for an ASGI application (FastAPI, Starlette or any other).

    ``Ratekeeper(app=None, engine=None, default=None, key=remote_addr,
    paths=None, **options)``. ``app``: a Starlette/FastAPI app to install
    the middleware on (same as :meth:`init_app`); for any other ASGI app use
    ``app = rk.wrap(app)`` or ``RatekeeperMiddleware(app, ratekeeper=rk)``.
    ``engine``, ``default``, ``key`` and ``options`` as for
    :class:`ratekeeper.flask.Ratekeeper` (the same option names without the
    ``RATEKEEPER_`` prefix, e.g. ``trusted_proxies=1``, ``fail_open=False``,
    ``denylist=[...]``, ``penalty=Penalty(...)``; the engine: ``engine=``,
    else ``$RATEKEEPER_REDIS_URL``, else ``$RATEKEEPER_SHARED_PATH``, which
    :mod:`ratekeeper.gunicorn` sets, else in-process). ``paths``:
    ``{"/login": "5/minute", "/api/*": ["10/second", "1000/hour"],
    "/health": None}``: the limits of a path (exact, or a prefix ending in
    ``*``; the longest pattern wins) instead of the defaults; ``None``
    exempts it from every limit. A bad option, spec or path raises here.
    """

    def __init__(
        self,
        app: Any = None,
        engine: Optional[Engine] = None,
        default: Union[Spec, Sequence[Spec], None] = None,
        key: KeyFunc = remote_addr,
        paths: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ):
        unknown = set(options) - set(_OPTION_NAMES) - set(_CALLABLE_OPTIONS)
        if unknown:
            raise TypeError(f"Ratekeeper() got unknown options: {', '.join(sorted(unknown))}")
        if not callable(key):
            raise TypeError("key must be a callable taking no arguments")
        if engine is not None and not isinstance(engine, Engine):
            raise TypeError(f"engine must be a ratekeeper.Engine, not {engine!r}")
        if paths is not None and not isinstance(paths, Mapping):
            raise TypeError("paths must be a mapping of path to spec(s)")
        for name in ("on_breach", "response"):
            if options.get(name) is not None and not callable(options[name]):
                raise TypeError(f"{name} must be callable")
        self._engine = engine
        self._key = key
        self._options = dict(options)
        config = dict(DEFAULTS)
        config["RATEKEEPER_KEY_PREFIX"] = "asgi"
        for name, value in options.items():
            if name in _OPTION_NAMES:
                config[_OPTION_NAMES[name]] = value
        if default is not None:
            config["RATEKEEPER_DEFAULT"] = default
        self.state = _AsgiState(self, config, paths or {})
        st = self.state
        if st.metrics_endpoint:
            from prometheus_client import CollectorRegistry

            from ..prometheus import RatekeeperCollector

            registry = CollectorRegistry(auto_describe=False)
            registry.register(RatekeeperCollector(lambda: st.engine))
            st.metrics_registry = registry
        if app is not None:
            self.init_app(app)

    # -- setup ---------------------------------------------------------------

    def init_app(self, app: Any) -> None:
        """Installs the middleware on a Starlette or FastAPI app
        (``app.add_middleware``)."""
        add = getattr(app, "add_middleware", None)
        if add is None:
            raise TypeError("init_app needs a Starlette or FastAPI app; wrap any other ASGI app: app = rk.wrap(app)")
        from ._middleware import RatekeeperMiddleware

        add(RatekeeperMiddleware, ratekeeper=self)
        app.add_exception_handler(RateLimited, _rate_limited_handler)

    def wrap(self, app: ASGIApp) -> "RatekeeperMiddleware":
        """``app`` behind the middleware (any ASGI app)."""
        from ._middleware import RatekeeperMiddleware

        return RatekeeperMiddleware(app, ratekeeper=self)

    @property
    def enabled(self) -> bool:
        """False turns every limit off (tests may switch it at run time)."""
        return self.state.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.state.enabled = bool(value)

    @property
    def engine(self) -> Engine:
        """The engine (opened in this process if needed)."""
        return self.state.engine

    def reset(self) -> int:
        """Forgets every key of every policy of the engine (tests)."""
        return self.state.engine.reset()

    # -- declarations --------------------------------------------------------

    def limit(
        self,
        spec: Spec,
        *,
        key: Optional[KeyFunc] = None,
        cost: Union[int, Callable[[], int]] = 1,
        methods: Optional[Iterable[str]] = None,
        per_method: bool = False,
        scope: Union[str, Callable[[], str], None] = None,
        deduct_when: Optional[Callable[[Any], bool]] = None,
        exempt_when: Optional[Callable[[], bool]] = None,
        override_defaults: bool = True,
        name: Optional[str] = None,
        error_message: Optional[str] = None,
        shadow: Optional[bool] = None,
        retry_jitter: Optional[float] = None,
        penalty: Optional[Penalty] = None,
        record_keys: Optional[bool] = None,
    ) -> _LimitDependency:
        """A route's own limit, as a FastAPI dependency:
        ``@app.get("/search", dependencies=[Depends(rk.limit("5/minute"))])``
        (or a parameter ``_=Depends(...)``, or an ``APIRouter``'s
        ``dependencies``). The arguments are those of
        :meth:`ratekeeper.flask.Ratekeeper.limit`; ``deduct_when(response)``
        gets an object with ``status_code`` and ``headers`` (a dict, lower-
        case names) when the response starts. The endpoint needs no
        ``Request`` parameter and may return anything: the rate-limit
        fields are added by the middleware."""
        decl = LimitDecl(
            spec, "route", key=key, cost=cost, methods=frozenset(methods) if methods else None,
            per_method=per_method, scope=scope, deduct_when=deduct_when, exempt_when=exempt_when,
            override_defaults=override_defaults, name=name, error_message=error_message,
            shadow=shadow, retry_jitter=retry_jitter, penalty=penalty, record_keys=record_keys,
        )
        return _LimitDependency(self, decl)

    def shared_limit(self, spec: Spec, scope: Union[str, Callable[[], str]], **kwargs: Any) -> _LimitDependency:
        """A dependency limit shared by every route that uses the same
        ``scope`` (one counter per client across them)."""
        if not scope:
            raise ValueError("shared_limit needs a scope")
        kwargs.setdefault("name", scope if isinstance(scope, str) else None)
        return _LimitDependency(self, LimitDecl(spec, "shared", scope=scope, **_decl_kwargs(kwargs)))

    # -- per request ---------------------------------------------------------

    async def _check(self, scope: Scope, endpoint_name: Optional[str], own: Tuple[LimitDecl, ...],
                     record: _Record, own_only: bool = False) -> Optional[_Reply]:
        """Checks a request: every limit of its plan in one engine call
        (inline for an in-process or shared engine; in a thread for Redis).
        Returns the reply that ends it (429, 403, 503), or None: it goes on,
        with ``record.ctx`` for its response's fields."""
        st = self.state
        path = scope.get("path", "")
        if own_only:
            plan = tuple(_Entry(d, _base_name(d, endpoint_name), endpoint_name, st.default_key, st.options(d),
                                remote_addr) for d in own)
        else:
            plan = st.plan(endpoint_name, path, own)
            record.checked = own
        checking = _Checking(scope, st, endpoint_name)
        token = _checking.set(checking)
        try:
            allowed_by_list = False
            if st.lists and not own_only:
                access = st.ip_access(client_ip_of(checking.peer(), checking.header("x-forwarded-for"),
                                                   st.trusted_proxies))
                if access is Access.UNLISTED and st.key_lists and (plan or st.deny.keys):
                    value = st.default_key()
                    if value is not None:
                        access = st.key_access(value)
                if access is Access.DENIED:
                    return self._forbidden(st, scope, checking.address())
                allowed_by_list = access is Access.ALLOWED
                if allowed_by_list and not st.deny.keys:
                    return None
            if not plan:
                return None
            method = scope.get("method", "GET")
            wanted: List[Tuple[str, Any, Any, int]] = []  # (spec, options, key, cost)
            used: List[_Entry] = []
            deduct = False
            for entry in plan:
                decl = entry.decl
                if decl.methods is not None and method not in decl.methods:
                    continue
                if decl.exempt_when is not None and decl.exempt_when():
                    continue
                spec = decl.spec if isinstance(decl.spec, str) else decl.spec()
                keyfn = decl.key or st.default_key
                value = checking.address() if keyfn is remote_addr else keyfn()
                if value is None:
                    continue
                if st.key_lists:
                    access = st.key_access(value)
                    if access is Access.DENIED:
                        return self._forbidden(st, scope, value)
                    if access is Access.ALLOWED:
                        allowed_by_list = True
                key_scope = decl.scope
                if key_scope is None:
                    key_scope = endpoint_name or ""
                elif not isinstance(key_scope, str):
                    key_scope = key_scope()
                if decl.per_method:
                    key_scope = f"{key_scope}\x00{method}"
                if isinstance(value, bytes):
                    k: Any = key_scope.encode("utf-8") + b"\x00" + value
                else:
                    k = f"{key_scope}\x00{value}"
                cost = decl.cost if isinstance(decl.cost, int) else decl.cost()
                wanted.append((spec, entry.opts, k, cost))
                used.append(entry)
                if decl.deduct_when is not None:
                    deduct = True
        finally:
            _checking.reset(token)
        if not wanted or allowed_by_list:
            return None
        decide = functools.partial(_decide, st, wanted)
        try:
            if st.engine_blocks():
                # Redis round trips (and opening an engine: a connection or
                # a file) never run on the event loop.
                items, decision, index = await run_off_loop(decide)
            else:
                items, decision, index = decide()
        except RatekeeperError as e:
            return self._engine_failed(st, scope, e)
        ctx = _Context(st, items, used, decision, index, deduct)  # type: ignore[arg-type]
        if record.ctx is None:
            record.ctx = ctx
        if st.any_shadow and decision.shadow_denied:
            log_shadow(st, ctx, ((index, decision),))
        if decision.allowed:
            return None
        if record.ctx is not ctx:
            record.ctx = ctx
        return self._breach(st, ctx)

    def _forbidden(self, st: _AsgiState, scope: Scope, key: Any) -> _Reply:
        st.deny_log.deny("forbidden", "denylist", key, record_key=st.record_keys,
                         detail=f"{scope.get('method')} {scope.get('path')}")
        return _problem_reply(st, 403, "Forbidden", FORBIDDEN_DETAIL)

    def _engine_failed(self, st: _AsgiState, scope: Scope, error: Exception) -> Optional[_Reply]:
        if st.fail_open:
            log.warning("ratekeeper: rate limiting skipped for %s %s (failing open): %s",
                        scope.get("method"), scope.get("path"), error)
            return None
        log.error("ratekeeper: request refused with 503 (fail_open is False): %s", error)
        return _problem_reply(st, 503, "Service Unavailable", UNAVAILABLE_DETAIL)

    def _breach(self, st: _AsgiState, ctx: _Context) -> _Reply:
        """The 429 of a denied request: ratekeeper.flask's, byte for byte
        (the same problem+json body, Retry-After and RateLimit fields)."""
        d = ctx.decision
        breach, entry = breach_of(ctx)
        retry_after = breach.retry_after
        st.deny_log.deny("banned" if d.banned else "denied", breach.policy.name, breach.key,
                         record_key=entry.opts.record_keys, retry_after=d.retry_after, limit=breach.name,
                         banned=d.banned)
        if st.on_breach is not None:
            st.on_breach(breach)
        fields = _header_fields(ctx)
        if st.response is not None:
            custom = st.response(breach)
            if custom is not None:
                extra = ([("Retry-After", str(retry_after))] if retry_after is not None else []) + fields
                return _Reply(429, extra, app=custom)
        detail, extra_members = over_limit_problem(breach)
        reply = _problem_reply(st, 429, "Too Many Requests", detail, **extra_members)
        if retry_after is not None:
            reply.headers.append(("Retry-After", str(retry_after)))
        reply.headers.extend(fields)
        return reply


def _decide(st: _AsgiState,
            wanted: List[Tuple[str, Any, Any, int]]) -> Tuple[List[Tuple[Policy, Any, int]], Any, int]:
    """The engine call of a request (inline, or in a thread for Redis): its
    policies, then one check (one limit) or one ``check_many`` (several:
    all charged or none)."""
    engine = st.engine
    items: List[Tuple[Policy, Any, int]] = []
    for spec, opts, k, cost in wanted:
        policy = st.policies.get((spec, opts))  # type: ignore[call-overload]
        if policy is None or policy._engine is not engine:
            policy = st.policy(engine, spec, opts)
        items.append((policy, k, cost))
    if len(items) == 1:
        policy, k, cost = items[0]
        return items, policy.check(k, cost), 0
    decision, index = engine.check_many(items)
    return items, decision, index


__all__ = ["Ratekeeper", "SCOPE_KEY"]
