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
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import flask
from flask import Blueprint, Flask, current_app, request

from ._core import U64_MAX, Decision, Engine, Penalty, Policy, redis_engine, shared_engine
from ._ratekeeper import rate_limit_fields as _rate_limit_fields
from .errors import RatekeeperError
from .logs import DenyLogger

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
]

log = logging.getLogger("ratekeeper.flask")

KeyFunc = Callable[[], Union[str, bytes, None]]
Spec = Union[str, Callable[[], str]]

#: RATEKEEPER_* config keys and their defaults (constructor keyword
#: arguments of the same name in lower case, without the prefix, win over
#: ``app.config``; ``app.config`` wins over these defaults).
DEFAULTS: Dict[str, Any] = {
    "RATEKEEPER_ENABLED": True,
    "RATEKEEPER_DEFAULT": None,
    "RATEKEEPER_APPLICATION_LIMITS": None,
    "RATEKEEPER_SHARED_PATH": None,
    "RATEKEEPER_SHARED_MAX_BYTES": None,
    "RATEKEEPER_SHARED_MODE": 0o600,
    "RATEKEEPER_REDIS_URL": None,
    "RATEKEEPER_REDIS_ON_FAILURE": None,
    "RATEKEEPER_REDIS_OPTIONS": None,
    "RATEKEEPER_CAPACITY": None,
    "RATEKEEPER_WHEN_FULL": "evict",
    "RATEKEEPER_KEY_PREFIX": "flask",
    "RATEKEEPER_HEADERS_ENABLED": True,
    "RATEKEEPER_LEGACY_HEADERS": False,
    "RATEKEEPER_FAIL_OPEN": True,
    "RATEKEEPER_TRUSTED_PROXIES": 0,
    "RATEKEEPER_IPV6_PREFIX": 64,
    "RATEKEEPER_PROBLEM_TYPE": "about:blank",
    # abuse control
    "RATEKEEPER_ALLOWLIST": None,
    "RATEKEEPER_DENYLIST": None,
    "RATEKEEPER_SHADOW": False,
    "RATEKEEPER_RETRY_JITTER": 0.0,
    "RATEKEEPER_PENALTY": None,
    "RATEKEEPER_RECORD_KEYS": False,
    # monitoring
    "RATEKEEPER_METRICS_ENDPOINT": None,
    "RATEKEEPER_LOG_MAX_PER_SECOND": 10,
    "RATEKEEPER_LOG_LEVEL": "INFO",
    "RATEKEEPER_LOG_HASH_SALT": None,
}

_OPTION_NAMES = {key[len("RATEKEEPER_"):].lower(): key for key in DEFAULTS}
_OPTION_NAMES["application_limits"] = "RATEKEEPER_APPLICATION_LIMITS"
_CALLABLE_OPTIONS = ("on_breach", "response")

_ON_FAILURE_VALUES = ("local", "open", "closed")

_STATE_ENV = "ratekeeper.state"
_APP_SCOPE = "\x01app"  # cannot collide with an endpoint name


# ---------------------------------------------------------------- key functions


@functools.lru_cache(maxsize=4096)
def _group_ipv6(addr: str, prefix: int) -> str:
    try:
        ip = ipaddress.IPv6Address(addr.strip("[]").split("%", 1)[0])
    except ValueError:
        return addr
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, prefix), strict=False))


def _client_address(environ: Dict[str, Any], trusted_proxies: int, ipv6_prefix: int) -> str:
    addr = environ.get("REMOTE_ADDR") or ""
    if trusted_proxies > 0:  # (no extra call on the common path)
        addr = _client_ip(environ, trusted_proxies)
    if ":" in addr:
        return _group_ipv6(addr, ipv6_prefix)
    return addr


def _client_ip(environ: Dict[str, Any], trusted_proxies: int) -> str:
    """The client's address as received (IPv6 not grouped)."""
    addr = environ.get("REMOTE_ADDR") or ""
    if trusted_proxies > 0:
        xff = environ.get("HTTP_X_FORWARDED_FOR")
        if xff:
            hops = [h.strip() for h in xff.split(",")]
            # Each trusted proxy appended the address it received the request
            # from; the client is the one the outermost trusted proxy saw.
            if len(hops) >= trusted_proxies and hops[-trusted_proxies]:
                addr = hops[-trusted_proxies]
    return addr


