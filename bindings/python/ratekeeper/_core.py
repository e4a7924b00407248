"""Engine, Policy, Decision, Permit and Stats: the Python face of the engine.

One compiled module, :mod:`ratekeeper._ratekeeper` (Rust, PyO3), links the
``ratekeeper`` crate. Ownership: an :class:`Engine` owns its engine and frees
it in :meth:`Engine.close` (also on ``with`` exit and, as a fallback, when
garbage-collected). Policies and permits keep their engine alive; after
``close()`` every call raises :class:`EngineClosed` instead of touching freed
memory, even from other threads (a call that is in progress when ``close()``
runs delays the free until it returns).

Threading: one Engine may be used by any number of threads. On an in-process
or shared engine, ``check``, ``peek``, ``refund`` and ``check_many`` keep the
GIL (they take tens of ns and never block); ``acquire(timeout=...)`` releases
it while it waits. A Redis engine's calls wait for the network, so all of them
release the GIL.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import errors
from ._version import __version__
from .errors import Throttled

try:
    from . import _ratekeeper as _rk
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "ratekeeper: the compiled module ratekeeper._ratekeeper is missing or cannot be loaded "
        f"({e}). Install a wheel, or build from source with `pip install ./bindings/python` (needs cargo)."
    ) from e

LIBRARY_VERSION: str = _rk.version()
if LIBRARY_VERSION != __version__:
    raise ImportError(
        f"ratekeeper: ABI mismatch: the Python package is version {__version__} but the "
        f"compiled module ratekeeper._ratekeeper reports {LIBRARY_VERSION}; rebuild the package "
        "(pip install --force-reinstall ./bindings/python)"
    )

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
    return _rk.now_ns()


def library_version() -> str:
    """The linked library's version (``rk_version()``; always equal to
    ``ratekeeper.__version__``: checked at import)."""
    return _rk.version()


# ---------------------------------------------------------------- Decision

#: The outcome of a check (immutable, hashable, comparable; fields and
#: ``retry_after``/``reset_after`` seconds: see its docstring). Implemented in
#: Rust: a check builds one without creating any other Python object.
Decision = _rk.Decision


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
        self._adopt(_rk.Handle.local(*self._options(capacity, clock, None, None)[:2]), None)

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
        handle = _rk.Handle.shared(os.fsencode(path), *cls._options(capacity, clock, max_bytes, mode))
        self = cls.__new__(cls)
        self._adopt(handle, os.fsdecode(path))
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
        if hash_secret is not None:
            if not isinstance(hash_secret, (bytes, bytearray)):
                raise TypeError(f"hash_secret must be bytes, not {type(hash_secret).__name__}")
            hash_secret = bytes(hash_secret)
        capacity_, clock_, max_bytes_, mode_ = cls._options(capacity, clock, max_bytes, mode)
        handle = _rk.Handle.redis(
            url,
            prefix,
            _ON_FAILURE[on_failure],
            _seconds_ms("connect_timeout", connect_timeout),
            _seconds_ms("timeout", timeout),
            _seconds_ms("retry_min", retry_min) if retry_min is not None else None,
            _seconds_ms("retry_max", retry_max) if retry_max is not None else None,
            _count("deny_cache", deny_cache, minimum=0),
            _count("pool_size", pool_size, minimum=0) if pool_size is not None else None,
            os.fsencode(fallback_path) if fallback_path is not None else None,
            capacity_,
            clock_,
            max_bytes_,
            mode_,
            hash_secret,
            bool(log_switches),
            os.fsencode(tls_ca_file) if tls_ca_file is not None else None,
            bool(cluster),
        )
        self = cls.__new__(cls)
        self._adopt(handle, os.fsdecode(fallback_path) if fallback_path is not None else None)
        self.redis_url = _redact(url)
        self.on_failure = on_failure
        return self

    @staticmethod
    def _options(
        capacity: Optional[int], clock: Union[str, int], max_bytes: Optional[int], mode: Optional[int]
    ) -> Tuple[Optional[int], int, Optional[int], Optional[int]]:
        """(capacity, clock, max_bytes, mode) for ``_ratekeeper.Handle``, validated."""
        if capacity is not None:
            if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
                raise errors.InvalidArgument(f"capacity must be a positive int, not {capacity!r}")
        if isinstance(clock, str):
            if clock not in _CLOCKS:
                raise errors.InvalidArgument(f"clock must be one of {sorted(_CLOCKS)}, not {clock!r}")
            clock = _CLOCKS[clock]
        elif clock not in (0, 1):
            raise errors.InvalidArgument(f"clock must be one of {sorted(_CLOCKS)}, not {clock!r}")
        if max_bytes is not None:
            max_bytes = _count("max_bytes", max_bytes, minimum=0)
        if mode is not None:
            if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
                raise errors.InvalidArgument(f"mode must be a file mode (0..0o7777), not {mode!r}")
        return capacity, clock, max_bytes, mode

    def _adopt(self, handle: Any, path: Optional[str]) -> None:
        self._handle = handle
        # Weak: policies keep their engine alive, not the other way round, so
        # dropping every reference frees the engine at once (no cycle).
        self._policies: "weakref.WeakValueDictionary[int, Policy]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.path: Optional[str] = path
        self.pid = os.getpid()
        #: The Redis URL (password hidden) of an engine from :meth:`redis`, else None.
        self.redis_url: Optional[str] = None
        self.on_failure: Optional[str] = None
        # The batch call itself, without a Python frame in between (the
        # method below documents it).
        self.check_many = handle.check_many

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Frees the engine (a shared engine's file stays). Idempotent. Every
        later call on it, its policies or permits raises
        :class:`~ratekeeper.errors.EngineClosed`."""
        handle = getattr(self, "_handle", None)
        if handle is not None:  # None: __init__ failed
            handle.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._handle.closed

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
        if capacity is not None:
            if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
                raise errors.InvalidArgument(f"capacity must be a positive int, not {capacity!r}")
        if not isinstance(retry_jitter, (int, float)) or isinstance(retry_jitter, bool) or not 0 <= retry_jitter < math.inf:
            raise errors.InvalidArgument(f"retry_jitter must be a number of seconds >= 0, not {retry_jitter!r}")
        if penalty is not None and not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a ratekeeper.Penalty or None, not {type(penalty).__name__}")
        pid = self._handle.add_policy(
            name, spec, capacity, _WHEN_FULL[when_full], bool(shadow), bool(record_keys), _seconds_ns(retry_jitter),
            penalty._ns() if penalty is not None else None,
        )
        policy = self._policy_object(pid, capacity=capacity, when_full=when_full)
        # The options are the same for every caller that got this id (the
        # engine refuses a mismatch), so recording them here is exact.
        policy.shadow, policy.retry_jitter, policy.penalty, policy.record_keys = (
            bool(shadow), float(retry_jitter), penalty, bool(record_keys))
        return policy

    def find_policy(self, name: str) -> "Policy":
        """The policy named ``name`` (e.g. added by another process of a shared
        engine); raises :class:`~ratekeeper.errors.UnknownPolicy`."""
        return self._policy_object(self._handle.find_policy(name))

    def policies(self) -> List["Policy"]:
        """Every policy of the engine, in the order they were added (for a
        shared engine: by any process)."""
        return [self._policy_object(i) for i in self._handle.policy_ids()]

    def _policy_object(self, pid: int, capacity: Optional[int] = None, when_full: Optional[str] = None) -> "Policy":
        with self._lock:
            existing = self._policies.get(pid)
        if existing is not None:
            return existing
        policy = Policy(self, pid, capacity=capacity, when_full=when_full)
        with self._lock:
            return self._policies.setdefault(pid, policy)

    def now_ns(self) -> int:
        """This engine's clock now, in nanoseconds of ``CLOCK_MONOTONIC``:
        the time ``check``, ``peek`` and ``refund`` use without ``now_ns``
        (``CLOCK_MONOTONIC_COARSE`` unless ``clock="monotonic"``). Read it
        once and pass it to a check and to its later refund, and the refund
        is placed at the charge's time. On a Redis engine it is the local
        clock of the fallback tables: calls without ``now_ns`` read Redis's
        clock, one for every host, so do not pass this one there."""
        return self._handle.now_ns()

    def reset(self) -> int:
        """Forgets every key of every policy (every permit of a concurrency
        policy): every quota is full again — for tests (a pytest fixture,
        see the README) and administration. On a shared engine it clears the
        file every process uses. A scan of each policy's table: keys added
        while it runs may stay. Returns how many keys held state. On a Redis
        engine it deletes each policy's keys in Redis, for every host (a
        ``SCAN`` of the policy's keys and ``UNLINK``, on every master of a
        cluster; overrides stay): O(keys in Redis), for tests and
        administration, not the request path; raises
        :class:`~ratekeeper.errors.BackendError` if Redis cannot answer."""
        return sum(policy.reset_all() for policy in self.policies())

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
        return self._handle.check_many(items, now_ns)

    # -- Redis --------------------------------------------------------------

    def redis_stats(self) -> Optional[Dict[str, Any]]:
        """This process's counters of a Redis engine (None for any other):
        ``up`` (Redis answers, as of the last call or reconnect try),
        ``round_trips``, ``errors``, ``failovers`` (switches to the failure
        policy), ``recoveries`` (switches back), ``fallback_decisions``,
        ``deny_cache_hits``, ``script_loads``."""
        stats = self._handle.redis_stats()
        if stats is None:
            return None
        return dict(zip(_REDIS_STATS_FIELDS, stats))


