"""What every request of one app needs, whatever the framework: its
parsed options, its engine (opened lazily in each process, so after a
pre-fork server's fork), its policies (one per distinct spec string and
options), the RateLimit-Policy fragments, and the allow/deny lists. The
Flask extension's per-app state and the ASGI middleware both extend
:class:`LimiterState`."""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from .._core import Engine, Penalty, Policy, redis_engine, shared_engine
from ..logs import DenyLogger
from .client_ip import AccessList, _group_ipv6, _ip_of
from .options import PLAIN, Access, OnFailure, PolicyOptions, WhenFull, check_jitter
from .plan import KeyFunc, LimitDecl, _item_name
from .responses import _ceil_s, _sf_string


class LimiterState:
    """One app's options (``config``: every key of
    :data:`~ratekeeper._web.constants.DEFAULTS`), engine, policies and
    header fragments. Bad options raise here, at construction."""

    def __init__(self, config: Dict[str, Any], engine: Optional[Engine], default_key: KeyFunc,
                 on_breach: Optional[Callable[..., Any]] = None, response: Optional[Callable[..., Any]] = None):
        self.config = config
        self.headers_enabled = bool(config["RATEKEEPER_HEADERS_ENABLED"])
        self.legacy_headers = bool(config["RATEKEEPER_LEGACY_HEADERS"])
        self.fail_open = bool(config["RATEKEEPER_FAIL_OPEN"])
        self.trusted_proxies = int(config["RATEKEEPER_TRUSTED_PROXIES"])
        self.ipv6_prefix = int(config["RATEKEEPER_IPV6_PREFIX"])
        self.key_prefix = str(config["RATEKEEPER_KEY_PREFIX"])
        self.problem_type = str(config["RATEKEEPER_PROBLEM_TYPE"])
        self.capacity = config["RATEKEEPER_CAPACITY"]
        self.when_full = WhenFull.parse(config["RATEKEEPER_WHEN_FULL"])
        if self.trusted_proxies < 0:
            raise ValueError("RATEKEEPER_TRUSTED_PROXIES must be >= 0")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("RATEKEEPER_IPV6_PREFIX must be in 0..128")
        self.shadow = bool(config["RATEKEEPER_SHADOW"])
        self.retry_jitter = check_jitter(config["RATEKEEPER_RETRY_JITTER"] or 0.0)
        self.penalty = config["RATEKEEPER_PENALTY"]
        if self.penalty is not None and not isinstance(self.penalty, Penalty):
            raise TypeError("RATEKEEPER_PENALTY must be a ratekeeper.Penalty or None")
        self.record_keys = bool(config["RATEKEEPER_RECORD_KEYS"])
        self.redis_options = dict(config["RATEKEEPER_REDIS_OPTIONS"] or {})
        on_failure = config["RATEKEEPER_REDIS_ON_FAILURE"]
        if on_failure is not None:
            OnFailure.parse(on_failure, "RATEKEEPER_REDIS_ON_FAILURE")
        self.allow = AccessList(config["RATEKEEPER_ALLOWLIST"], "RATEKEEPER_ALLOWLIST")
        self.deny = AccessList(config["RATEKEEPER_DENYLIST"], "RATEKEEPER_DENYLIST")
        self.lists = bool(self.allow or self.deny)
        self._ip_access_cache: Dict[str, Access] = {}
        self.key_lists = bool(self.allow.keys or self.deny.keys)
        self.metrics_endpoint = config["RATEKEEPER_METRICS_ENDPOINT"]
        salt = config["RATEKEEPER_LOG_HASH_SALT"]
        self.deny_log = DenyLogger(
            max_per_second=config["RATEKEEPER_LOG_MAX_PER_SECOND"],
            level=config["RATEKEEPER_LOG_LEVEL"],
            hash_salt=salt.encode("utf-8") if isinstance(salt, str) else salt,
        )
        self.default_key = default_key
        self.on_breach = on_breach
        self.response = response
        self._engine: Optional[Engine] = engine
        self._lock = threading.Lock()
        self.policies: Dict[str, Policy] = {}
        #: Whether any policy of this app is in shadow mode (else no request
        #: needs to look at Decision.shadow_denied).
        self.any_shadow = False
        self.fragments: Dict[Tuple[str, int], Tuple[str, Tuple[str, ...]]] = {}
        if engine is None:
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
                on_failure = OnFailure.parse(on_failure, "$RATEKEEPER_REDIS_ON_FAILURE")
                options = {
                    "on_failure": on_failure.value,
                    # The local fallback in the host's shared file: still one
                    # limit for all of this host's workers while Redis is down.
                    "fallback_path": path if on_failure is OnFailure.LOCAL else None,
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

    def ip_access(self, addr: str) -> Access:
        """Whether the address is deny-listed (by network or as a literal
        key), allow-listed or neither. Deny wins. Cached per address."""
        value = self._ip_access_cache.get(addr)
        if value is None:
            ip = _ip_of(addr)
            grouped = _group_ipv6(addr, self.ipv6_prefix) if ":" in addr else addr
            if self.deny.has_ip(ip) or addr in self.deny.keys or grouped in self.deny.keys:
                value = Access.DENIED
            elif self.allow.has_ip(ip) or addr in self.allow.keys or grouped in self.allow.keys:
                value = Access.ALLOWED
            else:
                value = Access.UNLISTED
            if len(self._ip_access_cache) >= 4096:
                self._ip_access_cache.clear()
            self._ip_access_cache[addr] = value
        return value

    def key_access(self, value: Any) -> Access:
        """The lists' verdict on a key function's value (deny wins)."""
        if value in self.deny.keys:
            return Access.DENIED
        if value in self.allow.keys:
            return Access.ALLOWED
        return Access.UNLISTED

    def options(self, decl: LimitDecl) -> PolicyOptions:
        """A declaration's abuse-control options, defaults filled in."""
        return PolicyOptions(
            shadow=self.shadow if decl.shadow is None else bool(decl.shadow),
            retry_jitter=self.retry_jitter if decl.retry_jitter is None else float(decl.retry_jitter),
            penalty=self.penalty if decl.penalty is None else decl.penalty,
            record_keys=self.record_keys if decl.record_keys is None else bool(decl.record_keys),
        )

    def policy(self, engine: Engine, spec: str, opts: PolicyOptions = PLAIN) -> Policy:
        """The engine policy of ``spec`` with ``opts`` (one per distinct spec
        string and options), named ``<prefix>:<spec>`` (plus the options, e.g.
        ``flask:5/minute [shadow]``)."""
        cache_key = (spec, opts)
        policy = self.policies.get(cache_key)
        if policy is not None and policy.engine is engine:
            return policy
        name = f"{self.key_prefix}:{spec}{opts.name_suffix()}"
        if len(name.encode("utf-8")) > 128:
            digest = hashlib.sha1(f"{spec}{opts.name_suffix()}".encode("utf-8")).hexdigest()
            name = f"{self.key_prefix}:sha1:{digest}"
        policy = engine.policy(name, spec, capacity=self.capacity, when_full=self.when_full.value, shadow=opts.shadow,
                               retry_jitter=opts.retry_jitter, penalty=opts.penalty, record_keys=opts.record_keys)
        with self._lock:
            self.policies[cache_key] = policy
            if opts.shadow:
                self.any_shadow = True
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


_fork_states: "weakref.WeakSet[LimiterState]" = weakref.WeakSet()


def _reset_states_after_fork() -> None:
    for state in list(_fork_states):
        state._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_states_after_fork)


def _forget_at_fork(state: LimiterState) -> None:
    _fork_states.add(state)
