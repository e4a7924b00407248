"""Storages of the ``limits`` package backed by ratekeeper, so that
Flask-Limiter and slowapi enforce one exact limit across every worker
process with nothing but a storage URI::

    import ratekeeper.limits_storage  # registers the schemes with limits

    limiter = Limiter(get_remote_address, app=app,
                      storage_uri="ratekeeper+shm:///dev/shm/app.rk")

Schemes (importing this module registers them; it needs ``limits``):

- ``ratekeeper+shm:///ABSOLUTE/PATH`` — the shared file every worker maps
  (the Gunicorn hooks of :mod:`ratekeeper.gunicorn` create it; a process
  that opens a missing file creates it, as :meth:`ratekeeper.Engine.shared`
  does). Each process opens its own engine on first use, also after a fork.
- ``ratekeeper://`` — an in-process engine (per storage object, like
  ``memory://``).

Query options: ``capacity=N`` (keys each of the storage's policies tracks;
default the engine's, 65,536). The same options can be passed as keyword
arguments (Flask-Limiter's ``storage_options``).

How ``limits``' calls map onto the engine: the storage keeps its own
policies, named ``limits:<strategy>:...`` and created lazily by whichever
process meets them first (every other process finds them by name in the
shared file):

- fixed window (``incr``/``get``/``get_expiry``): one ``fixed_window
  4294967295/<expiry> seconds`` policy per expiry — a counter that counts
  every hit, also past the caller's limit, as ``limits`` documents; the
  window opens at the first hit of a key, as in ``MemoryStorage``;
- moving window (``acquire_entry``/``get_moving_window``): one
  ``sliding_log <limit>/<expiry> seconds`` policy per (limit, expiry);
- sliding window counter (``acquire_sliding_window_entry``/
  ``get_sliding_window``): one ``sliding_window <limit>/<expiry> seconds``
  policy per (limit, expiry); windows aligned on epoch multiples of the
  expiry, as ``limits`` aligns them.

Every call passes the wall clock (``time.time_ns()``) as the engine's
``now_ns``: expiries are epoch seconds, as ``limits`` documents, and
sliding windows align where ``limits``' own storages align them. The
README (section "Flask-Limiter and slowapi: one-line switch") lists where
the semantics differ from ``limits``' own storages.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple

try:
    from limits.limits import TIME_TYPES
    from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
except ImportError as e:  # pragma: no cover - only without limits
    raise ImportError(
        "ratekeeper.limits_storage needs the `limits` package (pip install 'ratekeeper[limits]')"
    ) from e

from . import errors
from ._core import Engine, Policy, shared_engine

__all__ = ["RatekeeperStorage", "SharedRatekeeperStorage", "FIXED_WINDOW_COUNT_MAX", "MOVING_WINDOW_LIMIT_MAX"]

#: The fixed-window counter's ceiling per window (the engine counts up to
#: 2**32 - 1 per window): ``incr`` returns at most this.
FIXED_WINDOW_COUNT_MAX = 2**32 - 1
#: The largest moving-window limit (the engine's sliding log keeps at most
#: 4,096 timestamps per key).
MOVING_WINDOW_LIMIT_MAX = 4096
#: The largest cost of one hit (``ratekeeper.MAX_COST``).
MAX_AMOUNT = 16_777_215

_PREFIX = "limits:"
_FIXED = _PREFIX + "fixed:"
_MOVING = _PREFIX + "moving:"
_SLIDING = _PREFIX + "sliding:"
_OPTIONS = ("capacity",)
_GRANULARITY_S = {g.name: g.seconds for g in TIME_TYPES.values()}


def _seconds(name: str, value: Any) -> int:
    """``value`` as whole seconds > 0 (``limits`` passes ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if value != int(value) or value < 1:
        raise ValueError(f"{name} must be a whole number of seconds >= 1 (the engine's policies), not {value!r}")
    return int(value)


def _count(name: str, value: Any, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an int in 0..{maximum}, not {value!r}")
    return value


def _parse_item(key: str) -> Optional[Tuple[int, int]]:
    """``(amount, expiry seconds)`` of a key made by
    ``RateLimitItem.key_for`` (``.../<amount>/<multiples>/<granularity>``),
    else None."""
    parts = key.rsplit("/", 3)
    if len(parts) != 4:
        return None
    seconds = _GRANULARITY_S.get(parts[3])
    if seconds is None or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]), int(parts[2]) * seconds