# ---------------------------------------------------------------- Policy


class Policy(_rk.Checker):
    """One named policy of an :class:`Engine` (from :meth:`Engine.policy`).

    Rate-limit policies: :meth:`check`, :meth:`peek`, :meth:`refund`,
    :meth:`reset`. Concurrency policies (``"concurrency N"``):
    :meth:`acquire` (a context manager), :meth:`peek`, :meth:`reset`,
    :meth:`release_holder`. Both: :meth:`stats`, ``name``, ``spec``
    (canonical), ``limits``, ``id``.
    """

    # ``id``, ``is_concurrency``, ``check``, ``peek``, ``refund``, ``reset``,
    # ``clear_override`` and ``override`` are the Rust base class's
    # (``_ratekeeper.Checker``): a check runs without a Python frame.

    def __init__(self, engine: Engine, policy_id: int, capacity: Optional[int] = None, when_full: Optional[str] = None):
        self._engine = engine
        name, spec, limits = self._info()
        self.name: str = name
        self.spec: str = spec
        self.limits: Tuple[Limit, ...] = tuple(Limit(*limit) for limit in limits)
        self.capacity = capacity
        self.when_full = when_full
        #: Abuse-control options, as given to :meth:`Engine.policy` (None:
        #: unknown, for a policy only found by name or id).
        self.shadow: Optional[bool] = None
        self.retry_jitter: Optional[float] = None
        self.penalty: Optional[Penalty] = None
        self.record_keys: Optional[bool] = None

    @property
    def engine(self) -> Engine:
        """The engine this policy belongs to."""
        return self._engine

    def __repr__(self) -> str:
        return f"<ratekeeper.Policy {self.name!r} {self.spec!r} id={self.id}>"

    def stats(self) -> Stats:
        """Counters (allowed, denied, shadow_denied, banned, bans, evictions,
        table_full) and occupancy; in a shared engine, the totals of every
        process."""
        return Stats(*self._stats())

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
        self._set_override(key, float(factor))

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
        return [
            DenyEvent(
                ticket=ticket,
                time=time_ns / 1e9,
                key_hash=key_hash,
                key=key if key is None else bytes(key),
                retry_after=math.inf if retry == U64_MAX else retry / 1e9,
                limit_index=limit_index,
                banned=banned,
                shadow=shadow,
            )
            for ticket, time_ns, key_hash, key, retry, limit_index, banned, shadow in self._recent_denials(since)
        ]

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
        now = _now(now_ns)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0 or timeout != timeout):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
        remaining = timeout or 0.0
        while True:
            if now is not None:
                decision, raw = self._acquire(key, None, now)
            elif remaining <= 0:
                decision, raw = self._acquire(key, None, None)
            else:
                chunk = min(remaining, 3600.0)
                decision, raw = self._acquire(key, max(1, int(chunk * 1e9)), None)
                remaining -= chunk
            if decision.allowed or remaining <= 0 or now is not None:
                break
        if not decision.allowed:
            waited = f"within {timeout} s" if timeout else "now"
            raise Throttled(f"no permit of policy {self.name!r} free {waited}", decision=decision, policy=self)
        return Permit(self, raw, decision)

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
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        if not 0 <= pid <= 0xFFFFFFFF:
            raise errors.InvalidArgument(f"{pid} is not a process id")
        return self._release_holder(pid)


# ---------------------------------------------------------------- Permit


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
        released = self.policy._release(self._raw)
        self._released = True
        return released

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
