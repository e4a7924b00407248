"""ratekeeper.limits_storage against what `limits` documents for its
storages, with time driven explicitly (a fake wall clock: the storages read
``time.time()`` / ``time.time_ns()``, which the ``clock`` fixture replaces).

The reference below is written from limits' documentation (the docstrings of
``limits.storage.Storage``, ``MovingWindowSupport`` and
``SlidingWindowCounterSupport``, and the strategy pages): each scenario runs
against ``ratekeeper://``, ``ratekeeper+shm://`` and limits' own
``MemoryStorage``, so the same assertions show where they agree. Where they
differ (documented in the README), the test says so by name."""

from __future__ import annotations

import os
import uuid

import pytest

limits = pytest.importorskip("limits")

import limits.errors  # noqa: E402
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond, parse  # noqa: E402
from limits.storage import MemoryStorage, storage_from_string  # noqa: E402
from limits.strategies import (  # noqa: E402
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)

import ratekeeper  # noqa: E402
import ratekeeper.limits_storage as ls  # noqa: E402

T0 = 1_700_002_800  # a multiple of 10, 60 and 3600: window-aligned


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = float(t)

    def time(self) -> float:
        return self.t

    def time_ns(self) -> int:
        return int(round(self.t * 1e9))

    def set(self, t: float) -> None:
        self.t = float(t)


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock(T0)
    monkeypatch.setattr(ls.time, "time", c.time)
    monkeypatch.setattr(ls.time, "time_ns", c.time_ns)
    return c


@pytest.fixture
def shm_path(tmp_path):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    # A new name per test: ratekeeper.shared_engine keeps one engine per
    # (path, pid), which would still map an earlier test's removed file.
    path = os.path.join(base, f"rk-limits-test-{os.getpid()}-{uuid.uuid4().hex}.rk")
    yield path
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture(params=["memory", "ratekeeper", "ratekeeper+shm"])
def storage(request, clock, shm_path):
    """Each storage under test; MemoryStorage is limits' own, the reference."""
    if request.param == "memory":
        s = MemoryStorage()
        yield s
        s.timer.cancel()
        return
    uri = "ratekeeper://" if request.param == "ratekeeper" else f"ratekeeper+shm://{shm_path}"
    s = storage_from_string(uri)
    yield s
    s.reset()


# ---------------------------------------------------------------- registration and URIs


def test_both_schemes_are_registered_with_limits(shm_path):
    assert isinstance(storage_from_string("ratekeeper://"), ls.RatekeeperStorage)
    s = storage_from_string(f"ratekeeper+shm://{shm_path}?capacity=1000")
    assert isinstance(s, ls.SharedRatekeeperStorage)
    assert (s.path, s.capacity) == (shm_path, 1000)
    assert s.check() is True
    assert s.engine.path == shm_path


