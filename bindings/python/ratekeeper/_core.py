"""Engine, Policy, Decision, Permit and Stats: the Python face of the C ABI.

Ownership (as in include/ratekeeper.h): an :class:`Engine` owns its
``rk_engine*`` and frees it in :meth:`Engine.close` (also on ``with`` exit and,
as a fallback, when garbage-collected). Policies and permits keep their
engine alive; after ``close()`` every call raises :class:`EngineClosed`
instead of touching freed memory, even from other threads (a call that is in
progress in the library when ``close()`` runs delays the free until it
returns).

Threading: one Engine may be used by any number of threads. ``check``,
``peek``, ``refund`` and ``check_many`` run in C with the GIL held (they take
~50 ns in the library); everything else goes through cffi, which releases the
GIL during the call (so ``acquire(timeout=...)`` sleeps without blocking
other threads). A Redis engine's calls wait for the network, so all of them
go through cffi and release the GIL.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from . import errors
from ._native import address, ffi, last_error, lib, speedups
from .errors import EngineClosed, RatekeeperError, Throttled, error_for_status

__all__ = [
    "Engine",
    "Policy",
    "Decision",
    "Permit",
    "Stats",
    "Limit",
    "Penalty",
    "DenyEvent",
    "Key",
    "now_ns",
    "library_version",
    "U64_MAX",
    "shared_engine",
    "redis_engine",
]

#: ``retry_after_ns`` of a request that can never be allowed (its cost
#: exceeds what the limit can ever allow).
U64_MAX = 2**64 - 1

#: A key: ``str`` (encoded as UTF-8) or bytes-like.
Key = Union[str, bytes, bytearray, memoryview]

_CLOCKS = {"coarse": 1, "monotonic_coarse": 1, "monotonic": 0, "precise": 0}
_ON_FAILURE = {"local": 0, "open": 1, "closed": 2}
_REDIS_STATS_FIELDS = (
    "up", "round_trips", "errors", "failovers", "recoveries", "fallback_decisions", "deny_cache_hits", "script_loads",
)
_WHEN_FULL = {"evict": 0, "fail_open": 1, "fail_closed": 2}
_ALGORITHMS = {0: "gcra", 1: "fixed_window", 2: "sliding_window", 3: "sliding_log", 4: "concurrency"}


def _raise(status: int) -> None:
    """Raises the exception for a non-OK status, with rk_last_error()'s text
    (read at once: it is thread-local and the GIL is held)."""
    raise error_for_status(status, last_error() if status > 0 else "")


def _error_handler(status: int, message: str) -> None:
    """Called by _speedups on a non-OK status."""
    raise error_for_status(status, message)


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def _cost(cost: Any) -> int:
    if not isinstance(cost, int) or isinstance(cost, bool):
        raise TypeError(f"cost must be an int, not {type(cost).__name__}")
    if not 0 <= cost <= 0xFFFFFFFF:
        raise ValueError("cost must be an int in 0..4294967295")
    return cost


def _now(now_ns: Any) -> Optional[int]:
    if now_ns is None:
        return None
    if not isinstance(now_ns, int) or isinstance(now_ns, bool):
        raise TypeError(f"now_ns must be an int or None, not {type(now_ns).__name__}")
    if not 0 <= now_ns <= U64_MAX:
        raise ValueError("now_ns must be an int in 0..2**64-1")
    return now_ns


def now_ns() -> int:
    """Nanoseconds of ``CLOCK_MONOTONIC``: the time base of every ``now_ns``
    argument, the same in every process of the host."""
    return lib.rk_now_ns()


def library_version() -> str:
    """The linked library's ``rk_version()`` (always equal to
    ``ratekeeper.__version__``: checked at import)."""
    return ffi.string(lib.rk_version()).decode("ascii")


# ---------------------------------------------------------------- Decision


class _PyDecisionBase:
    """Pure-Python stand-in for ``_speedups.DecisionBase``."""

    __slots__ = (
        "allowed", "limit", "remaining", "retry_after_ns", "reset_after_ns", "limit_index", "banned", "shadow_denied",
    )
    allowed: bool
    banned: bool
    shadow_denied: bool
    limit: int
    remaining: int
    retry_after_ns: int
    reset_after_ns: int
    limit_index: int

    def __new__(
        cls,
        allowed: bool,
        limit: int,
        remaining: int,
        retry_after_ns: int,
        reset_after_ns: int,
        limit_index: int = 0,
        banned: bool = False,
        shadow_denied: bool = False,
    ):
        self = object.__new__(cls)
        setter = object.__setattr__
        setter(self, "allowed", bool(allowed))
        setter(self, "banned", bool(banned))
        setter(self, "shadow_denied", bool(shadow_denied))
        setter(self, "limit", int(limit))
        setter(self, "remaining", int(remaining))
        setter(self, "retry_after_ns", int(retry_after_ns))
        setter(self, "reset_after_ns", int(reset_after_ns))
        setter(self, "limit_index", int(limit_index))
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Decision is immutable (cannot set {name!r})")

    def _astuple(self) -> Tuple[bool, int, int, int, int, int, bool, bool]:
        return (self.allowed, self.limit, self.remaining, self.retry_after_ns, self.reset_after_ns, self.limit_index,
                self.banned, self.shadow_denied)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _DecisionBase):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __reduce__(self):
        return (type(self), self._astuple())


if TYPE_CHECKING:  # pragma: no cover - the C base declares the same fields (_speedups.pyi)
    _DecisionBase = _PyDecisionBase
else:
    _DecisionBase = speedups.DecisionBase if speedups is not None else _PyDecisionBase


class Decision(_DecisionBase):
    """The outcome of a check: immutable, hashable, comparable.

    Fields (as the Rust ``ratekeeper::Decision``): ``allowed``; ``limit`` (quota of the
    binding limit; for GCRA the burst); ``remaining`` (requests of cost 1
    still allowed now under the binding limit); ``retry_after_ns`` (when
    denied, wait at least this long; 0 when allowed; ``2**64-1`` when the
    cost can never be allowed); ``reset_after_ns`` (time until the binding
    limit is back to full quota); ``limit_index`` (index of the binding limit
    in its policy). ``retry_after`` and ``reset_after`` are the same in
    seconds, as floats (``retry_after`` is ``math.inf`` for "never").
    Where the library reports them (penalty box, shadow mode): ``banned``
    and ``shadow_denied``, else always False.

    ``Decision(allowed, limit, remaining, retry_after_ns, reset_after_ns,
    limit_index=0, banned=False, shadow_denied=False)`` builds one by hand
    (e.g. in tests).
    """

    __slots__ = ()

    @property
    def retry_after(self) -> float:
        """Seconds to wait before retrying (0.0 when allowed; ``math.inf``
        when the request can never be allowed)."""
        ns = self.retry_after_ns
        return math.inf if ns == U64_MAX else ns / 1e9

    @property
    def reset_after(self) -> float:
        """Seconds until the binding limit is back to full quota."""
        return self.reset_after_ns / 1e9

    def to_dict(self) -> Dict[str, Any]:
        """The fields (and seconds) as a dict, e.g. for JSON."""
        return {
            "allowed": self.allowed,
            "limit": self.limit,
            "remaining": self.remaining,
            "retry_after": self.retry_after,
            "reset_after": self.reset_after,
            "retry_after_ns": self.retry_after_ns,
            "reset_after_ns": self.reset_after_ns,
            "limit_index": self.limit_index,
            "banned": self.banned,
            "shadow_denied": self.shadow_denied,
        }

    def __repr__(self) -> str:
        flags = "".join(f", {n}=True" for n in ("banned", "shadow_denied") if getattr(self, n))
        return (
            f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
            f"retry_after_ns={self.retry_after_ns}, reset_after_ns={self.reset_after_ns}, "
            f"limit_index={self.limit_index}{flags})"
        )


_DECISION_FLAGS = all(name in dict(ffi.typeof("rk_decision").fields) for name in ("banned", "shadow_denied"))


def _decision(out: Any) -> Decision:
    if _DECISION_FLAGS:
        return Decision(bool(out.allowed), out.limit, out.remaining, out.retry_after_ns, out.reset_after_ns,
                        out.limit_index, bool(out.banned), bool(out.shadow_denied))
    return Decision(
        bool(out.allowed), out.limit, out.remaining, out.retry_after_ns, out.reset_after_ns, out.limit_index
    )


# ---------------------------------------------------------------- plain values


@dataclass(frozen=True)
class Stats:
    """A policy's counters (summed over shards; in a shared engine, over every
    process) and table occupancy.

    ``denied`` counts every denial (in shadow mode: every would-be denial,
    which passed); ``shadow_denied`` the requests that passed in shadow mode
    but would have been denied; ``banned`` the requests refused by the
    penalty box (included in ``denied``); ``bans`` the bans it imposed."""

    allowed: int
    denied: int
    evictions: int
    table_full: int
    occupancy: int
    capacity: int
    shadow_denied: int = 0
    banned: int = 0
    bans: int = 0


@dataclass(frozen=True)
class Penalty:
    """A policy's penalty box (all durations in seconds): after ``strikes``
    denials of one key within ``window``, the key is banned for ``ban``;
    each further ban doubles it, up to ``max_ban`` (a key left alone for
    ``max_ban`` starts over). A banned key is denied without touching its
    limits (``Decision.banned``; ``retry_after`` is the ban's remaining
    time). Defaults: 3 strikes in 10 minutes, 15 minutes, at most 4 hours."""

    strikes: int = 3
    window: float = 600.0
    ban: float = 900.0
    max_ban: float = 14400.0

    def __post_init__(self) -> None:
        if not isinstance(self.strikes, int) or isinstance(self.strikes, bool) or not 1 <= self.strikes <= 0xFFFFFFFF:
            raise errors.InvalidArgument(f"Penalty.strikes must be an int in 1..2**32-1, not {self.strikes!r}")
        for name in ("window", "ban", "max_ban"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise errors.InvalidArgument(f"Penalty.{name} must be a positive number of seconds, not {value!r}")
        if self.max_ban < self.ban:
            raise errors.InvalidArgument("Penalty.max_ban must be at least Penalty.ban")

    def _ns(self) -> Tuple[int, int, int, int]:
        return (self.strikes, _seconds_ns(self.window), _seconds_ns(self.ban), _seconds_ns(self.max_ban))


def _seconds_ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _seconds_ms(name: str, seconds: Any) -> int:
    """A positive duration in seconds as whole milliseconds (rounded up, so
    at least 1 ms), for the C ABI's ``*_ms`` fields."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds < math.inf:
        raise errors.InvalidArgument(f"{name} must be a positive number of seconds, not {seconds!r}")
    ms = math.ceil(seconds * 1000)
    if ms > 0xFFFFFFFF:
        raise errors.InvalidArgument(f"{name} is too long: {seconds!r} s")
    return ms