_instances: "weakref.WeakSet[_RatekeeperStorageBase]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for storage in list(_instances):
        storage._forget_engine()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _RatekeeperStorageBase(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """What both schemes share; the subclasses say where the engine is."""

    _scheme: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # limits' Storage/MovingWindowSupport/SlidingWindowCounterSupport wrap
        # every storage method (``wrap_exceptions``) in each subclass they
        # see: this class's methods are wrapped already, and wrapping them
        # again in the two scheme classes would add a call to every hit.
        # (Registration of STORAGE_SCHEME is the metaclass's, unaffected.)
        pass

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        if not isinstance(uri, str):
            raise TypeError(f"storage uri must be a str, not {type(uri).__name__}")
        parsed = urllib.parse.urlsplit(uri)
        if parsed.scheme != self._scheme:
            raise errors.InvalidArgument(
                f"{type(self).__name__} takes {self._scheme}:// URIs, not {uri!r}"
            )
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted((set(query) | set(options)) - set(_OPTIONS))
        if unknown:
            raise errors.InvalidArgument(
                f"{uri!r}: unknown option(s) {', '.join(unknown)} (known: {', '.join(_OPTIONS)})"
            )
        capacity: Any = options.get("capacity")
        if "capacity" in query:
            if capacity is not None or len(query["capacity"]) != 1:
                raise errors.InvalidArgument(f"{uri!r}: capacity given more than once")
            text = query["capacity"][0]
            if not text.isdigit():
                raise errors.InvalidArgument(f"{uri!r}: capacity must be a positive int, not {text!r}")
            capacity = int(text)
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise errors.InvalidArgument(f"capacity must be a positive int, not {capacity!r}")
        self.capacity: Optional[int] = capacity
        self._check_location(uri, parsed)
        self._lock = threading.Lock()
        self._engine_obj: Optional[Engine] = None
        # (kind, amount, expiry) -> Policy; per process (cleared after fork).
        self._policies: Dict[Tuple[str, int, int], Policy] = {}
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        _instances.add(self)

    # -- where the engine lives (subclasses) ---------------------------------

    def _check_location(self, uri: str, parsed: urllib.parse.SplitResult) -> None:
        raise NotImplementedError

    def _open_engine(self) -> Engine:
        raise NotImplementedError

    def _forget_engine(self) -> None:
        """After a fork: this process opens its own engine on next use (and
        gets a fresh lock: another thread of the parent may have held it)."""
        self._lock = threading.Lock()
        self._policies = {}
        self._engine_obj = None

    @property
    def engine(self) -> Engine:
        """This process's engine (opened on first use)."""
        engine = self._engine_obj
        if engine is None:
            with self._lock:
                if self._engine_obj is None:
                    self._engine_obj = self._open_engine()
                engine = self._engine_obj
        return engine

    @property
    def base_exceptions(self) -> Any:
        return errors.RatekeeperError

    # -- policies -----------------------------------------------------------

    @staticmethod
    def _name_spec(kind: str, amount: int, expiry: int) -> Tuple[str, str]:
        if kind == "fixed":
            return f"{_FIXED}{expiry}", f"fixed_window {FIXED_WINDOW_COUNT_MAX}/{expiry} seconds"
        if kind == "moving":
            return f"{_MOVING}{amount}/{expiry}", f"sliding_log {amount}/{expiry} seconds"
        return f"{_SLIDING}{amount}/{expiry}", f"sliding_window {amount}/{expiry} seconds"

    def _policy(self, kind: str, amount: int, expiry: int) -> Policy:
        """The storage's policy, added (or found) on first use."""
        policy = self._policies.get((kind, amount, expiry))
        if policy is None:
            name, spec = self._name_spec(kind, amount, expiry)
            policy = self.engine.policy(name, spec, capacity=self.capacity)
            self._policies[(kind, amount, expiry)] = policy
        return policy

    def _existing(self, kind: str, amount: int, expiry: int) -> Optional[Policy]:
        """The policy if this or another process added it, else None (reads
        never allocate a table)."""
        policy = self._policies.get((kind, amount, expiry))
        if policy is None:
            try:
                policy = self.engine.find_policy(self._name_spec(kind, amount, expiry)[0])
            except errors.UnknownPolicy:
                return None
            self._policies[(kind, amount, expiry)] = policy
        return policy

    def _own_policies(self, prefix: str = _PREFIX) -> Iterator[Policy]:
        """Every policy of this storage in the engine (also those other
        processes added)."""
        return (p for p in self.engine.policies() if p.name.startswith(prefix))

    def _fixed_for(self, key: str) -> List[Policy]:
        """The fixed-window policies that may hold ``key``: the one its
        expiry names, or, for a key not made by ``RateLimitItem.key_for``,
        every fixed-window policy of the storage."""
        item = _parse_item(key)
        if item is not None:
            policy = self._existing("fixed", 0, item[1])
            return [policy] if policy is not None else []
        return list(self._own_policies(_FIXED))

    # -- Storage ------------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Adds ``amount`` to the key's counter (opening a window of
        ``expiry`` seconds if none is open) and returns the new count: every
        hit counts, also past the caller's limit (up to
        :data:`FIXED_WINDOW_COUNT_MAX` per window)."""
        now = time.time_ns()
        policy = self._policies.get(("fixed", 0, expiry)) or self._policy("fixed", 0, _seconds("expiry", expiry))
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:  # noqa: E721 (the fast test)
            _count("amount", amount, MAX_AMOUNT)
        d = policy.check(key, amount, now)
        if not d.allowed:  # the window's count would pass 2**32 - 1
            return FIXED_WINDOW_COUNT_MAX
        return FIXED_WINDOW_COUNT_MAX - d.remaining

    def get(self, key: str) -> int:
        """The key's count in its open window (0 if none is open)."""
        now = time.time_ns()
        return max((FIXED_WINDOW_COUNT_MAX - p.peek(key, 0, now).remaining for p in self._fixed_for(key)), default=0)

    def get_expiry(self, key: str) -> float:
        """When the key's window ends, in epoch seconds (now if no window is
        open, as ``MemoryStorage``)."""
        now = time.time_ns()
        reset = max((p.peek(key, 0, now).reset_after_ns for p in self._fixed_for(key)), default=0)
        return (now + reset) / 1e9

    def check(self) -> bool:
        """Whether the engine answers (for a shared file: it is still intact)."""
        try:
            self.engine.policies()
            return True
        except errors.RatekeeperError:
            return False

    def reset(self) -> Optional[int]:
        """Forgets every key of every policy of this storage (in every process
        of a shared file); returns how many keys held state."""
        return sum(p.reset_all() for p in self._own_policies())

    def clear(self, key: str) -> None:
        """Forgets ``key`` in every policy of this storage (every window
        length and strategy)."""
        for p in self._own_policies():
            p.reset(key)

    # -- MovingWindowSupport -------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Takes ``amount`` entries if at most ``limit - amount`` were taken in
        the last ``expiry`` seconds; a refused request takes none."""
        return self._acquire("moving", MOVING_WINDOW_LIMIT_MAX, key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> Tuple[float, int]:
        """``(time of the oldest entry still in the window, entries in the
        window)``; ``(now, 0)`` if none."""
        now = time.time_ns()
        policy = self._existing("moving", limit, _seconds("expiry", expiry)) if limit else None
        if policy is None:
            return now / 1e9, 0
        remaining = policy.peek(key, 0, now).remaining
        counted = limit - remaining
        if counted == 0:
            return now / 1e9, 0
        # One more than what is left is denied until the oldest counting
        # entry expires: its retry-after is oldest + expiry - now.
        retry = policy.peek(key, remaining + 1, now).retry_after_ns
        return (now + retry - policy.limits[0].period_ns) / 1e9, counted

    # -- SlidingWindowCounterSupport -----------------------------------------

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Takes ``amount`` if ``floor(previous * (expiry - elapsed) / expiry)
        + current + amount <= limit``, windows aligned on epoch multiples of
        ``expiry``; a refused request takes nothing."""
        return self._acquire("sliding", FIXED_WINDOW_COUNT_MAX, key, limit, expiry, amount)

    def _acquire(self, kind: str, most: int, key: str, limit: int, expiry: int, amount: int) -> bool:
        """One hit of ``amount`` on the ``kind`` policy of (``limit`` at most
        ``most``, ``expiry``): the moving and sliding-window acquires."""
        now = time.time_ns()
        policy = self._policies.get((kind, limit, expiry))
        if policy is None:
            _count("limit", limit, most)
            if limit == 0:
                return False
            policy = self._policy(kind, limit, _seconds("expiry", expiry))
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:  # noqa: E721 (the fast test)
            _count("amount", amount, MAX_AMOUNT)
        if amount > limit:
            return False
        return policy.check(key, amount, now).allowed

    def _sliding_for(self, key: str, expiry: int) -> List[Policy]:
        item = _parse_item(key)
        if item is not None and item[1] == expiry:
            policy = self._existing("sliding", item[0], expiry)
            return [policy] if policy is not None else []
        suffix = f"/{expiry}"
        return [p for p in self._own_policies(_SLIDING) if p.name.endswith(suffix)]

    def get_sliding_window(self, key: str, expiry: int) -> Tuple[int, float, int, float]:
        """``(previous count, previous TTL, current count, current TTL)``, as
        ``limits``' storages return them (TTLs in seconds: the previous
        window's weight runs out at the end of the current window, the
        current window's one window later)."""
        now = time.time_ns()
        expiry = _seconds("expiry", expiry)
        period = expiry * 1_000_000_000
        start = now - now % period
        elapsed_ttl = (period - (now - start)) / 1e9
        previous = current = 0
        for policy in self._sliding_for(key, expiry):
            p, c = _window_counts(policy, key, start, period)
            if p or c:
                previous, current = p, c
                break
        return previous, (elapsed_ttl if previous else 0.0), current, elapsed_ttl + expiry

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        """Forgets ``key`` in the sliding-window policies of ``expiry``."""
        expiry = _seconds("expiry", expiry)
        suffix = f"/{expiry}"
        for p in self._own_policies(_SLIDING):
            if p.name.endswith(suffix):
                p.reset(key)


