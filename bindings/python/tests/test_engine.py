"""Engine / Policy / Decision / Permit API, with explicit times (no sleeps
except where waiting is the point)."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import threading
import time

import pytest

import ratekeeper
from ratekeeper import (
    Decision,
    Engine,
    EngineClosed,
    InvalidArgument,
    ParseError,
    PolicyMismatch,
    RatekeeperError,
    Throttled,
    UnknownPolicy,
    WrongPolicyKind,
)
from ratekeeper.errors import STATUS_CLASSES, error_for_status

S = 1_000_000_000
T0 = 1_000 * S  # an arbitrary explicit "now"


@pytest.fixture
def engine():
    with Engine(capacity=1024) as e:
        yield e


# ------------------------------------------------------------------ module


def test_library_version_equals_package_version():
    assert ratekeeper.library_version() == ratekeeper.__version__


def test_now_ns_is_monotonic_nanoseconds():
    a = ratekeeper.now_ns()
    b = ratekeeper.now_ns()
    assert isinstance(a, int) and 0 < a <= b
    assert abs(a - time.monotonic_ns()) < 5 * S  # same clock as Python's monotonic


def test_engine_now_ns_is_the_clock_a_check_without_now_ns_reads():
    """A check at engine.now_ns() and its refund at the same time leave the
    key as a plain check would (the deduct_when pattern): coarse by
    default, precise with clock="monotonic"."""
    for clock, tick in (("coarse", 20_000_000), ("monotonic", 0)):
        e = Engine(clock=clock)
        before = ratekeeper.now_ns()
        t = e.now_ns()
        after = ratekeeper.now_ns()
        assert before - tick <= t <= after, clock
        p = e.policy("w", "fixed_window 2/hour")
        assert p.check("k", 1, t).allowed and p.check("k").remaining == 0
        assert p.refund("k", 1, t)
        assert p.check("k").allowed and not p.check("k").allowed


def test_check_many_is_the_librarys_batch_every_denied_penalty_box_item_is_struck():
    """check_many is one rk_check_many call: a denied batch strikes every
    item its own limits deny (not only the binding one), on every code path
    (C fast path, cffi)."""
    engine = ratekeeper.Engine()
    box = ratekeeper.Penalty(strikes=1, window=600.0, ban=60.0, max_ban=60.0)
    a = engine.policy("struck-a", "1/minute", penalty=box)
    b = engine.policy("struck-b", "1/hour", penalty=box)
    items = [(a, "k"), (b, "k")]
    assert engine.check_many(items, now_ns=T0)[0].allowed
    d, i = engine.check_many(items, now_ns=T0)
    assert not d.allowed and d.banned
    assert (a.stats().bans, b.stats().bans) == (1, 1)
    assert a.peek("k", now_ns=T0).banned and b.peek("k", now_ns=T0).banned
    engine.close()


def test_decision_is_the_compiled_type():
    from ratekeeper import _ratekeeper

    assert isinstance(ratekeeper.Decision(True, 1, 0, 0, 0), _ratekeeper.Decision)


# ------------------------------------------------------------------ engine and policies


def test_engine_options_are_validated():
    with pytest.raises(InvalidArgument, match="clock"):
        Engine(clock="sundial")
    with pytest.raises(InvalidArgument, match="capacity"):
        Engine(capacity=0)
    with Engine(capacity=16, clock="monotonic") as e:
        assert e.policy("p", "1/second").stats().capacity >= 16


def test_policy_exposes_name_canonical_spec_and_limits(engine):
    p = engine.policy("login", "5 per minute, 20/hour")
    assert p.name == "login"
    assert p.spec == "5/minute; 20/hour"
    assert p.id == 0
    assert [(lim.algorithm, lim.count, lim.period_ns, lim.burst) for lim in p.limits] == [
        ("gcra", 5, 60 * S, 5),
        ("gcra", 20, 3600 * S, 20),
    ]
    assert p.limits[0].period == 60.0 and p.limits[0].quota == 5
    assert not p.is_concurrency
    assert "login" in repr(p)


def test_every_documented_spec_form_parses(engine):
    forms = {
        "10/second": "gcra",
        "100/5 minutes": "gcra",
        "gcra 10/second burst 20; fixed_window 1000/hour": "gcra",
        "sliding_log 3/10 seconds": "sliding_log",
        "sliding_window 100/minute": "sliding_window",
        "fixed-window 10/second": "fixed_window",
        "concurrency 4": "concurrency",
    }
    for i, (spec, algorithm) in enumerate(forms.items()):
        assert engine.policy(f"p{i}", spec).limits[0].algorithm == algorithm
    assert engine.policy("burst", "gcra 10/second burst 20").limits[0].burst == 20


def test_adding_a_policy_again_returns_the_same_policy(engine):
    a = engine.policy("login", "5/minute")
    b = engine.policy("login", "5 per minute")
    assert a is b
    assert engine.find_policy("login") is a


def test_redefining_a_policy_raises_policy_mismatch_naming_both_specs(engine):
    engine.policy("login", "5/minute")
    with pytest.raises(PolicyMismatch) as info:
        engine.policy("login", "6/minute")
    e = info.value
    assert e.status == 6 and e.status_name == "RK_ERR_POLICY_MISMATCH"
    assert "5/minute" in str(e) and "6/minute" in str(e)
    assert isinstance(e, RatekeeperError)


def test_a_bad_spec_raises_parse_error_with_the_position(engine):
    with pytest.raises(ParseError, match=r"at byte 3: expected a time unit.*fortnight") as info:
        engine.policy("x", "10/fortnight")
    assert info.value.status == 4
    assert isinstance(info.value, ValueError)


def test_bad_policy_arguments(engine):
    with pytest.raises(InvalidArgument, match="when_full"):
        engine.policy("x", "1/second", when_full="panic")
    with pytest.raises(InvalidArgument):
        engine.policy("", "1/second")
    with pytest.raises(InvalidArgument):
        engine.policy("n" * 200, "1/second")


def test_unknown_policy(engine):
    with pytest.raises(UnknownPolicy, match="nope"):
        engine.find_policy("nope")


def test_policies_lists_every_policy_in_order(engine):
    names = ["a", "b", "c"]
    for n in names:
        engine.policy(n, "1/second")
    assert [p.name for p in engine.policies()] == names
    assert [p.id for p in engine.policies()] == [0, 1, 2]


# ------------------------------------------------------------------ check, peek, refund, reset


def test_gcra_check_with_explicit_time_matches_the_formulas(engine):
    p = engine.policy("login", "5/minute")
    for i in range(5):
        d = p.check("ip:1", now_ns=T0)
        assert d.allowed and d.limit == 5 and d.remaining == 4 - i
        assert d.retry_after_ns == 0 and d.retry_after == 0.0
        assert d.reset_after_ns == (i + 1) * 12 * S
    d = p.check("ip:1", now_ns=T0)
    assert not d.allowed
    assert d.remaining == 0
    assert d.retry_after_ns == 12 * S and d.retry_after == 12.0
    assert d.reset_after_ns == 60 * S and d.reset_after == 60.0
    assert d.limit_index == 0
    # one emission interval later, exactly one more
    assert p.check("ip:1", now_ns=T0 + 12 * S).allowed
    assert not p.check("ip:1", now_ns=T0 + 12 * S).allowed


def test_binding_limit_index_and_denial_consumes_nothing(engine):
    p = engine.policy("two", "fixed_window 3/second; fixed_window 4/minute")
    for _ in range(3):
        assert p.check("k", now_ns=T0).allowed
    d = p.check("k", now_ns=T0)
    assert not d.allowed and d.limit_index == 0 and d.limit == 3
    d = p.check("k", now_ns=T0 + S)  # new 1-s window: minute limit has 1 left
    assert d.allowed and d.limit_index == 1 and d.remaining == 0
    d = p.check("k", now_ns=T0 + S)
    assert not d.allowed and d.limit_index == 1


def test_str_and_bytes_keys_are_the_same_key(engine):
    p = engine.policy("p", "2/minute")
    assert p.check("ключ", now_ns=T0).remaining == 1
    assert p.check("ключ".encode("utf-8"), now_ns=T0).remaining == 0
    assert not p.check(bytearray("ключ", "utf-8"), now_ns=T0).allowed
    assert not p.check(memoryview("ключ".encode()), now_ns=T0).allowed
    assert p.check(b"", now_ns=T0).allowed  # the empty key is a key
    with pytest.raises(TypeError, match="key must be str or bytes"):
        p.check(42)
    with pytest.raises(TypeError):
        p.check(None)


def test_check_arguments_by_keyword_and_position(engine):
    p = engine.policy("p", "10/minute")
    assert p.check(key="a", cost=2, now_ns=T0).remaining == 8
    assert p.check("a", 3, T0).remaining == 5
    with pytest.raises(TypeError, match="unexpected keyword"):
        p.check("a", weight=1)
    with pytest.raises(TypeError, match="multiple values"):
        p.check("a", key="b")
    with pytest.raises(TypeError, match=r"missing .*argument.*'key'"):
        p.check()
    with pytest.raises(TypeError, match="positional argument"):
        p.check("a", 1, T0, 4)


def test_costs(engine):
    p = engine.policy("p", "10/minute")
    d = p.check("a", cost=0, now_ns=T0)
    assert d.allowed and d.remaining == 10
    assert p.check("a", cost=10, now_ns=T0).remaining == 0
    never = p.check("b", cost=11, now_ns=T0)
    assert not never.allowed
    assert never.retry_after_ns == ratekeeper.U64_MAX and never.retry_after == math.inf
    with pytest.raises(ValueError, match="cost"):
        p.check("a", cost=-1)
    with pytest.raises(ValueError, match="cost"):
        p.check("a", cost=2**32)
    with pytest.raises(TypeError, match="cost"):
        p.check("a", cost=1.5)
    with pytest.raises(TypeError, match="cost"):
        p.check("a", cost=True)
    with pytest.raises(ValueError, match="now_ns"):
        p.check("a", now_ns=-1)
    with pytest.raises(TypeError, match="now_ns"):
        p.check("a", now_ns=1.0)


def test_check_without_now_uses_the_engine_clock(engine):
    p = engine.policy("p", "2/hour")
    assert p.check("a").allowed and p.check("a").allowed
    d = p.check("a")
    assert not d.allowed and 1700 < d.retry_after <= 1800


def test_peek_charges_nothing(engine):
    p = engine.policy("p", "2/minute")
    for _ in range(5):
        d = p.peek("a", now_ns=T0)
        assert d.allowed and d.remaining == 1
    p.check("a", cost=2, now_ns=T0)
    d = p.peek("a", now_ns=T0)
    assert not d.allowed and d.retry_after_ns == 30 * S
    assert p.stats().allowed == 1 and p.stats().denied == 0


def test_refund_gives_back_a_charge(engine):
    p = engine.policy("p", "2/minute")
    assert p.refund("nobody", now_ns=T0) is False
    p.check("a", cost=2, now_ns=T0)
    assert not p.check("a", now_ns=T0).allowed
    assert p.refund("a", now_ns=T0) is True
    assert p.check("a", now_ns=T0).allowed
    assert p.refund("a", cost=5, now_ns=T0) is True  # never beyond full quota
    assert p.peek("a", now_ns=T0).remaining == 1


def test_reset_restores_the_full_quota(engine):
    p = engine.policy("p", "2/minute")
    assert p.reset("a") is False
    p.check("a", cost=2)
    assert not p.check("a").allowed
    assert p.reset("a") is True
    assert p.check("a").remaining == 1


def test_when_full_fail_closed_denies_new_keys_and_counts_it(engine):
    p = engine.policy("small", "5/minute", capacity=8, when_full="fail_closed")
    cap = p.stats().capacity
    assert cap >= 8
    allowed = sum(p.check(f"k{i}", now_ns=T0).allowed for i in range(cap * 4))
    st = p.stats()
    assert allowed < cap * 4 and st.table_full > 0 and st.occupancy <= cap
    assert p.when_full == "fail_closed" and p.capacity == 8


def test_when_full_evict_keeps_admitting(engine):
    p = engine.policy("small", "5/minute", capacity=8)
    assert all(p.check(f"k{i}", now_ns=T0).allowed for i in range(100))
    assert p.stats().evictions > 0


def test_stats_count_allowed_and_denied(engine):
    p = engine.policy("p", "3/minute")
    for _ in range(5):
        p.check("a", now_ns=T0)
    st = p.stats()
    assert (st.allowed, st.denied, st.occupancy) == (3, 2, 1)
    assert st.capacity >= 1024 and st.evictions == 0 and st.table_full == 0
    with pytest.raises(Exception):
        st.allowed = 7  # frozen


# ------------------------------------------------------------------ Decision


def test_decision_is_an_immutable_hashable_value():
    d = Decision(False, 10, 0, 1_500_000_000, 6_000_000_000, 1)
    assert (d.allowed, d.limit, d.remaining, d.retry_after_ns, d.reset_after_ns, d.limit_index) == (
        False, 10, 0, 1_500_000_000, 6_000_000_000, 1,
    )
    assert d.retry_after == 1.5 and d.reset_after == 6.0
    assert d == Decision(False, 10, 0, 1_500_000_000, 6_000_000_000, 1)
    assert d != Decision(True, 10, 0, 1_500_000_000, 6_000_000_000, 1)
    assert hash(d) == hash(Decision(False, 10, 0, 1_500_000_000, 6_000_000_000, 1))
    assert pickle.loads(pickle.dumps(d)) == d
    with pytest.raises(AttributeError):
        d.allowed = True
    with pytest.raises(AttributeError):
        d.extra = 1
    assert "allowed=False" in repr(d) and "retry_after_ns=1500000000" in repr(d)
    assert d.to_dict()["retry_after"] == 1.5
    assert d.banned is False and d.shadow_denied is False
    flagged = Decision(False, 10, 0, 1, 2, 0, banned=True)
    assert flagged.banned and flagged != Decision(False, 10, 0, 1, 2, 0)
    assert Decision(False, 1, 0, ratekeeper.U64_MAX, 0).retry_after == math.inf
    # at_ns, the time a decision was made at, is part of its value.
    assert d.at_ns == 0 and "at_ns" not in repr(d)
    timed = Decision(True, 10, 9, 0, 1, at_ns=123)
    assert timed.at_ns == 123 and "at_ns=123" in repr(timed) and timed.to_dict()["at_ns"] == 123
    assert timed != Decision(True, 10, 9, 0, 1) and pickle.loads(pickle.dumps(timed)) == timed


def test_a_decision_is_made_at_the_calls_time_or_the_engines_clock(engine):
    p = engine.policy("at", "10/second")
    assert p.check("k", now_ns=5 * 10**9).at_ns == 5 * 10**9
    assert p.peek("k", now_ns=6 * 10**9).at_ns == 6 * 10**9
    before = engine.now_ns()
    d = p.check("k")
    assert before <= d.at_ns <= engine.now_ns()
    assert engine.check_many([(p, "k", 1), (p, "j", 1)], 7 * 10**9)[0].at_ns == 7 * 10**9


# ------------------------------------------------------------------ concurrency permits


def test_acquire_and_release_permits(engine):
    c = engine.policy("reports", "concurrency 2")
    assert c.is_concurrency
    a = c.acquire("k")
    with c.acquire("k") as b:
        assert not b.released and b.decision.allowed
        assert not c.peek("k").allowed
        with pytest.raises(Throttled) as info:
            c.acquire("k")
        assert isinstance(info.value, RatekeeperError)
        assert info.value.decision is not None and not info.value.decision.allowed
        assert 0 < info.value.retry_after <= 60
    assert b.released
    assert a.release() is True
    assert a.release() is False  # twice: nothing
    assert c.peek("k").remaining == 1  # a concurrency peek: after taking one


def test_a_second_release_returns_false_and_leaves_another_holders_permit_held(engine):
    c = engine.policy("slot", "concurrency 1")
    first = c.acquire("k")
    assert first.release() is True
    # The same lease position now belongs to a second holder.
    second = c.acquire("k")
    assert first.release() is False
    # A copy of the released permit (same C value) frees nothing either.
    stale = ratekeeper.Permit(c, ffi_copy(first), first.decision)
    assert stale.release() is False
    assert not c.peek("k").allowed  # still held by the second holder
    with pytest.raises(Throttled):
        c.acquire("k")
    assert second.release() is True
    assert c.peek("k").allowed


def ffi_copy(permit):
    """A new raw permit with the same value as ``permit``'s."""
    policy, parts = permit._raw
    return (policy, tuple(parts))