@functools.lru_cache(maxsize=4096)
def _ip_of(addr: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address, None]:
    """``addr`` as an IP address (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(addr.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _AccessList:
    """An allow or deny list: networks (CIDR, IPv4 or IPv6; a bare address
    is a /32 or /128) matched against the client address, and literal keys
    matched against the values of the request's key functions (e.g.
    ``"x-api-key:abc"`` for ``header("X-API-Key")``) and the client
    address. A string is split at commas and whitespace (for values from
    the environment)."""

    def __init__(self, entries: Any, what: str):
        nets: List[Any] = []
        keys: set = set()
        if entries is None:
            entries = []
        elif isinstance(entries, str):
            entries = [e for e in entries.replace(",", " ").split() if e]
        for e in entries:
            if isinstance(e, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                nets.append(e)
            elif isinstance(e, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                nets.append(ipaddress.ip_network(e))
            elif isinstance(e, bytes):
                keys.add(e)
            elif isinstance(e, str):
                try:
                    nets.append(ipaddress.ip_network(e.strip(), strict=False))
                except ValueError:
                    keys.add(e)
            else:
                raise TypeError(f"{what}: entries must be CIDR strings or keys, not {e!r}")
        self.networks = tuple(nets)
        self.keys = frozenset(keys)

    def __bool__(self) -> bool:
        return bool(self.networks or self.keys)

    def has_ip(self, ip: Any) -> bool:
        if ip is None:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)


def remote_addr() -> str:
    """The client's IP address, as a key.

    With ``RATEKEEPER_TRUSTED_PROXIES = N`` (N > 0 proxies in front of the
    app), the N-th address from the right of ``X-Forwarded-For`` (the one the
    outermost trusted proxy saw; if the header has fewer than N entries, the
    peer address). With N = 0 (the default) only the peer address
    (``REMOTE_ADDR``): a client-supplied header is never trusted. IPv6
    addresses are grouped by their ``RATEKEEPER_IPV6_PREFIX`` (default /64,
    what one customer usually gets), e.g. ``2001:db8:1:2::/64``;
    IPv4-mapped IPv6 addresses count as IPv4.
    """
    environ = request.environ
    st = environ.get(_STATE_ENV)
    if st is None:
        st = _state_of(current_app)
    return _client_address(environ, st.trusted_proxies, st.ipv6_prefix)


def header(name: str, fallback: Optional[KeyFunc] = remote_addr) -> KeyFunc:
    """A key function: the value of request header ``name`` (e.g.
    ``header("X-API-Key")``), as ``"<name>:<value>"``. Requests without it
    are keyed by ``fallback()`` (default: the client address); with
    ``fallback=None`` the limit does not apply to them."""
    lower = name.lower()
    environ_key = "HTTP_" + name.upper().replace("-", "_")

    def key() -> Union[str, bytes, None]:
        value = request.environ.get(environ_key)
        if value:
            return f"{lower}:{value}"
        return fallback() if fallback is not None else None

    key.__name__ = f"header({name!r})"
    key.__qualname__ = key.__name__
    return key


def user(get_id: Callable[[], Any], fallback: Optional[KeyFunc] = remote_addr) -> KeyFunc:
    """A key function: ``"user:<id>"`` where ``get_id()`` returns the current
    user's id (e.g. ``lambda: session.get("user_id")`` or
    ``lambda: current_user.get_id()``). Anonymous requests (``None``) are
    keyed by ``fallback()`` (default: the client address); with
    ``fallback=None`` the limit does not apply to them."""

    def key() -> Union[str, bytes, None]:
        uid = get_id()
        if uid is not None:
            return f"user:{uid}"
        return fallback() if fallback is not None else None

    key.__name__ = "user"
    return key


def endpoint() -> str:
    """A key function: the endpoint itself (one counter per route for all
    clients together, e.g. to protect an expensive backend)."""
    return f"endpoint:{request.endpoint}"


# ---------------------------------------------------------------- declarations


@dataclass(eq=False)
class LimitDecl:
    """One declared limit: a spec (one engine policy, possibly of several
    limits) with how to key, charge and scope it. Made by
    :meth:`Ratekeeper.limit` and friends."""

    spec: Spec
    kind: str  #: "application", "default", "route", "shared" or "blueprint"
    key: Optional[KeyFunc] = None
    cost: Union[int, Callable[[], int]] = 1
    methods: Optional[FrozenSet[str]] = None
    per_method: bool = False
    scope: Union[str, Callable[[], str], None] = None
    deduct_when: Optional[Callable[[flask.Response], bool]] = None
    exempt_when: Optional[Callable[[], bool]] = None
    override_defaults: bool = True
    name: Optional[str] = None
    error_message: Optional[str] = None
    #: Abuse control; None: the app's default (RATEKEEPER_SHADOW, ...).
    shadow: Optional[bool] = None
    retry_jitter: Optional[float] = None
    penalty: Optional[Penalty] = None
    record_keys: Optional[bool] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.spec, str) or callable(self.spec)):
            raise TypeError(f"a limit spec must be a str or a callable returning one, not {self.spec!r}")
        if isinstance(self.spec, str):
            _validate_spec(self.spec)
        if isinstance(self.cost, bool) or not (isinstance(self.cost, int) or callable(self.cost)):
            raise TypeError(f"cost must be an int or a callable returning one, not {self.cost!r}")
        if self.methods is not None:
            self.methods = frozenset(m.upper() for m in self.methods)
        if self.penalty is not None and not isinstance(self.penalty, Penalty):
            raise TypeError(f"penalty must be a ratekeeper.Penalty, not {self.penalty!r}")
        if self.retry_jitter is not None:
            _check_jitter(self.retry_jitter)


def _check_jitter(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"retry_jitter must be a number of seconds >= 0, not {value!r}")
    return float(value)


#: (shadow, retry_jitter, penalty, record_keys) of one engine policy.
PolicyOpts = Tuple[bool, float, Optional[Penalty], bool]
_PLAIN: PolicyOpts = (False, 0.0, None, False)


def _opts_suffix(opts: PolicyOpts) -> str:
    """What a policy's name adds for non-default options (so that one spec
    with other options is another policy)."""
    shadow, jitter, penalty, record_keys = opts
    parts = []
    if shadow:
        parts.append("shadow")
    if jitter:
        parts.append(f"jitter={jitter:g}s")
    if penalty is not None:
        parts.append(f"penalty={penalty.strikes}/{penalty.window:g}s,ban={penalty.ban:g}s..{penalty.max_ban:g}s")
    if record_keys:
        parts.append("keys")
    return f" [{' '.join(parts)}]" if parts else ""


def _validate_spec(spec: str) -> None:
    """Raises ParseError (with the byte position) for a bad spec at
    declaration time, not at the first request."""
    with Engine(capacity=1) as scratch:
        scratch.policy("validate", spec)


@dataclass(frozen=True)
class Breach:
    """What :func:`on_breach` hooks and custom ``response`` builders get when a
    request is throttled."""

    decision: Decision  #: the binding decision (denied)
    limit: LimitDecl  #: the declaration that denied
    policy: Policy  #: its engine policy
    name: str  #: the policy item name used in the RateLimit headers
    key: Union[str, bytes]  #: the engine key (scope + key function value)
    retry_after: Optional[int]  #: whole seconds (None: never)
    quota: int  #: quota of the binding limit
    window: int  #: its window in whole seconds


def _ceil_s(ns: int) -> int:
    return -(-ns // 1_000_000_000)


def _sf_string(name: str) -> str:
    """``name`` as a structured-field String (RFC 8941): printable ASCII,
    with quotes and backslashes escaped."""
    cleaned = "".join(c if " " <= c <= "~" else "_" for c in name)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------- per-app state


class _State:
    """Everything one app's requests need, in app.extensions["ratekeeper"]."""

    def __init__(self, ext: "Ratekeeper", app: Flask, config: Dict[str, Any]):
        self.ext = ext
        self.config = config
        self.enabled = bool(config["RATEKEEPER_ENABLED"])
        self.headers_enabled = bool(config["RATEKEEPER_HEADERS_ENABLED"])
        self.legacy_headers = bool(config["RATEKEEPER_LEGACY_HEADERS"])
        self.fail_open = bool(config["RATEKEEPER_FAIL_OPEN"])
        self.trusted_proxies = int(config["RATEKEEPER_TRUSTED_PROXIES"])
        self.ipv6_prefix = int(config["RATEKEEPER_IPV6_PREFIX"])
        self.key_prefix = str(config["RATEKEEPER_KEY_PREFIX"])
        self.problem_type = str(config["RATEKEEPER_PROBLEM_TYPE"])
        self.capacity = config["RATEKEEPER_CAPACITY"]
        self.when_full = config["RATEKEEPER_WHEN_FULL"]
        if self.trusted_proxies < 0:
            raise ValueError("RATEKEEPER_TRUSTED_PROXIES must be >= 0")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("RATEKEEPER_IPV6_PREFIX must be in 0..128")
        if self.when_full not in ("evict", "fail_open", "fail_closed"):
            raise ValueError("RATEKEEPER_WHEN_FULL must be 'evict', 'fail_open' or 'fail_closed'")
        self.shadow = bool(config["RATEKEEPER_SHADOW"])
        self.retry_jitter = _check_jitter(config["RATEKEEPER_RETRY_JITTER"] or 0.0)
        self.penalty = config["RATEKEEPER_PENALTY"]
        if self.penalty is not None and not isinstance(self.penalty, Penalty):
            raise TypeError("RATEKEEPER_PENALTY must be a ratekeeper.Penalty or None")
        self.record_keys = bool(config["RATEKEEPER_RECORD_KEYS"])
        self.redis_options = dict(config["RATEKEEPER_REDIS_OPTIONS"] or {})
        on_failure = config["RATEKEEPER_REDIS_ON_FAILURE"]
        if on_failure is not None and on_failure not in _ON_FAILURE_VALUES:
            raise ValueError(f"RATEKEEPER_REDIS_ON_FAILURE must be one of {', '.join(_ON_FAILURE_VALUES)}, "
                             f"not {on_failure!r}")
        self.allow = _AccessList(config["RATEKEEPER_ALLOWLIST"], "RATEKEEPER_ALLOWLIST")
        self.deny = _AccessList(config["RATEKEEPER_DENYLIST"], "RATEKEEPER_DENYLIST")
        self.lists = bool(self.allow or self.deny)
        self._ip_access_cache: Dict[str, int] = {}
        self.key_lists = bool(self.allow.keys or self.deny.keys)
        self.metrics_endpoint = config["RATEKEEPER_METRICS_ENDPOINT"]
        salt = config["RATEKEEPER_LOG_HASH_SALT"]
        self.deny_log = DenyLogger(
            max_per_second=config["RATEKEEPER_LOG_MAX_PER_SECOND"],
            level=config["RATEKEEPER_LOG_LEVEL"],
            hash_salt=salt.encode("utf-8") if isinstance(salt, str) else salt,
        )
        self.default_key = ext._key
        self.on_breach = ext._options.get("on_breach")
        self.response = ext._options.get("response")
        self.app_limits = ext._decls_from("application", config["RATEKEEPER_APPLICATION_LIMITS"], "app")
        self.default_limits = ext._decls_from("default", config["RATEKEEPER_DEFAULT"], "default")
        self._engine: Optional[Engine] = ext._engine
        self._lock = threading.Lock()
        self.policies: Dict[str, Policy] = {}
        self.plans: Dict[Optional[str], Tuple[_Entry, ...]] = {}
        self.fragments: Dict[Tuple[str, int], Tuple[str, Tuple[str, ...]]] = {}
        if ext._engine is None:
            # A forked child opens its own engine (and for a shared file: after
            # fork, as the README requires); the parent's stays the parent's.
            _forget_at_fork(self)

    def _after_fork_in_child(self) -> None:
        self._engine = None
        self._lock = threading.Lock()
        self.policies = {}

    @property
    def engine(self) -> Engine:
        """The engine: ``engine=``, else the Redis of RATEKEEPER_REDIS_URL
        (config, else the environment variable), else the shared file of
        RATEKEEPER_SHARED_PATH (or of the environment variable of that name,
        which ratekeeper.gunicorn sets), else one in-process engine per
        process. Opened lazily in each process (so after fork)."""
        engine = self._engine
        if engine is not None:
            return engine
        with self._lock:
            if self._engine is not None:
                return self._engine
            url = self.config["RATEKEEPER_REDIS_URL"] or os.environ.get("RATEKEEPER_REDIS_URL")
            path = self.config["RATEKEEPER_SHARED_PATH"] or os.environ.get("RATEKEEPER_SHARED_PATH")
            if url:
                on_failure = (self.config["RATEKEEPER_REDIS_ON_FAILURE"]
                              or os.environ.get("RATEKEEPER_REDIS_ON_FAILURE") or "local")
                if on_failure not in _ON_FAILURE_VALUES:
                    raise ValueError(f"$RATEKEEPER_REDIS_ON_FAILURE must be one of {', '.join(_ON_FAILURE_VALUES)}, "
                                     f"not {on_failure!r}")
                options = {
                    "on_failure": on_failure,
                    # The local fallback in the host's shared file: still one
                    # limit for all of this host's workers while Redis is down.
                    "fallback_path": path if on_failure == "local" else None,
                    "capacity": self.capacity,
                    "max_bytes": self.config["RATEKEEPER_SHARED_MAX_BYTES"],
                    "mode": self.config["RATEKEEPER_SHARED_MODE"] if path else None,
                }
                options.update(self.redis_options)
                engine = redis_engine(url, **options)
            elif path:
                engine = shared_engine(
                    path,
                    capacity=self.capacity,
                    max_bytes=self.config["RATEKEEPER_SHARED_MAX_BYTES"],
                    mode=self.config["RATEKEEPER_SHARED_MODE"],
                )
            else:
                engine = Engine(capacity=self.capacity)
            self.policies = {}
            self._engine = engine
            return engine

    def ip_access(self, addr: str) -> int:
        """-1: the address is deny-listed (by network or as a literal key);
        1: allow-listed; 0: neither. Deny wins. Cached per address."""
        value = self._ip_access_cache.get(addr)
        if value is None:
            ip = _ip_of(addr)
            grouped = _group_ipv6(addr, self.ipv6_prefix) if ":" in addr else addr
            if self.deny.has_ip(ip) or addr in self.deny.keys or grouped in self.deny.keys:
                value = -1
            elif self.allow.has_ip(ip) or addr in self.allow.keys or grouped in self.allow.keys:
                value = 1
            else:
                value = 0
            if len(self._ip_access_cache) >= 4096:
                self._ip_access_cache.clear()
            self._ip_access_cache[addr] = value
        return value

    def key_access(self, value: Any) -> int:
        """-1, 1 or 0 for a key function's value (deny wins)."""
        if value in self.deny.keys:
            return -1
        if value in self.allow.keys:
            return 1
        return 0

    def options(self, decl: LimitDecl) -> PolicyOpts:
        """A declaration's abuse-control options, defaults filled in."""
        return (
            self.shadow if decl.shadow is None else bool(decl.shadow),
            self.retry_jitter if decl.retry_jitter is None else float(decl.retry_jitter),
            self.penalty if decl.penalty is None else decl.penalty,
            self.record_keys if decl.record_keys is None else bool(decl.record_keys),
        )

    def policy(self, engine: Engine, spec: str, opts: PolicyOpts = _PLAIN) -> Policy:
        """The engine policy of ``spec`` with ``opts`` (one per distinct spec
        string and options), named ``<prefix>:<spec>`` (plus the options, e.g.
        ``flask:5/minute [shadow]``)."""
        cache_key = (spec, opts)
        policy = self.policies.get(cache_key)
        if policy is not None and policy.engine is engine:
            return policy
        name = f"{self.key_prefix}:{spec}{_opts_suffix(opts)}"
        if len(name.encode("utf-8")) > 128:
            import hashlib

            digest = hashlib.sha1(f"{spec}{_opts_suffix(opts)}".encode("utf-8")).hexdigest()
            name = f"{self.key_prefix}:sha1:{digest}"
        shadow, jitter, penalty, record_keys = opts
        policy = engine.policy(name, spec, capacity=self.capacity, when_full=self.when_full, shadow=shadow,
                               retry_jitter=jitter, penalty=penalty, record_keys=record_keys)
        with self._lock:
            self.policies[cache_key] = policy
        return policy

    def fragment(self, base: str, policy: Policy) -> Tuple[str, Tuple[str, ...]]:
        """For one declaration's policy: its RateLimit-Policy items (e.g.
        ``"burst";q=10;w=1``) and the structured-field name of each of its
        limits (cached: the headers cost a dict lookup per request)."""
        key = (base, policy.id)
        value = self.fragments.get(key)
        if value is None:
            names = tuple(_sf_string(_item_name(base, policy, i)) for i in range(len(policy.limits)))
            items = ", ".join(
                f"{names[i]};q={limit.quota};w={max(1, _ceil_s(limit.period_ns))}"
                for i, limit in enumerate(policy.limits)
            )
            value = (items, names)
            if len(self.fragments) < 4096:
                self.fragments[key] = value
        return value

    def plan(self, app: Flask, endpoint_name: Optional[str]) -> Tuple["_Entry", ...]:
        """The declarations that may apply to ``endpoint_name`` (before method
        filters and exempt_when), each with its header name, cached per
        endpoint."""
        plan = self.plans.get(endpoint_name)
        if plan is not None:
            return plan
        view = app.view_functions.get(endpoint_name) if endpoint_name else None
        ext = self.ext
        own = ext._view_limits(view)
        exempt_view = ext._is_exempt(view)
        bp_names = _blueprint_chain(app, endpoint_name)
        exempt_bp = any(b in ext._exempt_blueprints for b in bp_names)
        decls: List[LimitDecl] = []
        if not exempt_view:
            if not exempt_bp:
                decls.extend(self.app_limits)
            decls.extend(own)
            if not own or not all(d.override_defaults for d in own):
                bp_limits = [d for b in bp_names for d in ext._blueprint_limits.get(b, ())]
                if not exempt_bp:
                    decls.extend(bp_limits)
                    if not bp_limits:
                        decls.extend(self.default_limits)
        plan = tuple(
            _Entry(d, _base_name(d, endpoint_name), endpoint_name, self.default_key, self.options(d)) for d in decls
        )
        self.plans[endpoint_name] = plan
        return plan