@pytest.mark.parametrize(
    "uri, message",
    [
        ("ratekeeper+shm://", "needs the shared file's path"),
        ("ratekeeper+shm:///", "needs the shared file's path"),
        ("ratekeeper+shm://dev/shm/app.rk", "three slashes"),
        ("ratekeeper+shm:///dev/shm/", "names a directory"),
        ("ratekeeper+shm:///dev/shm/app.rk?capacity=many", "capacity must be a positive int"),
        ("ratekeeper+shm:///dev/shm/app.rk?capacity=0", "capacity must be a positive int"),
        ("ratekeeper+shm:///dev/shm/app.rk?capcity=10", "unknown option(s) capcity"),
        ("ratekeeper://localhost", "takes no host or path"),
        ("ratekeeper:///dev/shm/app.rk", "takes no host or path"),
    ],
)
def test_a_bad_uri_is_a_clear_error(uri, message):
    with pytest.raises(ratekeeper.InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        storage_from_string(uri)


def test_a_class_given_another_scheme_refuses_it():
    with pytest.raises(ratekeeper.InvalidArgument, match="takes ratekeeper\\+shm:// URIs, not 'memory://'"):
        ls.SharedRatekeeperStorage("memory://")
    with pytest.raises(ratekeeper.InvalidArgument, match="takes ratekeeper:// URIs"):
        ls.RatekeeperStorage("ratekeeper+shm:///dev/shm/x.rk")


def test_options_come_from_the_uri_or_keywords_never_both(shm_path):
    assert storage_from_string("ratekeeper://", capacity=64).capacity == 64
    with pytest.raises(ratekeeper.InvalidArgument, match="capacity given more than once"):
        storage_from_string(f"ratekeeper+shm://{shm_path}?capacity=10", capacity=10)
    with pytest.raises(ratekeeper.InvalidArgument, match="unknown option"):
        storage_from_string("ratekeeper://", key_prefix="x")


def test_a_path_that_cannot_be_a_shared_file_fails_on_first_use_with_the_engines_error(tmp_path):
    s = storage_from_string(f"ratekeeper+shm://{tmp_path}/missing-dir/app.rk")
    with pytest.raises(ratekeeper.IOFailure):
        s.incr("k", 10)
    assert s.check() is False


def test_wrap_exceptions_turns_the_engines_errors_into_storage_errors(tmp_path):
    s = storage_from_string(f"ratekeeper+shm://{tmp_path}/missing-dir/app.rk", wrap_exceptions=True)
    with pytest.raises(limits.errors.StorageError, match="missing-dir"):
        s.incr("k", 10)
    assert ls.SharedRatekeeperStorage.incr is ls.RatekeeperStorage.incr  # wrapped once, not per subclass


def test_windows_must_be_whole_seconds_and_moving_limits_fit_the_log(clock):
    s = storage_from_string("ratekeeper://")
    with pytest.raises(ValueError, match="whole number of seconds"):
        s.incr("k", 1.5)
    with pytest.raises(ValueError, match="whole number of seconds"):
        s.acquire_entry("k", 5, 0)
    with pytest.raises(ValueError, match=r"limit must be an int in 0..4096"):
        s.acquire_entry("k", 5000, 60)
    with pytest.raises(ValueError, match="amount must be an int"):
        s.incr("k", 10, -1)


# ---------------------------------------------------------------- Storage (fixed window)
#
# limits' docs: incr "increments the counter for a given rate limit key" and
# returns it; expiry "amount in seconds for the key to expire in" (set when
# the counter is created); get "the counter value"; get_expiry the key's
# expiry as a timestamp (epoch seconds); clear "resets the rate limit key";
# reset "reset storage to clear limits"; check "if storage is healthy".


def test_incr_returns_the_running_count_and_counts_past_any_limit(storage, clock):
    assert [storage.incr("k", 10) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert storage.incr("k", 10, amount=3) == 8
    assert storage.get("k") == 8
    assert storage.get("other") == 0


def test_the_expiry_is_set_by_the_first_incr_in_epoch_seconds(storage, clock):
    assert storage.get_expiry("k") == T0  # no counter: now
    storage.incr("k", 10)
    clock.set(T0 + 3)
    storage.incr("k", 10)
    assert storage.get_expiry("k") == pytest.approx(T0 + 10)
    clock.set(T0 + 9.5)
    assert storage.get("k") == 2


def test_a_counter_expires_and_the_next_incr_starts_a_new_window(storage, clock):
    storage.incr("k", 10)
    storage.incr("k", 10)
    clock.set(T0 + 10)
    assert storage.get("k") == 0
    assert storage.get_expiry("k") == pytest.approx(T0 + 10)  # now: no counter
    clock.set(T0 + 12)
    assert storage.incr("k", 10) == 1
    assert storage.get_expiry("k") == pytest.approx(T0 + 22)


def test_counters_of_different_expiries_are_different_keys(storage, clock):
    a = RateLimitItemPerSecond(5, 10).key_for("client")
    b = RateLimitItemPerMinute(5).key_for("client")
    assert storage.incr(a, 10) == 1
    assert storage.incr(b, 60) == 1
    assert storage.incr(b, 60) == 2
    assert (storage.get(a), storage.get(b)) == (1, 2)
    assert storage.get_expiry(b) == pytest.approx(T0 + 60)


def test_clear_forgets_one_key(storage, clock):
    storage.incr("k", 10)
    storage.incr("j", 10)
    assert storage.acquire_entry("k", 3, 10)
    storage.clear("k")
    assert storage.get("k") == 0
    assert storage.get_moving_window("k", 3, 10) == (T0, 0)
    assert storage.get("j") == 1


def test_reset_forgets_every_key_and_says_how_many(storage, clock):
    storage.incr("a", 10)
    storage.incr("b", 10)
    storage.incr("b", 10)
    assert storage.reset() == 2
    assert storage.get("a") == storage.get("b") == 0


def test_check_reports_a_healthy_storage(storage):
    assert storage.check() is True


def test_fixed_window_strategy_allows_exactly_the_amount(storage, clock):
    limiter = FixedWindowRateLimiter(storage)
    item = parse("10/minute")
    assert [limiter.hit(item, "c") for _ in range(12)] == [True] * 10 + [False] * 2
    assert limiter.test(item, "c") is False
    stats = limiter.get_window_stats(item, "c")
    assert (stats.reset_time, stats.remaining) == (pytest.approx(T0 + 60), 0)
    assert storage.get(item.key_for("c")) == 12  # refused hits count too
    clock.set(T0 + 60)
    assert limiter.hit(item, "c") is True
    limiter.clear(item, "c")
    assert limiter.get_window_stats(item, "c").remaining == 10


# ---------------------------------------------------------------- MovingWindowSupport
#
# limits' docs: acquire_entry takes `amount` entries if the window has room
# for them, returns whether it did; get_moving_window returns "(start of
# window, number of acquired entries)": the time of the oldest entry still
# in the window (now if none) and how many there are.


def test_acquire_entry_admits_exactly_limit_in_the_window_and_a_refusal_takes_nothing(storage, clock):
    got = []
    for i in range(5):
        clock.set(T0 + i)
        got.append(storage.acquire_entry("k", 3, 10))
    assert got == [True, True, True, False, False]
    assert storage.get_moving_window("k", 3, 10) == (pytest.approx(T0), 3)
    clock.set(T0 + 10.5)  # the entry of T0 left the window; T0+1 and T0+2 remain
    assert storage.get_moving_window("k", 3, 10) == (pytest.approx(T0 + 1), 2)
    assert storage.acquire_entry("k", 3, 10) is True
    assert storage.acquire_entry("k", 3, 10) is False


def test_acquire_entry_with_an_amount(storage, clock):
    assert storage.acquire_entry("k", 5, 10, amount=3) is True
    assert storage.acquire_entry("k", 5, 10, amount=3) is False
    assert storage.acquire_entry("k", 5, 10, amount=2) is True
    assert storage.get_moving_window("k", 5, 10)[1] == 5
    assert storage.acquire_entry("j", 5, 10, amount=6) is False  # more than the limit: never
    assert storage.get_moving_window("j", 5, 10) == (T0, 0)


def test_moving_window_strategy_stats(storage, clock):
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/10 seconds")
    for i in range(4):
        clock.set(T0 + 2 * i)
        limiter.hit(item, "c")
    stats = limiter.get_window_stats(item, "c")
    assert (stats.reset_time, stats.remaining) == (pytest.approx(T0 + 10), 0)
    assert limiter.test(item, "c") is False
    clock.set(T0 + 10.5)
    assert limiter.test(item, "c") is True
    assert limiter.get_window_stats(item, "c").remaining == 1


# ---------------------------------------------------------------- SlidingWindowCounterSupport
#
# limits' docs: acquire_sliding_window_entry acquires "if the weighted count
# of the current and previous windows is less than or equal to the limit";
# get_sliding_window returns (previous count, previous TTL, current count,
# current TTL); clear_sliding_window resets the key's windows. Windows are
# aligned on multiples of the expiry (limits' TimestampedSlidingWindow).


def test_sliding_window_weighs_the_previous_window_by_what_is_left_of_it(storage, clock):
    clock.set(T0 + 1)
    assert [storage.acquire_sliding_window_entry("k", 10, 10) for _ in range(6)] == [True] * 6
    clock.set(T0 + 5)
    assert storage.get_sliding_window("k", 10) == (0, 0.0, 6, pytest.approx(15.0))
    clock.set(T0 + 12)  # next window, 2 s in: 6 * 0.8 = 4.8 of the previous count
    assert storage.get_sliding_window("k", 10) == (6, pytest.approx(8.0), 0, pytest.approx(18.0))
    got = [storage.acquire_sliding_window_entry("k", 10, 10) for _ in range(7)]
    assert got == [True] * 6 + [False]  # floor(4.8 + 6) + 1 > 10
    # prev + cur (12) is over the limit: the read path that recovers prev
    assert storage.get_sliding_window("k", 10) == (6, pytest.approx(8.0), 6, pytest.approx(18.0))
    clock.set(T0 + 25)  # two windows on: the window of T0 is gone
    assert storage.get_sliding_window("k", 10) == (6, pytest.approx(5.0), 0, pytest.approx(15.0))
    clock.set(T0 + 30)
    assert storage.get_sliding_window("k", 10) == (0, 0.0, 0, pytest.approx(20.0))


def test_sliding_window_counts_of_a_full_previous_window_are_exact(storage, clock):
    item = parse("1000/minute")
    key = item.key_for("c")
    clock.set(T0 + 1)
    assert storage.acquire_sliding_window_entry(key, 1000, 60, amount=997) is True
    clock.set(T0 + 61)
    assert storage.acquire_sliding_window_entry(key, 1000, 60, amount=16) is True  # floor(997 * 59/60) = 980
    assert storage.acquire_sliding_window_entry(key, 1000, 60, amount=5) is False
    assert storage.get_sliding_window(key, 60)[0::2] == (997, 16)


def test_sliding_window_amounts_and_clear(storage, clock):
    assert storage.acquire_sliding_window_entry("k", 5, 10, amount=6) is False
    assert storage.acquire_sliding_window_entry("k", 5, 10, amount=5) is True
    assert storage.acquire_sliding_window_entry("k", 5, 10) is False
    storage.clear_sliding_window("k", 10)
    assert storage.get_sliding_window("k", 10)[0::2] == (0, 0)
    assert storage.acquire_sliding_window_entry("k", 5, 10, amount=5) is True


def test_sliding_window_counter_strategy(storage, clock):
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("10/10 seconds")
    clock.set(T0 + 1)
    assert [limiter.hit(item, "c") for _ in range(11)] == [True] * 10 + [False]
    assert limiter.get_window_stats(item, "c").remaining == 0
    clock.set(T0 + 15)  # half of the previous window's 10 still weighs
    assert limiter.get_window_stats(item, "c").remaining == 5
    assert [limiter.hit(item, "c") for _ in range(6)] == [True] * 5 + [False]
    limiter.clear(item, "c")
    assert limiter.get_window_stats(item, "c").remaining == 10


# ---------------------------------------------------------------- where ratekeeper differs (README)


def test_a_moving_window_entry_leaves_exactly_expiry_seconds_later(clock):
    """limits' MemoryStorage counts an entry at exactly ``t + expiry`` when
    acquiring but not in get_moving_window; ratekeeper never counts it."""
    s = storage_from_string("ratekeeper://")
    assert s.acquire_entry("k", 1, 10)
    clock.set(T0 + 10)
    assert s.get_moving_window("k", 1, 10) == (T0 + 10, 0)
    assert s.acquire_entry("k", 1, 10) is True


def test_the_shared_storage_is_one_storage_for_every_engine_on_the_file(clock, shm_path):
    """Two processes (here: a storage and a second Engine on the same file)
    see one counter: the storage's policies live in the file."""
    s = storage_from_string(f"ratekeeper+shm://{shm_path}")
    assert s.incr("k", 60) == 1
    pid = os.fork()
    if pid == 0:  # child: the same URI opens this process's own engine
        code = 1
        try:
            child = storage_from_string(f"ratekeeper+shm://{shm_path}")
            code = 0 if [child.incr("k", 60) for _ in range(3)] == [2, 3, 4] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.get("k") == 4
    with ratekeeper.Engine.shared(shm_path) as e:
        assert e.find_policy("limits:fixed:60").stats().allowed == 4


def test_after_fork_a_storage_opens_its_own_engine(clock, shm_path):
    s = storage_from_string(f"ratekeeper+shm://{shm_path}")
    s.incr("k", 60)
    parent_engine = s.engine
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            ok = s.engine is not parent_engine and s.engine.pid == os.getpid() and s.incr("k", 60) == 2
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert s.engine is parent_engine
    assert s.get("k") == 2