def test_releasing_a_fail_open_permit_returns_false(engine):
    c = engine.policy("full", "concurrency 1", capacity=8, when_full="fail_open")
    held = [c.acquire(f"k{i}") for i in range(8)]
    t = time.monotonic()
    extra = c.acquire("newcomer", timeout=30)  # no room for a lease: admitted at once
    assert extra.decision.allowed
    assert time.monotonic() - t < 20  # generous: it used to wait out the 30 s
    assert extra.release() is False
    assert all(p.release() is True for p in held)


def test_acquire_with_timeout_waits_for_a_release(engine):
    c = engine.policy("one", "concurrency 1")
    held = c.acquire("k")
    threading.Timer(0.1, held.release).start()
    t = time.monotonic()
    with c.acquire("k", timeout=5.0):
        assert 0.05 < time.monotonic() - t < 4.0


def test_acquire_times_out_with_throttled(engine):
    c = engine.policy("one", "concurrency 1")
    c.acquire("k")
    t = time.monotonic()
    with pytest.raises(Throttled, match="within 0.1 s"):
        c.acquire("k", timeout=0.1)
    assert 0.09 < time.monotonic() - t < 2.0
    with pytest.raises(ValueError):
        c.acquire("k", timeout=-1)


def test_expired_leases_come_back(engine):
    c = engine.policy("ttl", "concurrency 1 ttl 10 seconds")
    c.acquire("k", now_ns=T0)
    with pytest.raises(Throttled):
        c.acquire("k", now_ns=T0 + 5 * S)
    assert c.acquire("k", now_ns=T0 + 11 * S).decision.allowed