class _Entry:
    """One declaration as it applies to one endpoint, with what can be
    computed once: its header name and, for a *simple* declaration (static
    spec, scope and cost, the remote_addr key, no method filter, no
    exempt_when, not per method), the key prefix, so that the request path
    only appends the client address."""

    __slots__ = ("decl", "base", "prefix", "cost", "policy", "deduct", "opts")

    def __init__(self, decl: LimitDecl, base: str, endpoint_name: Optional[str], default_key: KeyFunc,
                 opts: PolicyOpts = _PLAIN):
        self.decl = decl
        self.base = base
        self.opts = opts
        self.policy: Optional[Policy] = None  # cached per engine (checked on use)
        self.deduct = decl.deduct_when is not None
        self.cost = decl.cost
        simple = (
            isinstance(decl.spec, str)
            and (decl.key or default_key) is remote_addr
            and (decl.scope is None or isinstance(decl.scope, str))
            and not decl.per_method
            and isinstance(decl.cost, int)
            and decl.methods is None
            and decl.exempt_when is None
        )
        scope = decl.scope if decl.scope is not None else (endpoint_name or "")
        self.prefix: Optional[str] = f"{scope}\x00" if simple else None


_fork_states: "weakref.WeakSet[_State]" = weakref.WeakSet()


def _reset_states_after_fork() -> None:
    for state in list(_fork_states):
        state._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_states_after_fork)