def _window_counts(policy: Policy, key: str, start: int, period: int) -> Tuple[int, int]:
    """``(previous, current)`` counts of ``key`` in the window starting at
    ``start`` (ns), read with peeks of cost 0 at explicit times (the engine
    exposes the weighted sum ``floor(prev * (P - e) / P) + cur`` only):

    - at the window's last nanosecond the weighted sum is ``cur`` exactly
      (``floor(prev / P_ns)`` is 0: ``prev`` is below the period in ns for
      every limit under 10**9 per second);
    - at its first nanosecond it is ``prev + cur`` when that is at most the
      limit; otherwise the peek is denied and its retry-after ``e`` (the
      elapsed time from which ``floor(prev * (P - e) / P) <= limit - cur``)
      gives ``prev`` as ``N // (P - e)``, ``N = (limit - cur + 1) * P - 1``:
      exact while ``prev * (prev + 1) <= N`` (limits up to about 31,000 per
      second window, 245,000 per minute), otherwise within one.
    """
    limit = policy.limits[0].count
    current = limit - policy.peek(key, 0, start + period - 1).remaining
    d = policy.peek(key, 0, start)
    if d.allowed:
        return limit - d.remaining - current, current
    bound = period - d.retry_after_ns  # = floor(N / prev)
    if bound <= 0:
        return limit, current
    return ((limit - current + 1) * period - 1) // bound, current


