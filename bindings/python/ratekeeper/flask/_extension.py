"""The extension: :class:`Ratekeeper` (declarations and the per-request
check: one engine call per request) and its per-app state."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import flask
from flask import Blueprint, Flask, current_app, request

from .._core import Decision, Engine, Penalty, Policy
from ..errors import RatekeeperError
from .._web.client_ip import _client_address, _client_ip
from .._web.constants import _CALLABLE_OPTIONS, _CTX_ENV, _OPTION_NAMES, _STATE_ENV, DEFAULTS
from .._web.options import Access
from .._web.responses import FORBIDDEN_DETAIL, UNAVAILABLE_DETAIL, breach_of, log_shadow, over_limit_problem
from .._web.state import LimiterState
from ._keys import KeyFunc, _state_of, remote_addr
from .._web.plan import decls_from
from ._plan import LimitDecl, Spec, _decl_kwargs, _Entry, build_plan
from ._responses import _Context, _deduct, _problem, entry_fragment, headers_middleware

_new_context = object.__new__

log = logging.getLogger("ratekeeper.flask")


class _State(LimiterState):
    """Everything one app's requests need, in app.extensions["ratekeeper"]:
    the framework-neutral :class:`LimiterState` plus the app's limits and
    per-endpoint plans."""

    def __init__(self, ext: "Ratekeeper", app: Flask, config: Dict[str, Any]):
        super().__init__(config, ext._engine, ext._key, ext._options.get("on_breach"), ext._options.get("response"))
        self.ext = ext
        #: ``enabled=`` given to the constructor (fixed), else None: then
        #: ``app.config["RATEKEEPER_ENABLED"]`` is read at every request, so
        #: tests can switch limiting off and on at run time.
        self.enabled_option: Optional[bool] = (
            bool(ext._options["enabled"]) if "enabled" in ext._options else None)
        self.app_config = app.config
        self.app_limits = ext._decls_from("application", config["RATEKEEPER_APPLICATION_LIMITS"], "app")
        self.default_limits = ext._decls_from("default", config["RATEKEEPER_DEFAULT"], "default")
        self.plans: Dict[Optional[str], Tuple[_Entry, ...]] = {}

    def plan(self, app: Flask, endpoint_name: Optional[str]) -> Tuple[_Entry, ...]:
        """The declarations that may apply to ``endpoint_name`` (before method
        filters and exempt_when), each with its header name, cached per
        endpoint."""
        plan = self.plans.get(endpoint_name)
        if plan is None:
            plan = build_plan(self.ext, app, endpoint_name, self.app_limits, self.default_limits, self.default_key,
                              self.options)
            self.plans[endpoint_name] = plan
        return plan



class Ratekeeper:
    """The Flask extension.

    ``Ratekeeper(app=None, engine=None, default=None, key=remote_addr,
    **options)``; with ``app=None``, call :meth:`init_app` later (once per
    app). ``engine``: an explicit (e.g. shared) :class:`~ratekeeper.Engine`;
    else ``RATEKEEPER_REDIS_URL`` (config or environment: one Redis engine
    per process, with ``RATEKEEPER_SHARED_PATH`` as its local fallback),
    else ``RATEKEEPER_SHARED_PATH`` (config or environment), else an
    in-process engine per worker process. ``default``: default limits (a
    spec, or a list of specs, or a callable returning one). ``key``: the key
    function of limits that do not name one.

    ``options`` (each overrides the ``RATEKEEPER_<NAME>`` config key):
    ``application_limits``, ``shared_path``, ``shared_max_bytes``,
    ``shared_mode``, ``redis_url``, ``redis_on_failure`` (``"local"``,
    ``"open"`` or ``"closed"``; also ``$RATEKEEPER_REDIS_ON_FAILURE``),
    ``redis_options`` (a dict of further :meth:`Engine.redis
    <ratekeeper.Engine.redis>` arguments, e.g. ``{"timeout": 0.05}``),
    ``capacity``, ``when_full``, ``key_prefix``,
    ``headers_enabled``, ``legacy_headers``, ``fail_open``,
    ``trusted_proxies``, ``ipv6_prefix``, ``enabled``, ``problem_type``,
    ``allowlist``, ``denylist``, ``shadow``, ``retry_jitter``, ``penalty``,
    ``record_keys``, ``metrics_endpoint``, ``log_max_per_second``,
    ``log_level``, ``log_hash_salt``;
    and two callables: ``on_breach(breach)`` (called for every throttled
    request, e.g. to log or count; its return value is ignored) and
    ``response(breach) -> Response`` (builds the over-limit response instead
    of the problem+json 429; the rate-limit headers are added to it).
    """

    def __init__(
        self,
        app: Optional[Flask] = None,
        engine: Optional[Engine] = None,
        default: Union[Spec, Sequence[Spec], None] = None,
        key: KeyFunc = remote_addr,
        **options: Any,
    ):
        unknown = set(options) - set(_OPTION_NAMES) - set(_CALLABLE_OPTIONS)
        if unknown:
            raise TypeError(f"Ratekeeper() got unknown options: {', '.join(sorted(unknown))}")
        if not callable(key):
            raise TypeError("key must be a callable taking no arguments")
        self._engine = engine
        self._key = key
        self._options = dict(options)
        if default is not None:
            self._options["default"] = default
        self._exempt_blueprints: set = set()
        self._blueprint_limits: Dict[str, List[LimitDecl]] = {}
        self._apps: List[Flask] = []
        if app is not None:
            self.init_app(app)

    # -- setup ---------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Registers the extension on ``app``: reads its RATEKEEPER_* config
        and installs before/after-request handlers. The engine is opened at
        the first request of each process (so after a pre-fork server's
        fork)."""
        config = dict(DEFAULTS)
        for k in DEFAULTS:
            if k in app.config:
                config[k] = app.config[k]
        for name, value in self._options.items():
            if name in _OPTION_NAMES:
                config[_OPTION_NAMES[name]] = value
        state = _State(self, app, config)
        app.extensions["ratekeeper"] = state

        app.before_request(self._before_request_hook(app, state))
        # The rate-limit fields are appended where the response's header list
        # is a plain list (start_response), from the context the check left in
        # the WSGI environ: cheaper than an after_request hook.
        app.wsgi_app = headers_middleware(app.wsgi_app)  # type: ignore[method-assign]
        self._apps.append(app)
        if state.metrics_endpoint:
            self._add_metrics_endpoint(app, state, str(state.metrics_endpoint))

    def _add_metrics_endpoint(self, app: Flask, state: _State, path: str) -> None:
        """Serves the engine's Prometheus metrics at ``path`` (exempt from
        every limit). With a shared engine: the totals of every worker."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ..prometheus import RatekeeperCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(RatekeeperCollector(lambda: state.engine))
        state.metrics_registry = registry

        def ratekeeper_metrics() -> flask.Response:
            return flask.Response(generate_latest(registry), status=200, content_type=CONTENT_TYPE_LATEST)

        app.add_url_rule(path, endpoint="ratekeeper_metrics", view_func=self.exempt(ratekeeper_metrics),
                         methods=["GET"])

    @property
    def engine(self) -> Engine:
        """The engine of the current app (opened in this process if needed)."""
        return _state_of(current_app).engine

    def reset(self) -> int:
        """Forgets every key of every policy of the engine of each app this
        extension serves (every quota full again): for tests, e.g. in a
        pytest fixture (see the README). On a shared engine it clears the
        file every worker uses; on a Redis engine, the policies' keys in
        Redis, for every host (O(keys in Redis): for tests and
        administration). Returns how many keys held state."""
        total = 0
        seen: List[int] = []
        for app in self._apps:
            state = app.extensions.get("ratekeeper")
            if state is None:
                continue
            engine = state.engine
            if id(engine) not in seen:
                seen.append(id(engine))
                total += engine.reset()
        return total

    # -- declarations ----------------------------------------------------------

    def _decls_from(self, kind: str, specs: Union[Spec, Sequence[Spec], None], name: str) -> List[LimitDecl]:
        return decls_from(kind, specs, name)

    def limit(
        self,
        spec: Spec,
        *,
        key: Optional[KeyFunc] = None,
        cost: Union[int, Callable[[], int]] = 1,
        methods: Optional[Iterable[str]] = None,
        per_method: bool = False,
        scope: Union[str, Callable[[], str], None] = None,
        deduct_when: Optional[Callable[[flask.Response], bool]] = None,
        exempt_when: Optional[Callable[[], bool]] = None,
        override_defaults: bool = True,
        name: Optional[str] = None,
        error_message: Optional[str] = None,
        shadow: Optional[bool] = None,
        retry_jitter: Optional[float] = None,
        penalty: Optional[Penalty] = None,
        record_keys: Optional[bool] = None,
    ) -> Callable[[Any], Any]:
        """Decorates a view (or a Blueprint, for every route in it) with a
        limit.

        - ``spec``: e.g. ``"10/second"``, ``"10/second;1000/hour"``, or a
          callable evaluated per request (tiers: ``lambda: "1000/minute" if
          is_partner() else "10/minute"``); each distinct spec string is one
          engine policy, so return one of a few strings.
        - ``key``: key function (default: the extension's ``key``); a
          ``None`` key skips this limit for the request.
        - ``cost``: units charged per request (int or callable).
        - ``methods``: only these HTTP methods are limited by it.
        - ``per_method``: separate counters per HTTP method.
        - ``scope``: share the counter among every route with the same
          scope (default: one counter per route).
        - ``deduct_when(response) -> bool``: the request is charged up front;
          if this returns False for the response, the charge is refunded
          (e.g. count only failed logins).
        - ``exempt_when() -> bool``: skip this limit for the request.
        - ``override_defaults``: False keeps the default limits too.
        - ``name``: the policy name in the RateLimit headers (default: the
          endpoint, or the scope). ``error_message``: the 429 body's detail.
        - ``shadow``: shadow mode (requests pass; would-be denials are
          counted and logged). ``retry_jitter``: up to this many seconds of
          random extra on Retry-After. ``penalty``: a
          :class:`ratekeeper.Penalty` box (a banned client's 429 says
          ``"banned": true``; Retry-After is the ban's remaining time).
          ``record_keys``: deny events and log records keep the key's text
          (default: only a hash). ``None`` takes the app's default
          (``RATEKEEPER_SHADOW``, ``RATEKEEPER_RETRY_JITTER``,
          ``RATEKEEPER_PENALTY``, ``RATEKEEPER_RECORD_KEYS``).

        Works above or below ``@app.route``.
        """
        decl = LimitDecl(
            spec, "route", key=key, cost=cost, methods=frozenset(methods) if methods else None,
            per_method=per_method, scope=scope, deduct_when=deduct_when, exempt_when=exempt_when,
            override_defaults=override_defaults, name=name, error_message=error_message,
            shadow=shadow, retry_jitter=retry_jitter, penalty=penalty, record_keys=record_keys,
        )
        return self._decorator(decl)

    def shared_limit(self, spec: Spec, scope: Union[str, Callable[[], str]], **kwargs: Any) -> Callable[[Any], Any]:
        """A limit shared by every route decorated with the same ``scope``
        (one counter per client across them). Other arguments as for
        :meth:`limit`."""
        if not scope:
            raise ValueError("shared_limit needs a scope")
        kwargs.setdefault("name", scope if isinstance(scope, str) else None)
        decl = LimitDecl(spec, "shared", scope=scope, **_decl_kwargs(kwargs))
        return self._decorator(decl)

    def blueprint_limit(self, blueprint: Blueprint, spec: Spec, **kwargs: Any) -> None:
        """Limits every route of ``blueprint`` (counted per route unless
        ``scope`` is given; routes with their own limits use those instead).
        Same as ``rk.limit(spec, ...)(blueprint)``."""
        kwargs.setdefault("name", blueprint.name)
        decl = LimitDecl(spec, "blueprint", **_decl_kwargs(kwargs))
        self._blueprint_limits.setdefault(blueprint.name, []).append(decl)
        self._forget_plans()

    def _decorator(self, decl: LimitDecl) -> Callable[[Any], Any]:
        def apply(target: Any) -> Any:
            if isinstance(target, Blueprint):
                if decl.name is None:
                    decl.name = target.name
                decl.kind = "blueprint"
                self._blueprint_limits.setdefault(target.name, []).append(decl)
            else:
                target.__dict__.setdefault("_ratekeeper_limits", {}).setdefault(id(self), []).insert(0, decl)
            self._forget_plans()
            return target

        return apply

    def exempt(self, target: Any) -> Any:
        """Exempts a view from every limit, or a Blueprint from application,
        blueprint and default limits (its views' own limits still apply).
        Use as ``@rk.exempt`` (no parentheses) or ``rk.exempt(bp)``."""
        if isinstance(target, Blueprint):
            self._exempt_blueprints.add(target.name)
        else:
            target.__dict__.setdefault("_ratekeeper_exempt", set()).add(id(self))
        self._forget_plans()
        return target

    def _view_limits(self, view: Any) -> List[LimitDecl]:
        if view is None:
            return []
        return list(getattr(view, "_ratekeeper_limits", {}).get(id(self), []))

    def _is_exempt(self, view: Any) -> bool:
        return view is not None and id(self) in getattr(view, "_ratekeeper_exempt", ())

    def _forget_plans(self) -> None:
        for app in self._apps:
            state = app.extensions.get("ratekeeper")
            if state is not None:
                state.plans.clear()

    # -- per request -------------------------------------------------------------

    def current_decision(self) -> Optional[Decision]:
        """The binding decision of the current request (None if no limit
        applied)."""
        ctx = request.environ.get(_CTX_ENV)
        return ctx.decision if ctx is not None else None

    def _before_request_hook(self, app: Flask, st: _State) -> Callable[[], Optional[flask.Response]]:
        """This app's before_request hook: the whole check of a request in one
        frame, a closure over the app and its state (no current_app lookup)."""

        def ratekeeper_before_request() -> Optional[flask.Response]:
            enabled = st.enabled_option
            if enabled is None:
                enabled = st.app_config.get("RATEKEEPER_ENABLED", True)
            if not enabled:
                return None
            req = request._get_current_object()  # type: ignore[attr-defined]
            environ = req.environ
            environ[_STATE_ENV] = st
            rule = req.url_rule  # what Request.endpoint reads, without its property frame
            endpoint_name = rule.endpoint if rule is not None else None
            plan = st.plans.get(endpoint_name)
            if plan is None:
                plan = st.plan(app, endpoint_name)
            allowed_by_list = False
            if st.lists:  # allow and deny lists (never on the fast path when unset)
                addr = _client_address(environ, st.trusted_proxies, st.ipv6_prefix)
                access = st.ip_access(_client_ip(environ, st.trusted_proxies))
                if access is Access.UNLISTED and st.key_lists and (plan or st.deny.keys):
                    value = st.default_key()
                    if value is not None:
                        access = st.key_access(value)
                if access is Access.DENIED:
                    return self._forbidden(st, addr)
                allowed_by_list = access is Access.ALLOWED
                if allowed_by_list and not st.deny.keys:
                    return None
            if not plan:
                return None
            method = req.method
            items: List[Tuple[Policy, Any, int]] = []
            used: List[_Entry] = []
            deduct = False
            addr = None
            try:
                engine = st._engine or st.engine
                for entry in plan:
                    prefix = entry.prefix
                    if prefix is not None:  # the common case, precomputed
                        policy = entry.policy
                        if policy is None or policy._engine is not engine:
                            policy = entry.policy = st.policy(engine, entry.decl.spec, entry.opts)  # type: ignore[arg-type]
                        if addr is None:
                            addr = environ.get("REMOTE_ADDR") or ""
                            if st.trusted_proxies or ":" in addr:
                                addr = _client_address(environ, st.trusted_proxies, st.ipv6_prefix)
                        items.append((policy, prefix + addr, entry.cost))  # type: ignore[arg-type]
                        used.append(entry)
                        if entry.deduct:
                            deduct = True
                        continue
                    decl = entry.decl
                    if decl.methods is not None and method not in decl.methods:
                        continue
                    if decl.exempt_when is not None and decl.exempt_when():
                        continue
                    spec = decl.spec
                    if spec.__class__ is not str:
                        spec = spec()  # type: ignore[operator]
                    policy = st.policies.get((spec, entry.opts))  # type: ignore[call-overload]
                    if policy is None or policy._engine is not engine:
                        policy = st.policy(engine, spec, entry.opts)  # type: ignore[arg-type]
                    keyfn = decl.key or st.default_key
                    if keyfn is remote_addr:  # the default: no second request lookup
                        if addr is None:
                            addr = _client_address(environ, st.trusted_proxies, st.ipv6_prefix)
                        value: Any = addr
                    else:
                        value = keyfn()
                    if value is None:
                        continue
                    if st.key_lists:
                        access = st.key_access(value)
                        if access is Access.DENIED:
                            return self._forbidden(st, value)
                        if access is Access.ALLOWED:
                            allowed_by_list = True
                    scope = decl.scope
                    if scope is None:
                        scope = endpoint_name or ""
                    elif scope.__class__ is not str:
                        scope = scope()  # type: ignore[operator]
                    if decl.per_method:
                        scope = f"{scope}\x00{method}"
                    if value.__class__ is bytes:
                        k: Any = scope.encode("utf-8") + b"\x00" + value  # type: ignore[union-attr, operator]
                    else:
                        k = f"{scope}\x00{value}"
                    cost = decl.cost
                    if cost.__class__ is not int:
                        cost = cost()  # type: ignore[operator]
                    items.append((policy, k, cost))  # type: ignore[arg-type]
                    used.append(entry)
                    if decl.deduct_when is not None:
                        deduct = True
                if not items or allowed_by_list:
                    return None
                shadow_hits: Sequence[Tuple[int, Decision]] = ()
                if len(items) == 1:  # one limit: a plain check
                    policy, k, cost = items[0]
                    decision, index = policy.check(k, cost), 0
                else:  # the library's batch: binding item, strikes, shadow mode
                    decision, index = engine.check_many(items)
                # (Only an app with a shadow-mode policy can get a shadow denial.)
                if st.any_shadow and decision.shadow_denied:
                    shadow_hits = ((index, decision),)
            except RatekeeperError as e:
                return self._engine_failed(st, e)
            ctx = _new_context(_Context)  # no __init__ frame: this runs on every request
            allowed = decision.allowed
            ctx.state = st
            ctx.items = items
            ctx.plan = used
            ctx.decision = decision
            ctx.allowed = allowed
            ctx.index = index
            ctx.deduct = deduct
            ctx.response_is_ours = False
            if len(items) == 1:
                cached = used[0].fragment
                policy = items[0][0]
                ctx.fragment = cached[1] if cached is not None and cached[0] is policy else entry_fragment(
                    st, used[0], policy)
            else:
                ctx.fragment = None
            environ[_CTX_ENV] = ctx
            if shadow_hits:
                self._log_shadow(st, ctx, shadow_hits)
            if allowed:
                if deduct:
                    flask.after_this_request(functools.partial(_deduct, ctx))
                return None
            return self._breach(st, ctx)

        return ratekeeper_before_request

    def _forbidden(self, st: _State, key: Any) -> flask.Response:
        """403 for a deny-listed client (logged like a denial)."""
        st.deny_log.deny("forbidden", "denylist", key, record_key=st.record_keys,
                         detail=f"{request.method} {request.path}")
        return _problem(st, 403, "Forbidden", FORBIDDEN_DETAIL)

    def _log_shadow(self, st: _State, ctx: "_Context", hits: Sequence[Tuple[int, Decision]]) -> None:
        log_shadow(st, ctx, hits)

    def _engine_failed(self, st: _State, error: Exception) -> Optional[flask.Response]:
        if st.fail_open:
            log.warning("ratekeeper: rate limiting skipped for %s %s (failing open): %s",
                        request.method, request.path, error)
            return None
        log.error("ratekeeper: request refused with 503 (RATEKEEPER_FAIL_OPEN is False): %s", error)
        return _problem(st, 503, "Service Unavailable", UNAVAILABLE_DETAIL)

    def _breach(self, st: _State, ctx: _Context) -> flask.Response:
        d = ctx.decision
        breach, entry = breach_of(ctx)
        retry_after = breach.retry_after
        st.deny_log.deny("banned" if d.banned else "denied", breach.policy.name, breach.key,
                         record_key=entry.opts.record_keys, retry_after=d.retry_after, limit=breach.name,
                         banned=d.banned)
        if st.on_breach is not None:
            st.on_breach(breach)
        response = None
        if st.response is not None:
            response = st.response(breach)
            if response is not None:
                response = flask.make_response(response)
        if response is None:
            detail, extra = over_limit_problem(breach)
            response = _problem(st, 429, "Too Many Requests", detail, **extra)
            ctx.response_is_ours = True
        if retry_after is not None and (ctx.response_is_ours or "Retry-After" not in response.headers):
            response.headers.add("Retry-After", str(retry_after))
        return response