def _forget_at_fork(state: "_State") -> None:
    _fork_states.add(state)


def _blueprint_chain(app: Flask, endpoint_name: Optional[str]) -> List[str]:
    """Names of the blueprints of an endpoint, innermost first
    (``"outer.inner.view"`` -> ``["outer.inner", "outer"]``)."""
    if not endpoint_name or "." not in endpoint_name:
        return []
    parts = endpoint_name.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts) - 1, -1, -1)]


def _state_of(app: Flask) -> _State:
    try:
        return app.extensions["ratekeeper"]
    except KeyError:
        raise RuntimeError("ratekeeper.flask.Ratekeeper was not initialised for this app (init_app)") from None


class _Context:
    """What one request's check leaves in the WSGI environ for the response
    fields (_HeadersMiddleware) and deduct_when (_deduct)."""

    __slots__ = ("state", "items", "plan", "decision", "index", "deduct", "response_is_ours")

    def __init__(self, state: _State, items: List[Tuple[Policy, Any, int]], plan: List[_Entry],
                 decision: Decision, index: int, deduct: bool):
        self.state = state
        self.items = items
        self.plan = plan
        self.decision = decision
        self.index = index
        self.deduct = deduct
        self.response_is_ours = False


_CTX_ENV = "ratekeeper.context"