class RatekeeperStorage(_RatekeeperStorageBase):
    """``ratekeeper://``: an in-process engine (one per storage object)."""

    STORAGE_SCHEME = ["ratekeeper"]
    _scheme = "ratekeeper"

    def _check_location(self, uri: str, parsed: urllib.parse.SplitResult) -> None:
        if parsed.netloc or parsed.path or parsed.fragment:
            raise errors.InvalidArgument(
                f"{uri!r}: ratekeeper:// is the in-process engine and takes no host or path "
                "(for a shared file: ratekeeper+shm:///dev/shm/app.rk)"
            )
        self._local = Engine(capacity=self.capacity)

    def _open_engine(self) -> Engine:
        return self._local

    def _forget_engine(self) -> None:
        # In process: the child keeps its copy of the tables (per-process
        # limits are what ratekeeper:// means); only policy objects are dropped.
        self._policies = {}


class SharedRatekeeperStorage(_RatekeeperStorageBase):
    """``ratekeeper+shm:///ABSOLUTE/PATH``: the shared file of every worker
    process (this process's :func:`ratekeeper.shared_engine` on it)."""

    STORAGE_SCHEME = ["ratekeeper+shm"]
    _scheme = "ratekeeper+shm"

    def _check_location(self, uri: str, parsed: urllib.parse.SplitResult) -> None:
        if parsed.netloc:
            raise errors.InvalidArgument(
                f"{uri!r}: ratekeeper+shm:// takes an absolute path and no host "
                f"(three slashes: ratekeeper+shm:///dev/shm/app.rk), found host {parsed.netloc!r}"
            )
        path = urllib.parse.unquote(parsed.path)
        if not path or path == "/":
            raise errors.InvalidArgument(
                f"{uri!r}: ratekeeper+shm:// needs the shared file's path (ratekeeper+shm:///dev/shm/app.rk)"
            )
        if not path.startswith("/"):
            raise errors.InvalidArgument(f"{uri!r}: the shared file's path must be absolute")
        if path.endswith("/"):
            raise errors.InvalidArgument(f"{uri!r}: the shared file's path names a directory")
        if parsed.fragment:
            raise errors.InvalidArgument(f"{uri!r}: unexpected fragment #{parsed.fragment}")
        self.path = path

    def _open_engine(self) -> Engine:
        return shared_engine(self.path, capacity=self.capacity)