def _count(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= U64_MAX:
        raise errors.InvalidArgument(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and repr)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user = auth.split(":", 1)[0] if ":" in auth else ""
    return f"{scheme}://{user}:***@{host}"


@dataclass(frozen=True)
class DenyEvent:
    """One recent denial of a policy (or, in shadow mode, a would-be denial),
    from :meth:`Policy.recent_denials`."""

    ticket: int  #: position in the policy's history (one more per denial)
    time: float  #: when, in seconds of CLOCK_MONOTONIC (``now_ns() / 1e9``)
    key_hash: int  #: the key's 64-bit hash under the policy's seed (always kept)
    key: Optional[bytes]  #: the key's first bytes (at most 80), only with ``record_keys``
    retry_after: float  #: seconds the client was told to wait (``math.inf``: never)
    limit_index: int  #: the binding limit
    banned: bool  #: denied by the penalty box
    shadow: bool  #: shadow mode: the request passed

    @property
    def time_ns(self) -> int:
        """``time`` in nanoseconds."""
        return int(round(self.time * 1e9))


@dataclass(frozen=True)
class Limit:
    """One limit of a policy, as parsed from its spec."""

    algorithm: str  #: "gcra", "fixed_window", "sliding_window", "sliding_log" or "concurrency"
    count: int  #: requests (cost units) per period; for concurrency, permits in flight
    period_ns: int  #: the period; for concurrency, the lease TTL
    burst: int  #: GCRA bucket capacity (= count for every other algorithm)

    @property
    def period(self) -> float:
        """The period in seconds."""
        return self.period_ns / 1e9

    @property
    def quota(self) -> int:
        """What a decision reports as ``limit`` for this limit (the burst for
        GCRA, else the count)."""
        return self.burst


# ---------------------------------------------------------------- Handle / Checker fallbacks


class _PyHandle:
    """Pure-Python stand-in for ``_speedups.Handle``."""

    __slots__ = ("address",)

    def __init__(self, address: int):
        self.address = address

    def invalidate(self) -> None:
        self.address = 0

    @property
    def closed(self) -> bool:
        return self.address == 0


def _cffi_call(engine: "Engine", policy_id: int, fn_now: Any, fn_at: Any, key: Key, cost: int, now: Optional[int],
               out_type: str) -> Any:
    """One rk_check/peek/refund(_at) call through cffi (the GIL is released
    during it); returns the filled out-parameter."""
    k = _key_bytes(key)
    cost = _cost(cost)
    now = _now(now)
    out = ffi.new(out_type)
    ptr = engine._enter()
    try:
        if now is None:
            st = fn_now(ptr, policy_id, k, len(k), cost, out)
        else:
            st = fn_at(ptr, policy_id, k, len(k), cost, now, out)
        if st:
            _raise(st)
    finally:
        engine._leave()
    return out


class _PyChecker:
    """Pure-Python (cffi) stand-in for ``_speedups.Checker``: the same
    check/peek/refund, ~5x slower."""

    _engine: "Engine"

    def __init__(self, handle: _PyHandle, policy_id: int, concurrency: bool = False):
        self._py_handle = handle
        self._py_id = policy_id
        self._py_concurrency = bool(concurrency)

    @property
    def id(self) -> int:
        """The policy's id within its engine."""
        return self._py_id

    def _call(self, fn_now: Any, fn_at: Any, key: Key, cost: int, now: Optional[int], out_type: str) -> Any:
        return _cffi_call(self._engine, self._py_id, fn_now, fn_at, key, cost, now, out_type)

    def check(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> Decision:
        return _decision(self._call(lib.rk_check, lib.rk_check_at, key, cost, now_ns, "rk_decision *"))

    def peek(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> Decision:
        return _decision(self._call(lib.rk_peek, lib.rk_peek_at, key, cost, now_ns, "rk_decision *"))

    def refund(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> bool:
        return bool(self._call(lib.rk_refund, lib.rk_refund_at, key, cost, now_ns, "bool *")[0])


_FAST_PATH_FUNCTIONS = (
    "rk_check", "rk_check_at", "rk_peek", "rk_peek_at", "rk_refund", "rk_refund_at", "rk_last_error", "rk_now_ns",
    "rk_check_many", "rk_check_many_at",
)

if speedups is not None:
    _Handle: Any = speedups.Handle
    _CheckerBase: Any = speedups.Checker
    _addresses: Dict[str, Optional[int]] = {name: address(name) for name in _FAST_PATH_FUNCTIONS}
    speedups.init(_addresses, Decision, _error_handler)
else:
    _Handle = _PyHandle
    _CheckerBase = _PyChecker


# ---------------------------------------------------------------- Engine


class Engine:
    """A set of named policies: in process (``Engine()``) or in a shared file
    that every worker process maps (``Engine.shared(path)``).

    ``capacity``: keys each policy tracks unless it asks for another number
    (default 65,536). ``clock``: ``"coarse"`` (default:
    ``CLOCK_MONOTONIC_COARSE``, a few ns to read, kernel-tick resolution,
    never more lenient) or ``"monotonic"`` (ns resolution).

    Close it with :meth:`close` or use it as a context manager. Thread-safe.
    """

    def __init__(self, capacity: Optional[int] = None, clock: str = "coarse"):
        opts = self._options(capacity, clock, None, None)
        out = ffi.new("rk_engine **")
        st = lib.rk_engine_new(opts, out)
        if st:
            _raise(st)
        self._adopt(out[0], None)

    @classmethod
    def shared(
        cls,
        path: Union[str, bytes, "os.PathLike[str]"],
        capacity: Optional[int] = None,
        max_bytes: Optional[int] = None,
        mode: int = 0o600,
        clock: str = "coarse",
    ) -> "Engine":
        """Creates or attaches the shared engine backed by the file ``path``
        (normally under ``/dev/shm``): every process that opens the same path
        enforces the same limits together.

        ``max_bytes`` (default 1 GiB, sparse) applies when the file is
        created; ``mode`` (default 0o600) is the mode of a new file and the
        widest one an existing file may have. Open it **after fork**
        (Gunicorn ``post_fork``, uWSGI ``lazy-apps``): see
        :mod:`ratekeeper.gunicorn`. Raises
        :class:`~ratekeeper.errors.IOFailure` or
        :class:`~ratekeeper.errors.CorruptFile` on a bad file, and
        :class:`~ratekeeper.errors.UnsafeFile` on one that is not a regular
        file owned by this user with at most ``mode``.
        """
        opts = cls._options(capacity, clock, max_bytes, mode)
        out = ffi.new("rk_engine **")
        st = lib.rk_engine_open_shared(os.fsencode(path), opts, out)
        if st:
            _raise(st)
        self = cls.__new__(cls)
        self._adopt(out[0], os.fsdecode(path))
        return self

    @classmethod
    def redis(
        cls,
        url: str,
        *,
        prefix: str = "rk:",
        on_failure: str = "local",
        fallback_path: Union[str, bytes, "os.PathLike[str]", None] = None,
        connect_timeout: float = 0.2,
        timeout: float = 0.1,
        deny_cache: int = 4096,
        capacity: Optional[int] = None,
        pool_size: Optional[int] = None,
        retry_min: Optional[float] = None,
        retry_max: Optional[float] = None,
        log_switches: bool = True,
        hash_secret: Optional[bytes] = None,
        clock: str = "coarse",
        max_bytes: Optional[int] = None,
        mode: Optional[int] = None,
        tls_ca_file: Union[str, bytes, "os.PathLike[str]", None] = None,
        cluster: bool = False,
    ) -> "Engine":
        """Opens an engine whose limits live in the Redis server at ``url``
        (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
        TLS): every engine on the same server and ``prefix``, in any process
        on any host, enforces the same limits together. Each check is one
        round trip (one Lua script call, atomic for all limits of the
        policy); without ``now_ns`` it uses Redis's clock.

        ``on_failure``: what decides while Redis cannot be reached:
        ``"local"`` (default: the engine's local tables, in the shared file
        ``fallback_path`` if given, so the limit still holds per host),
        ``"open"`` (allow everything) or ``"closed"`` (deny everything,
        ``retry_after`` until the next reconnect try). Calls never raise
        because of Redis and never wait longer than ``timeout``; the engine
        tries Redis again with backoff (``retry_min`` .. ``retry_max``
        seconds, default 0.05 .. 2) and switches back by itself. Switches
        are counted in :meth:`redis_stats` and logged on stderr unless
        ``log_switches=False``.

        ``connect_timeout``, ``timeout`` (one round trip): seconds (kept in
        whole milliseconds, at least 1 ms). ``deny_cache``: entries of the
        local cache of denied keys (answered without a round trip until
        their retry-after; 0 turns it off). ``capacity``, ``clock``: the
        local tables', as for :class:`Engine`; ``max_bytes``, ``mode``: the
        fallback file's, as for :meth:`shared`. ``pool_size``: idle
        connections kept (default 16). ``hash_secret``: the secret (at least
        16 bytes) of the keyed hash that turns keys into Redis key names;
        default: one random secret stored in Redis and shared by all engines.
        ``tls_ca_file``: for ``rediss://``, a PEM file of the certificate
        authority to trust instead of the system's store. ``cluster``: the
        URL names Redis Cluster nodes (comma-separated); commands follow the
        cluster's slots.

        Opens a connection at once: a bad URL raises
        :class:`~ratekeeper.errors.InvalidArgument` (a ``ValueError``), a
        refused password, a server that is not Redis or an untrusted TLS
        certificate :class:`~ratekeeper.errors.BackendError`; an unreachable
        server is not an error (the engine starts on its failure policy).
        Open one per process, after fork (:func:`redis_engine`,
        :mod:`ratekeeper.gunicorn`).
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if on_failure not in _ON_FAILURE:
            raise errors.InvalidArgument(f"on_failure must be one of {sorted(_ON_FAILURE)}, not {on_failure!r}")
        opts = ffi.new("rk_redis_options *")
        lib.rk_redis_options_init_sized(opts, ffi.sizeof("rk_redis_options"))
        keep = []  # C strings and structs referenced by opts: alive until the call returns

        def c_bytes(data: bytes) -> Any:
            buf = ffi.new("char[]", data)
            keep.append(buf)
            return buf

        opts.on_failure = _ON_FAILURE[on_failure]
        opts.prefix = c_bytes(prefix.encode("utf-8"))
        opts.connect_timeout_ms = _seconds_ms("connect_timeout", connect_timeout)
        opts.timeout_ms = _seconds_ms("timeout", timeout)
        if retry_min is not None:
            opts.retry_min_ms = _seconds_ms("retry_min", retry_min)
        if retry_max is not None:
            opts.retry_max_ms = _seconds_ms("retry_max", retry_max)
        opts.deny_cache = _count("deny_cache", deny_cache, minimum=0)
        if pool_size is not None:
            opts.pool_size = _count("pool_size", pool_size, minimum=0)
        if fallback_path is not None:
            opts.fallback_path = c_bytes(os.fsencode(fallback_path))
        eopts = cls._options(capacity, clock, max_bytes, mode)
        keep.append(eopts)
        opts.engine_options = eopts
        if hash_secret is not None:
            if not isinstance(hash_secret, (bytes, bytearray)):
                raise TypeError(f"hash_secret must be bytes, not {type(hash_secret).__name__}")
            secret = ffi.new("uint8_t[]", bytes(hash_secret))
            keep.append(secret)
            opts.hash_secret, opts.hash_secret_len = secret, len(hash_secret)
        opts.log_switches = bool(log_switches)
        if tls_ca_file is not None:
            opts.tls_ca_file = c_bytes(os.fsencode(tls_ca_file))
        opts.cluster = bool(cluster)
        out = ffi.new("rk_engine **")
        st = lib.rk_engine_open_redis(url.encode("utf-8"), opts, out)
        if st:
            _raise(st)
        self = cls.__new__(cls)
        self._adopt(out[0], os.fsdecode(fallback_path) if fallback_path is not None else None)
        self.redis_url = _redact(url)
        self.on_failure = on_failure
        return self

    @staticmethod
    def _options(capacity: Optional[int], clock: Union[str, int], max_bytes: Optional[int], mode: Optional[int]) -> Any:
        opts = ffi.new("rk_engine_options *")
        lib.rk_engine_options_init(opts)
        if capacity is not None:
            if not isinstance(capacity, int) or capacity < 1:
                raise errors.InvalidArgument(f"capacity must be a positive int, not {capacity!r}")
            opts.capacity = capacity
        if isinstance(clock, str):
            if clock not in _CLOCKS:
                raise errors.InvalidArgument(f"clock must be one of {sorted(_CLOCKS)}, not {clock!r}")
            opts.clock = _CLOCKS[clock]
        else:
            opts.clock = clock
        if max_bytes is not None:
            opts.shared_max_bytes = max_bytes
        if mode is not None:
            opts.shared_file_mode = mode
        return opts

    def _adopt(self, ptr: Any, path: Optional[str]) -> None:
        self._ptr = ptr
        self._handle = _Handle(int(ffi.cast("uintptr_t", ptr)))
        self._lock = threading.Lock()
        self._inflight = 0
        self._deferred_free: Any = None
        # Weak: policies keep their engine alive, not the other way round, so
        # dropping every reference frees the engine at once (no cycle).
        self._policies: "weakref.WeakValueDictionary[int, Policy]" = weakref.WeakValueDictionary()
        self.path: Optional[str] = path
        self.pid = os.getpid()
        #: The Redis URL (password hidden) of an engine from :meth:`redis`, else None.
        self.redis_url: Optional[str] = None
        self.on_failure: Optional[str] = None

    # -- lifetime ---------------------------------------------------------

    def _enter(self) -> Any:
        """The engine pointer for one cffi call; pair with _leave()."""
        with self._lock:
            if self._ptr is None:
                raise EngineClosed("the engine is closed (Engine.close() was called)")
            if self.redis_url is not None and self.pid != os.getpid():
                # The parent's pooled connections are the parent's: replies
                # to two processes on one socket would be mixed up.
                raise EngineClosed(
                    f"this Redis engine was opened in process {self.pid}, before a fork: open one in each "
                    "process (ratekeeper.redis_engine, or the ratekeeper.gunicorn post_fork hook)"
                )
            self._inflight += 1
            return self._ptr

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            ptr = self._deferred_free if self._inflight == 0 else None
            if ptr is not None:
                self._deferred_free = None
        if ptr is not None:
            lib.rk_engine_free(ptr)

    def close(self) -> None:
        """Frees the engine (a shared engine's file stays). Idempotent. Every
        later call on it, its policies or permits raises
        :class:`~ratekeeper.errors.EngineClosed`."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed
            return
        with lock:
            ptr = self._ptr
            if ptr is None:
                return
            self._ptr = None
            self._handle.invalidate()
            if self._inflight:
                self._deferred_free = ptr  # the last call in progress frees it
                return
        lib.rk_engine_free(ptr)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        if self.redis_url is not None:
            where = f"redis {self.redis_url!r}" + (f", fallback {self.path!r}" if self.path else "")
        else:
            where = f"shared {self.path!r}" if self.path else "in-process"
        state = "closed" if self.closed else f"{len(self._policies)} policies"
        return f"<ratekeeper.Engine {where}, {state}>"

    # -- policies ---------------------------------------------------------

    def policy(
        self,
        name: str,
        spec: str,
        capacity: Optional[int] = None,
        when_full: str = "evict",
        *,
        shadow: bool = False,
        retry_jitter: float = 0.0,
        penalty: Optional[Penalty] = None,
        record_keys: bool = False,
    ) -> "Policy":
        """Adds (or finds) the policy ``name`` with the limits of ``spec``
        (e.g. ``"5/minute;20/hour"``, ``"sliding_log 3/10 seconds"``,
        ``"concurrency 4"``; grammar in the README). Adding a name again with
        the same limits (in any spelling) returns the same policy; other
        limits raise :class:`~ratekeeper.errors.PolicyMismatch`.

        ``capacity``: keys this policy tracks (default: the engine's).
        ``when_full``: what a new key does when the table has no room:
        ``"evict"`` (the entry that would expire soonest, default),
        ``"fail_open"`` or ``"fail_closed"``.

        Abuse control (stored with the policy: every process of a shared
        engine applies the same; adding the name again with other options
        raises :class:`~ratekeeper.errors.PolicyMismatch`):

        - ``shadow``: decisions are computed and counted as if enforced,
          but every request passes; ``Decision.shadow_denied`` marks those
          that would have been denied.
        - ``retry_jitter``: up to this many seconds of random extra on every
          denial's retry-after (never shorter than the true wait).
        - ``penalty``: a :class:`Penalty` box (ban after repeated denials).
        - ``record_keys``: keep the key text (its first 80 bytes) in
          :meth:`Policy.recent_denials` (default: only its hash; keys can be
          personal data).
        """
        if when_full not in _WHEN_FULL:
            raise errors.InvalidArgument(f"when_full must be one of {sorted(_WHEN_FULL)}, not {when_full!r}")
        opts = ffi.new("rk_policy_options *")
        # The sized initialiser fills every field this header knows (the
        # plain rk_policy_options_init is the first version's: 24 bytes).
        lib.rk_policy_options_init_sized(opts, ffi.sizeof("rk_policy_options"))
        if capacity is not None:
            if not isinstance(capacity, int) or capacity < 1:
                raise errors.InvalidArgument(f"capacity must be a positive int, not {capacity!r}")
            opts.capacity = capacity
        opts.when_full = _WHEN_FULL[when_full]
        if not isinstance(retry_jitter, (int, float)) or isinstance(retry_jitter, bool) or not 0 <= retry_jitter < math.inf:
            raise errors.InvalidArgument(f"retry_jitter must be a number of seconds >= 0, not {retry_jitter!r}")
        if penalty is not None and not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a ratekeeper.Penalty or None, not {type(penalty).__name__}")
        opts.shadow = bool(shadow)
        opts.record_keys = bool(record_keys)
        opts.retry_jitter_ns = _seconds_ns(retry_jitter)
        if penalty is not None:
            (opts.penalty_strikes, opts.penalty_window_ns, opts.penalty_ban_ns,
             opts.penalty_max_ban_ns) = penalty._ns()
        pid = ffi.new("uint32_t *")
        bname, bspec = name.encode("utf-8"), spec.encode("utf-8")
        ptr = self._enter()
        try:
            st = lib.rk_policy_add_with(ptr, bname, bspec, opts, pid)
            if st:
                _raise(st)
        finally:
            self._leave()
        policy = self._policy_object(pid[0], capacity=capacity, when_full=when_full)
        # The options are the same for every caller that got this id (the
        # engine refuses a mismatch), so recording them here is exact.
        policy.shadow, policy.retry_jitter, policy.penalty, policy.record_keys = (
            bool(shadow), float(retry_jitter), penalty, bool(record_keys))
        return policy

    def find_policy(self, name: str) -> "Policy":
        """The policy named ``name`` (e.g. added by another process of a shared
        engine); raises :class:`~ratekeeper.errors.UnknownPolicy`."""
        pid = ffi.new("uint32_t *")
        ptr = self._enter()
        try:
            st = lib.rk_policy_find(ptr, name.encode("utf-8"), pid)
            if st:
                _raise(st)
        finally:
            self._leave()
        return self._policy_object(pid[0])

    def policies(self) -> List["Policy"]:
        """Every policy of the engine, in the order they were added (for a
        shared engine: by any process)."""
        count = ffi.new("uint32_t *")
        ptr = self._enter()
        try:
            st = lib.rk_policy_count(ptr, count)
            if st:
                _raise(st)
        finally:
            self._leave()
        return [self._policy_object(i) for i in range(count[0])]

    def _policy_object(self, pid: int, capacity: Optional[int] = None, when_full: Optional[str] = None) -> "Policy":
        with self._lock:
            existing = self._policies.get(pid)
        if existing is not None:
            return existing
        cls = _RedisPolicy if self.redis_url is not None else Policy
        policy = cls(self, pid, capacity=capacity, when_full=when_full)
        with self._lock:
            return self._policies.setdefault(pid, policy)

    def _string(self, fn: Any, pid: int) -> str:
        size = ffi.new("size_t *")
        ptr = self._enter()
        try:
            st = fn(ptr, pid, ffi.NULL, 0, size)
            if st:
                _raise(st)
            buf = ffi.new("char[]", size[0] + 1)
            st = fn(ptr, pid, buf, size[0] + 1, size)
            if st:
                _raise(st)
        finally:
            self._leave()
        return ffi.string(buf, size[0]).decode("utf-8")

    # -- batches ----------------------------------------------------------

    def check_many(
        self,
        items: Sequence[Tuple[Any, ...]],
        now_ns: Optional[int] = None,
    ) -> Tuple[Decision, int]:
        """Checks several ``(policy, key, cost)`` items (``cost`` may be
        omitted: 1) — e.g. every limit of one HTTP request — as one request:
        if every item allows, every item is charged; if any denies, none is.

        Returns the binding decision and its index in ``items``: a denying item
        with the largest retry-after, else the item with the fewest remaining
        (ties to the lowest index). One call of the library's
        ``rk_check_many``, which decides which item binds, charges or refunds,
        and strikes every denied item that has a penalty box. On a Redis
        engine: one round trip, at most 64 items.
        """
        if speedups is not None and self.redis_url is None:
            return speedups.check_many(self._handle, items, now_ns)
        return self._check_many_cffi(items, now_ns)

    # -- Redis --------------------------------------------------------------

    def redis_stats(self) -> Optional[Dict[str, Any]]:
        """This process's counters of a Redis engine (None for any other):
        ``up`` (Redis answers, as of the last call or reconnect try),
        ``round_trips``, ``errors``, ``failovers`` (switches to the failure
        policy), ``recoveries`` (switches back), ``fallback_decisions``,
        ``deny_cache_hits``, ``script_loads``."""
        out = ffi.new("rk_redis_stats *")
        ptr = self._enter()
        try:
            st = lib.rk_engine_redis_stats_sized(ptr, out, ffi.sizeof("rk_redis_stats"))
        finally:
            self._leave()
        if st == lib.RK_ERR_WRONG_ENGINE_KIND:
            return None
        if st:
            _raise(st)
        return {name: (bool(out.up) if name == "up" else int(getattr(out, name))) for name in _REDIS_STATS_FIELDS}

    def _check_many_cffi(self, items: Sequence[Tuple[Any, ...]], now_ns: Optional[int]) -> Tuple[Decision, int]:
        """check_many through cffi: without _speedups, and on a Redis engine
        (cffi releases the GIL while the call waits for Redis)."""
        now = _now(now_ns)
        parsed = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple) or not 2 <= len(item) <= 3:
                raise TypeError(f"check_many: item {i} must be a tuple (policy, key[, cost])")
            policy = item[0]
            if not isinstance(policy, Policy):
                raise TypeError(f"check_many: item {i}: expected a Policy, not {type(policy).__name__}")
            if policy.engine is not self:
                raise ValueError(f"check_many: item {i}: the policy belongs to another engine")
            if policy.is_concurrency:
                raise error_for_status(errors.STATUS_CONCURRENCY_IN_BATCH)
            parsed.append((policy, _key_bytes(item[1]), _cost(item[2]) if len(item) == 3 else 1))
        if not parsed:
            raise ValueError("check_many needs at least one item")
        arr = ffi.new("rk_check_item[]", len(parsed))
        keep = []
        for slot, (policy, key, cost) in zip(arr, parsed):
            buf = ffi.from_buffer(key)
            keep.append(buf)
            slot.policy, slot.key, slot.key_len, slot.cost = policy.id, buf, len(key), cost
        out = ffi.new("rk_decision *")
        index = ffi.new("size_t *")
        ptr = self._enter()
        try:
            if now is None:
                st = lib.rk_check_many(ptr, arr, len(parsed), out, index)
            else:
                st = lib.rk_check_many_at(ptr, arr, len(parsed), now, out, index)
            if st:
                _raise(st)
        finally:
            self._leave()
        return _decision(out), index[0]


# ---------------------------------------------------------------- Policy


class Policy(_CheckerBase):
    """One named policy of an :class:`Engine` (from :meth:`Engine.policy`).

    Rate-limit policies: :meth:`check`, :meth:`peek`, :meth:`refund`,
    :meth:`reset`. Concurrency policies (``"concurrency N"``):
    :meth:`acquire` (a context manager), :meth:`peek`, :meth:`reset`,
    :meth:`release_holder`. Both: :meth:`stats`, ``name``, ``spec``
    (canonical), ``limits``, ``id``.
    """

    if TYPE_CHECKING:  # pragma: no cover - implemented by the C (or Python) base class

        @property
        def id(self) -> int: ...

        def check(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> Decision:
            """Checks ``key`` and charges ``cost`` if every limit allows."""

        def peek(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> Decision:
            """What check() would decide, changing nothing."""

        def refund(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> bool:
            """Gives back ``cost``; whether the key held state."""

    def __init__(self, engine: Engine, policy_id: int, capacity: Optional[int] = None, when_full: Optional[str] = None):
        self._engine = engine
        self.name: str = engine._string(lib.rk_policy_name, policy_id)
        self.spec: str = engine._string(lib.rk_policy_spec, policy_id)
        count = ffi.new("uint32_t *")
        limit = ffi.new("rk_limit *")
        ptr = engine._enter()
        try:
            st = lib.rk_policy_limit_count(ptr, policy_id, count)
            if st:
                _raise(st)
            limits = []
            for i in range(count[0]):
                st = lib.rk_policy_limit(ptr, policy_id, i, limit)
                if st:
                    _raise(st)
                limits.append(
                    Limit(_ALGORITHMS.get(limit.algorithm, str(limit.algorithm)), limit.count, limit.period_ns, limit.burst)
                )
        finally:
            engine._leave()
        self.limits: Tuple[Limit, ...] = tuple(limits)
        self.is_concurrency: bool = any(lim.algorithm == "concurrency" for lim in limits)
        self.capacity = capacity
        self.when_full = when_full
        #: Abuse-control options, as given to :meth:`Engine.policy` (None:
        #: unknown, for a policy only found by name or id).
        self.shadow: Optional[bool] = None
        self.retry_jitter: Optional[float] = None
        self.penalty: Optional[Penalty] = None
        self.record_keys: Optional[bool] = None
        super().__init__(engine._handle, policy_id, self.is_concurrency)

    @property
    def engine(self) -> Engine:
        """The engine this policy belongs to."""
        return self._engine

    def __repr__(self) -> str:
        return f"<ratekeeper.Policy {self.name!r} {self.spec!r} id={self.id}>"

    def _invoke(self, fn: Any, *args: Any) -> None:
        """Calls ``fn(engine, policy id, *args)`` with the engine held open;
        a non-OK status raises."""
        ptr = self._engine._enter()
        try:
            st = fn(ptr, self.id, *args)
            if st:
                _raise(st)
        finally:
            self._engine._leave()

    def reset(self, key: Key) -> bool:
        """Forgets everything about ``key`` (for a concurrency policy, drops
        its permits): its quota is full again.

        Returns whether the key held any state (was below its full quota,
        banned, or holding permits) just before the reset.
        """
        k = _key_bytes(key)
        had_state = ffi.new("bool *")
        self._invoke(lib.rk_reset_key, k, len(k), had_state)
        return bool(had_state[0])

    def stats(self) -> Stats:
        """Counters (allowed, denied, shadow_denied, banned, bans, evictions,
        table_full) and occupancy; in a shared engine, the totals of every
        process."""
        out = ffi.new("rk_stats *")
        self._invoke(lib.rk_policy_stats_sized, out, ffi.sizeof("rk_stats"))
        return Stats(out.allowed, out.denied, out.evictions, out.table_full, out.occupancy, out.capacity,
                     out.shadow_denied, out.banned, out.bans)

    # -- runtime overrides -------------------------------------------------

    def set_override(self, key: Key, factor: float) -> None:
        """Gives ``key`` ``factor`` times this policy's quota (e.g. 10.0 for a
        partner's API key, 0.5 for a suspicious one), at once, for every
        thread and every process of a shared engine. Scales the count and
        burst of ``gcra``, ``fixed_window`` and ``sliding_window`` limits
        (``sliding_log`` limits keep theirs). ``factor`` is kept in
        thousandths, from 0.001 to 16777.215."""
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            raise TypeError(f"factor must be a number, not {type(factor).__name__}")
        k = _key_bytes(key)
        self._invoke(lib.rk_override_set, k, len(k), float(factor))

    def clear_override(self, key: Key) -> None:
        """Removes ``key``'s override: it gets the policy's own quota again,
        at once (clearing a key without one does nothing)."""
        k = _key_bytes(key)
        self._invoke(lib.rk_override_clear, k, len(k))

    def override(self, key: Key) -> Optional[float]:
        """``key``'s override factor (as kept: thousandths), or None if it
        has none."""
        k = _key_bytes(key)
        out = ffi.new("double *")
        self._invoke(lib.rk_override_get, k, len(k), out)
        return out[0] if out[0] > 0.0 else None

    # -- recent denials ----------------------------------------------------

    def recent_denials(self, since: int = 0) -> List[DenyEvent]:
        """The policy's recent denials (also shadow-mode would-be denials)
        with a ticket of at least ``since``, oldest first: at most the last
        512, from every process of a shared engine. To follow the policy,
        pass the last event's ``ticket + 1`` next time (a gap in tickets
        means events were overwritten before they were read). The key text
        is there only if the policy was added with ``record_keys=True``."""
        if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= U64_MAX:
            raise ValueError("since must be an int in 0..2**64-1")
        capacity = lib.RK_DENY_RING_ENTRIES
        buf = ffi.new("rk_deny_event[]", capacity)
        count = ffi.new("size_t *")
        events: List[DenyEvent] = []
        while True:
            ptr = self._engine._enter()
            try:
                st = lib.rk_recent_denials(ptr, self.id, since, buf, capacity, count)
                if st:
                    _raise(st)
            finally:
                self._engine._leave()
            n = count[0]
            for i in range(n):
                e = buf[i]
                retry = e.retry_after_ns
                events.append(DenyEvent(
                    ticket=e.ticket,
                    time=e.time_ns / 1e9,
                    key_hash=e.key_hash,
                    key=bytes(ffi.buffer(e.key, e.key_len)) if e.has_key else None,
                    retry_after=math.inf if retry == U64_MAX else retry / 1e9,
                    limit_index=e.limit_index,
                    banned=bool(e.banned),
                    shadow=bool(e.shadow),
                ))
            if n < capacity or len(events) >= 4 * capacity:
                return events
            since = events[-1].ticket + 1

    def acquire(self, key: Key, timeout: Optional[float] = None, now_ns: Optional[int] = None) -> "Permit":
        """Takes a permit of this concurrency policy for ``key``.

        ``timeout``: ``None`` or ``0`` (default) tries once, without waiting;
        a positive number of seconds waits up to that long for a permit to be
        released or to expire (sleeping on a futex, GIL released);
        ``math.inf`` waits as long as it takes. ``now_ns`` (no waiting then)
        is an explicit time for tests.

        Returns a :class:`Permit` (a context manager: ``with
        policy.acquire(key, timeout=1.0): ...``); raises
        :class:`~ratekeeper.errors.Throttled` if no permit could be had.
        """
        k = _key_bytes(key)
        now = _now(now_ns)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0 or timeout != timeout):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
        permit = ffi.new("rk_permit *")
        out = ffi.new("rk_decision *")
        engine = self._engine
        remaining = timeout or 0.0
        while True:
            ptr = engine._enter()
            try:
                if now is not None:
                    st = lib.rk_acquire_at(ptr, self.id, k, len(k), now, permit, out)
                elif remaining <= 0:
                    st = lib.rk_acquire(ptr, self.id, k, len(k), permit, out)
                else:
                    chunk = min(remaining, 3600.0)
                    st = lib.rk_acquire_timeout(ptr, self.id, k, len(k), int(chunk * 1e9), permit, out)
                    remaining -= chunk
                if st:
                    _raise(st)
            finally:
                engine._leave()
            if out.allowed or remaining <= 0 or now is not None:
                break
        decision = _decision(out)
        if not decision.allowed:
            waited = f"within {timeout} s" if timeout else "now"
            raise Throttled(f"no permit of policy {self.name!r} free {waited}", decision=decision, policy=self)
        return Permit(self, permit, decision)

    def release_holder(self, pid: int) -> int:
        """Releases every permit of this policy held by process ``pid`` (a
        dead worker) and returns how many; 0 on a rate-limit policy.

        Only a dead process's permits: raises
        :class:`~ratekeeper.errors.InvalidArgument`, releasing nothing, if
        ``pid`` is a live process in this PID namespace (a zombie, exited but
        not yet reaped, counts as dead), this process, or 0. A lease records
        only its holder's pid, which a live process may have reused; so every
        process sharing the file, and the supervisor calling this, must share
        one PID namespace (a pid from another one names another process
        here, or none)."""
        n = ffi.new("uint64_t *")
        self._invoke(lib.rk_release_holder, pid, n)
        return n[0]


# ---------------------------------------------------------------- Permit


class _RedisPolicy(Policy):
    """A policy of a Redis engine: ``check``, ``peek`` and ``refund`` go
    through cffi, which releases the GIL while the call waits for Redis
    (other threads run meanwhile)."""

    def check(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> Decision:
        """Checks ``key`` and charges ``cost`` if every limit allows."""
        return _decision(_cffi_call(self._engine, self.id, lib.rk_check, lib.rk_check_at, key, cost, now_ns,
                                    "rk_decision *"))

    def peek(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> Decision:
        """What check() would decide, changing nothing."""
        return _decision(_cffi_call(self._engine, self.id, lib.rk_peek, lib.rk_peek_at, key, cost, now_ns,
                                    "rk_decision *"))

    def refund(self, key: Key, cost: int = 1, now_ns: Optional[int] = None) -> bool:
        """Gives back ``cost``; whether the key held state."""
        return bool(_cffi_call(self._engine, self.id, lib.rk_refund, lib.rk_refund_at, key, cost, now_ns,
                               "bool *")[0])


class Permit:
    """A permit of a concurrency policy (from :meth:`Policy.acquire`). Give it
    back with :meth:`release` or by leaving its ``with`` block; one never
    released expires after the policy's lease TTL."""

    __slots__ = ("policy", "decision", "_raw", "_released", "__weakref__")

    def __init__(self, policy: Policy, raw: Any, decision: Decision):
        self.policy = policy
        self.decision = decision
        self._raw = raw
        self._released = False

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._released

    def release(self) -> bool:
        """Gives the permit back (waking one waiting ``acquire``) and returns
        whether this call released its lease: ``True`` once; ``False`` if it
        was released already (by this call's predecessors, or through a copy
        of the permit), had expired after the policy's lease TTL (the lease
        may now be someone else's, who keeps it), or is a fail-open permit
        that never held a lease. A permit names one lease only: releasing
        it again never frees another holder's permit."""
        if self._released:
            return False
        engine = self.policy._engine
        released = ffi.new("bool *")
        ptr = engine._enter()
        try:
            st = lib.rk_release_permit(ptr, self._raw, released)
            if st:
                _raise(st)
        finally:
            engine._leave()
        self._released = True
        return bool(released[0])

    def __enter__(self) -> "Permit":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<ratekeeper.Permit of {self.policy.name!r}, {state}>"


# ---------------------------------------------------------------- per-process shared engines

_engines_lock = threading.Lock()
_engines: Dict[Tuple[str, int], Engine] = {}


def shared_engine(path: Union[str, "os.PathLike[str]"], **options: Any) -> Engine:
    """This process's engine on the shared file ``path``: opened on first use
    in each process (so after a fork: a forked child never reuses its
    parent's), then the same object for every caller in the process
    (:mod:`ratekeeper.flask`, :mod:`ratekeeper.gunicorn`). ``options`` go to
    :meth:`Engine.shared` when it is opened (``None`` values are dropped)."""
    key = (os.fspath(path), os.getpid())
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None or engine.closed:
            for stale in [k for k in _engines if k[1] != key[1]]:
                del _engines[stale]  # a parent's: never close it here (the parent owns it)
            engine = Engine.shared(path, **{k: v for k, v in options.items() if v is not None})
            _engines[key] = engine
        return engine


_redis_engines: Dict[Tuple[str, int], Engine] = {}


def redis_engine(url: str, **options: Any) -> Engine:
    """This process's Redis engine on ``url``: opened on first use in each
    process (so after a fork: a forked child never uses its parent's
    connections), then the same object for every caller in the process
    (:mod:`ratekeeper.flask`, :mod:`ratekeeper.gunicorn`). ``options`` go to
    :meth:`Engine.redis` when it is opened (``None`` values are dropped)."""
    key = (url, os.getpid())
    with _engines_lock:
        engine = _redis_engines.get(key)
        if engine is None or engine.closed:
            for stale in [k for k in _redis_engines if k[1] != key[1]]:
                # A parent's: dropped here, never used (its sockets are the parent's).
                del _redis_engines[stale]
            engine = Engine.redis(url, **{k: v for k, v in options.items() if v is not None})
            _redis_engines[key] = engine
        return engine