# ---------------------------------------------------------------- the extension


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

        # A closure over this app's state: no current_app lookup per request.
        def ratekeeper_before_request() -> Optional[flask.Response]:
            return self._before_request(app, state)

        app.before_request(ratekeeper_before_request)
        # The rate-limit fields are appended where the response's header list
        # is a plain list (start_response), from the context the check left in
        # the WSGI environ: cheaper than an after_request hook.
        app.wsgi_app = _HeadersMiddleware(app.wsgi_app)  # type: ignore[method-assign]
        self._apps.append(app)
        if state.metrics_endpoint:
            self._add_metrics_endpoint(app, state, str(state.metrics_endpoint))

    def _add_metrics_endpoint(self, app: Flask, state: _State, path: str) -> None:
        """Serves the engine's Prometheus metrics at ``path`` (exempt from
        every limit). With a shared engine: the totals of every worker."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from .prometheus import RatekeeperCollector

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

    # -- declarations ----------------------------------------------------------

    def _decls_from(self, kind: str, specs: Union[Spec, Sequence[Spec], None], name: str) -> List[LimitDecl]:
        if specs is None or specs == "":
            return []
        if isinstance(specs, str) or callable(specs):
            specs = [specs]
        specs = list(specs)
        return [
            LimitDecl(spec, kind, name=name if len(specs) == 1 else f"{name}-{i}",
                      scope=_APP_SCOPE if kind == "application" else None)
            for i, spec in enumerate(specs)
        ]

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

    def _before_request(self, app: Flask, st: _State) -> Optional[flask.Response]:
        if not st.enabled:
            return None
        req = request._get_current_object()  # type: ignore[attr-defined]
        environ = req.environ
        environ[_STATE_ENV] = st
        endpoint_name = req.endpoint
        plan = st.plans.get(endpoint_name)
        if plan is None:
            plan = st.plan(app, endpoint_name)
        allowed_by_list = False
        if st.lists:  # allow and deny lists (never on the fast path when unset)
            addr = _client_address(environ, st.trusted_proxies, st.ipv6_prefix)
            access = st.ip_access(_client_ip(environ, st.trusted_proxies))
            if access == 0 and st.key_lists and (plan or st.deny.keys):
                value = st.default_key()
                if value is not None:
                    access = st.key_access(value)
            if access < 0:
                return self._forbidden(st, addr)
            allowed_by_list = access > 0
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
                    if access < 0:
                        return self._forbidden(st, value)
                    if access > 0:
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
            if decision.shadow_denied and not shadow_hits:
                shadow_hits = ((index, decision),)
        except RatekeeperError as e:
            return self._engine_failed(st, e)
        ctx = _Context(st, items, used, decision, index, deduct)
        environ[_CTX_ENV] = ctx
        if shadow_hits:
            self._log_shadow(st, ctx, shadow_hits)
        if decision.allowed:
            if deduct:
                flask.after_this_request(functools.partial(_deduct, ctx))
            return None
        return self._breach(st, ctx)

    def _forbidden(self, st: _State, key: Any) -> flask.Response:
        """403 for a deny-listed client (logged like a denial)."""
        st.deny_log.deny("forbidden", "denylist", key, record_key=st.record_keys,
                         detail=f"{request.method} {request.path}")
        return _problem(st, 403, "Forbidden", "This client is not allowed to use this service.")

    def _log_shadow(self, st: _State, ctx: "_Context", hits: Sequence[Tuple[int, Decision]]) -> None:
        log_ = st.deny_log
        for i, d in hits:
            entry = ctx.plan[i]
            policy, key, _cost = ctx.items[i]
            log_.deny("shadow_denied", policy.name, key, record_key=entry.opts[3],
                      retry_after=d.retry_after, limit=_item_name(entry.base, policy, d.limit_index),
                      banned=d.banned, shadow=True)

    def _engine_failed(self, st: _State, error: Exception) -> Optional[flask.Response]:
        if st.fail_open:
            log.warning("ratekeeper: rate limiting skipped for %s %s (failing open): %s",
                        request.method, request.path, error)
            return None
        log.error("ratekeeper: request refused with 503 (RATEKEEPER_FAIL_OPEN is False): %s", error)
        return _problem(st, 503, "Service Unavailable", "The rate limiter is unavailable.")

    def _breach(self, st: _State, ctx: _Context) -> flask.Response:
        d = ctx.decision
        entry = ctx.plan[ctx.index]
        decl, base = entry.decl, entry.base
        policy, key, _cost = ctx.items[ctx.index]
        limit = policy.limits[d.limit_index] if d.limit_index < len(policy.limits) else policy.limits[0]
        name = _item_name(base, policy, d.limit_index)
        retry_after = None if d.retry_after_ns == U64_MAX else max(1, _ceil_s(d.retry_after_ns))
        window = max(1, _ceil_s(limit.period_ns))
        breach = Breach(d, decl, policy, name, key, retry_after, d.limit, window)
        st.deny_log.deny("banned" if d.banned else "denied", policy.name, key, record_key=entry.opts[3],
                         retry_after=d.retry_after, limit=name, banned=d.banned)
        if st.on_breach is not None:
            st.on_breach(breach)
        response = None
        if st.response is not None:
            response = st.response(breach)
            if response is not None:
                response = flask.make_response(response)
        if response is None:
            if decl.error_message:
                detail = decl.error_message
            elif d.banned:
                detail = (f"Too many requests over the {name} limit: this client is banned "
                          f"for {retry_after} s.")
            elif retry_after is None:
                detail = f"This request costs more than the {name} limit ({d.limit} per {window} s) can ever allow."
            else:
                detail = f"Rate limit {name} exceeded ({d.limit} per {window} s); retry in {retry_after} s."
            extra: Dict[str, Any] = {"policy": name, "retry_after": retry_after}
            if d.banned:
                extra["banned"] = True
            response = _problem(st, 429, "Too Many Requests", detail, **extra)
            ctx.response_is_ours = True
        if retry_after is not None and (ctx.response_is_ours or "Retry-After" not in response.headers):
            response.headers.add("Retry-After", str(retry_after))
        return response


def _problem(st: _State, status: int, title: str, detail: str, **extra: Any) -> flask.Response:
    """An ``application/problem+json`` response (RFC 9457): ``type``,
    ``title``, ``status``, ``detail``, then ``extra`` members."""
    body = {"type": st.problem_type, "title": title, "status": status, "detail": detail, **extra}
    return flask.Response(json.dumps(body), status=status, mimetype="application/problem+json")


def _deduct(ctx: _Context, response: flask.Response) -> flask.Response:
    """after_this_request hook of requests with a ``deduct_when`` limit:
    refunds the charges whose ``deduct_when(response)`` is False."""
    for entry, (policy, key, cost) in zip(ctx.plan, ctx.items):
        decl = entry.decl
        if decl.deduct_when is not None and not decl.deduct_when(response):
            try:
                policy.refund(key, cost)
            except RatekeeperError as e:
                log.warning("ratekeeper: refund failed: %s", e)
    return response


def _header_fields(ctx: _Context) -> List[Tuple[str, str]]:
    """The rate-limit fields of a checked request: ``RateLimit-Policy`` (every
    limit that applied), ``RateLimit`` (the binding one) and, if enabled, the
    legacy ``X-RateLimit-*`` (``X-RateLimit-Reset``: Unix time, seconds)."""
    st = ctx.state
    items = ctx.items
    if len(items) == 1:
        policy_value, names = st.fragment(ctx.plan[0].base, items[0][0])
    else:
        parts = [st.fragment(entry.base, item[0]) for entry, item in zip(ctx.plan, items)]
        policy_value = ", ".join([p[0] for p in parts])
        names = parts[ctx.index][1]
    legacy = st.legacy_headers
    return _rate_limit_fields(ctx.decision, policy_value, names, legacy, int(time.time()) if legacy else 0)


class _HeadersMiddleware:
    """Wraps ``app.wsgi_app``: appends the rate-limit fields of the request
    (if a limit applied) to the response's header list in start_response."""

    def __init__(self, wsgi_app: Callable[..., Any]):
        self.wsgi_app = wsgi_app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def ratekeeper_start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            ctx = environ.get(_CTX_ENV)
            if ctx is not None:
                del environ[_CTX_ENV]
                if ctx.decision.allowed:
                    if ctx.state.headers_enabled:
                        headers.extend(_header_fields(ctx))
                elif ctx.response_is_ours:
                    headers.extend(_header_fields(ctx))
                else:  # a custom over-limit response may set its own fields
                    present = {name.lower() for name, _ in headers}
                    headers.extend(f for f in _header_fields(ctx) if f[0].lower() not in present)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, ratekeeper_start_response)


def _base_name(decl: LimitDecl, endpoint_name: Optional[str]) -> str:
    """A declaration's name in the RateLimit headers: its ``name``, else its
    scope, else the endpoint."""
    if decl.name is not None:
        return decl.name
    if isinstance(decl.scope, str) and decl.scope != _APP_SCOPE:
        return decl.scope
    return endpoint_name or "default"


def _item_name(base: str, policy: Policy, index: int) -> str:
    """The RateLimit policy item name of limit ``index`` of a declaration
    named ``base``: ``base``, with ``-<index>`` when its spec has several
    limits."""
    if len(policy.limits) > 1:
        return f"{base}-{index}"
    return base


def _decl_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    allowed = {"key", "cost", "methods", "per_method", "scope", "deduct_when", "exempt_when",
               "override_defaults", "name", "error_message", "shadow", "retry_jitter", "penalty", "record_keys"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown limit arguments: {', '.join(sorted(unknown))}")
    if kwargs.get("methods") is not None:
        kwargs["methods"] = frozenset(kwargs["methods"])
    return kwargs