def test_release_holder_refuses_live_processes(engine):
    c = engine.policy("reports", "concurrency 3")
    c.acquire("a")
    c.acquire("b")
    with pytest.raises(InvalidArgument, match="this process"):
        c.release_holder(os.getpid())
    assert c.peek("a").remaining == 1  # both permits still held
    with pytest.raises(InvalidArgument, match="is alive"):
        c.release_holder(os.getppid())
    with pytest.raises(InvalidArgument, match="not a process id"):
        c.release_holder(0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert c.release_holder(dead.pid) == 0
    assert engine.policy("rate", "1/second").release_holder(dead.pid) == 0


def test_wrong_policy_kind(engine):
    c = engine.policy("reports", "concurrency 2")
    r = engine.policy("rate", "2/second")
    with pytest.raises(WrongPolicyKind, match="concurrency"):
        c.check("k")
    with pytest.raises(WrongPolicyKind):
        c.refund("k")
    with pytest.raises(WrongPolicyKind):
        r.acquire("k")
    with pytest.raises(WrongPolicyKind):
        engine.check_many([(c, "k", 1)])


# ------------------------------------------------------------------ check_many


def test_check_many_charges_all_or_nothing(engine):
    burst = engine.policy("burst", "3/second")
    daily = engine.policy("daily", "1/day")
    assert daily.check("u", now_ns=T0).allowed  # daily is used up
    d, i = engine.check_many([(burst, "u", 1), (daily, "u", 1)], now_ns=T0)
    assert not d.allowed and i == 1
    assert burst.peek("u", 0, T0).remaining == 3  # nothing charged
    d, i = engine.check_many([(burst, "u", 1), (daily, "v", 1)], now_ns=T0)
    assert d.allowed
    assert burst.peek("u", 0, T0).remaining == 2 and not daily.peek("v", now_ns=T0).allowed


def test_check_many_binding_decisions(engine):
    burst = engine.policy("burst", "3/second")
    hourly = engine.policy("hourly", "5/hour")
    items = [(burst, "u", 1), (hourly, "u")]
    d, i = engine.check_many(items, now_ns=T0)
    assert d.allowed and (i, d.remaining, d.limit) == (0, 2, 3)  # fewest remaining
    engine.check_many(items, now_ns=T0)
    engine.check_many(items, now_ns=T0)
    d, i = engine.check_many(items, now_ns=T0)
    assert not d.allowed and i == 0
    assert hourly.peek("u", 0, T0).remaining == 2  # the denied batch charged nothing
    # largest retry-after binds
    d, i = engine.check_many(items, now_ns=T0 + 2 * S)
    d, i = engine.check_many(items, now_ns=T0 + 2 * S)
    d, i = engine.check_many(items, now_ns=T0 + 2 * S)
    assert not d.allowed and i == 1 and d.retry_after_ns > 100 * S
    assert burst.peek("u", 0, T0 + 2 * S).remaining == 1


def test_check_many_validates_items(engine):
    p = engine.policy("p", "3/second")
    with Engine() as other:
        q = other.policy("q", "3/second")
        with pytest.raises(ValueError, match="another engine"):
            engine.check_many([(q, "k", 1)])
    with pytest.raises(ValueError, match="at least one"):
        engine.check_many([])
    with pytest.raises(TypeError, match="tuple"):
        engine.check_many([[p, "k", 1]])
    with pytest.raises(TypeError, match="Policy"):
        engine.check_many([("p", "k", 1)])
    with pytest.raises(TypeError, match="key must be str or bytes"):
        engine.check_many([(p, 5, 1)])
    with pytest.raises(ValueError, match="cost"):
        engine.check_many([(p, "k", -1)])


def test_check_many_of_many_items(engine):
    ps = [engine.policy(f"p{i}", f"{i + 2}/minute") for i in range(20)]
    d, i = engine.check_many([(p, b"k", 1) for p in ps], now_ns=T0)
    assert d.allowed and i == 0 and d.remaining == 1


# ------------------------------------------------------------------ threads


def test_threads_hammering_one_key_admit_exactly_the_quota(engine):
    p = engine.policy("p", "1000/hour")
    allowed = []

    def work():
        n = 0
        for _ in range(600):
            n += p.check("hot").allowed
        allowed.append(n)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 1000
    assert p.stats().allowed == 1000 and p.stats().denied == 1400


# ------------------------------------------------------------------ lifetime


def test_a_closed_engine_raises_engine_closed_everywhere():
    e = Engine()
    p = e.policy("p", "10/second")
    c = e.policy("c", "concurrency 2")
    permit = c.acquire("k")
    e.close()
    e.close()  # idempotent
    assert e.closed and "closed" in repr(e)
    calls = [
        lambda: p.check("k"),
        lambda: p.check("k", now_ns=T0),
        lambda: p.peek("k"),
        lambda: p.refund("k"),
        lambda: p.reset("k"),
        lambda: p.stats(),
        lambda: c.acquire("k"),
        lambda: c.release_holder(1),
        lambda: permit.release(),
        lambda: e.policy("q", "1/second"),
        lambda: e.policies(),
        lambda: e.find_policy("p"),
        lambda: e.check_many([(p, "k", 1)]),
        lambda: e.now_ns(),
    ]
    for call in calls:
        with pytest.raises(EngineClosed, match="closed"):
            call()


def test_engine_as_context_manager_and_garbage_collection():
    with Engine() as e:
        p = e.policy("p", "1/second")
        assert p.check("a").allowed
    assert e.closed
    with pytest.raises(EngineClosed):
        p.check("a")
    for _ in range(200):  # dropped engines are freed (no leak, no crash)
        Engine(capacity=64).policy("p", "1/second").check("k")


def test_policies_keep_their_engine_alive():
    p = Engine().policy("p", "2/second")
    assert p.check("a").allowed and p.engine.policies() == [p]


def test_close_while_other_threads_check_never_crashes():
    for _ in range(5):
        e = Engine(capacity=256)
        p = e.policy("p", "1000000/second")
        c = e.policy("c", "concurrency 1")
        c.acquire("k")
        errors = []

        def hammer():
            try:
                while True:
                    p.check("k")
                    p.stats()
            except EngineClosed:
                errors.append("closed")

        def waiter():
            try:
                c.acquire("k", timeout=0.3)
            except (EngineClosed, Throttled) as ex:
                errors.append(type(ex).__name__)

        threads = [threading.Thread(target=hammer) for _ in range(2)] + [threading.Thread(target=waiter)]
        for t in threads:
            t.start()
        time.sleep(0.02)
        e.close()
        for t in threads:
            t.join(5)
        assert errors.count("closed") == 2 and len(errors) == 3


# ------------------------------------------------------------------ errors


def test_every_status_maps_to_a_class_carrying_the_message():
    for status, (name, cls) in STATUS_CLASSES.items():
        e = error_for_status(status, f"detail {status}")
        assert isinstance(e, cls) and isinstance(e, RatekeeperError)
        assert e.status == status and e.status_name == name and str(e) == f"detail {status}"
        assert e.message == f"detail {status}"
        default = error_for_status(status)
        assert name in str(default) and len(str(default)) > len(name) + 2
    assert type(error_for_status(999)) is RatekeeperError
    assert isinstance(error_for_status(-1), EngineClosed)


def test_reset_of_a_concurrency_policy_drops_its_permits(engine):
    c = engine.policy("reports", "concurrency 2")
    assert c.reset("k") is False
    c.acquire("k")
    c.acquire("k")
    assert c.reset("k") is True
    assert c.acquire("k").decision.allowed


def test_engine_reset_clears_every_key_of_every_policy_and_drops_permits(engine):
    p = engine.policy("p", "1/minute")
    q = engine.policy("q", "sliding_log 1/hour")
    c = engine.policy("c", "concurrency 1")
    for k in ("a", "b", "c"):
        assert p.check(k, now_ns=T0).allowed
    assert q.check("a", now_ns=T0).allowed
    c.acquire("k")
    assert not p.check("a", now_ns=T0).allowed and not q.check("a", now_ns=T0).allowed
    assert engine.reset() == 5
    assert p.check("a", now_ns=T0).allowed and q.check("a", now_ns=T0).allowed
    assert c.acquire("k").decision.allowed
    assert p.stats().occupancy == 1
    assert engine.reset() == 3 and engine.reset() == 0
