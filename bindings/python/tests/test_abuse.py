"""Abuse control through Python: the penalty box (explicit times), retry
jitter bounds, shadow mode, runtime overrides (two Engine objects on one
file, two processes) and recent denials."""

from __future__ import annotations

import math
import multiprocessing
import os

import pytest

import ratekeeper
from ratekeeper import Penalty

S = 1_000_000_000
T0 = 1_000 * S
MIN = 60 * S


@pytest.fixture
def engine():
    with ratekeeper.Engine(capacity=1024) as e:
        yield e


@pytest.fixture
def shared_path(tmp_path):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    path = os.path.join(base, f"rk-abuse-test-{os.getpid()}-{id(tmp_path)}.rk")
    yield path
    if os.path.exists(path):
        os.unlink(path)


LOGIN = Penalty(strikes=3, window=600.0, ban=900.0, max_ban=14400.0)


# ------------------------------------------------------------------ penalty box


def test_three_denials_ban_the_key_and_the_ban_is_reported(engine):
    login = engine.policy("login", "5/minute", penalty=LOGIN)
    assert login.penalty == LOGIN
    for i in range(5):
        assert login.check("ip:203.0.113.7", now_ns=T0 + i).allowed
    d1 = login.check("ip:203.0.113.7", now_ns=T0 + 10)
    d2 = login.check("ip:203.0.113.7", now_ns=T0 + 11)
    assert not d1.allowed and not d1.banned and not d2.banned  # strikes 1 and 2
    assert d1.retry_after < 13
    d3 = login.check("ip:203.0.113.7", now_ns=T0 + 12)  # strike 3: banned
    assert not d3.allowed and d3.banned
    assert d3.retry_after_ns == 900 * S and d3.remaining == 0
    # While banned: denied without touching the limits, retry-after = the rest of the ban.
    d = login.check("ip:203.0.113.7", now_ns=T0 + 300 * S)
    assert d.banned and d.retry_after_ns == 600 * S + 12
    assert login.peek("ip:203.0.113.7", now_ns=T0 + 300 * S).banned
    # Other keys are not affected.
    assert login.check("ip:203.0.113.8", now_ns=T0 + 300 * S).allowed
    st = login.stats()
    assert (st.allowed, st.denied, st.banned, st.bans) == (6, 4, 2, 1)
    # After the ban: the key's own limits apply again.
    assert login.check("ip:203.0.113.7", now_ns=T0 + 12 + 900 * S).allowed


def test_bans_escalate_twofold_up_to_the_cap_and_start_over_after_max_ban(engine):
    pen = Penalty(strikes=1, window=60.0, ban=100.0, max_ban=350.0)
    p = engine.policy("esc", "1/hour", penalty=pen)
    key = "user:42"
    t = T0
    assert p.check(key, now_ns=t).allowed  # uses the hour's quota
    lengths = []
    for _ in range(4):
        d = p.check(key, now_ns=t)  # one strike = a ban
        assert d.banned
        lengths.append(d.retry_after_ns // S)
        t += d.retry_after_ns  # exactly at the end of the ban
    assert lengths == [100, 200, 350, 350]  # doubled, capped at max_ban
    assert p.stats().bans == 4
    t += 351 * S  # left alone longer than max_ban: starts over
    d = p.check(key, now_ns=t)
    assert d.banned and d.retry_after_ns == 100 * S


def test_reset_lifts_a_ban(engine):
    p = engine.policy("r", "1/hour", penalty=Penalty(strikes=1, window=60.0, ban=100.0, max_ban=100.0))
    p.check("k", now_ns=T0)
    assert p.check("k", now_ns=T0).banned
    p.reset("k")
    assert p.check("k", now_ns=T0 + 1).allowed


def test_penalty_settings_are_validated(engine):
    with pytest.raises(ratekeeper.InvalidArgument):
        Penalty(strikes=0)
    with pytest.raises(ratekeeper.InvalidArgument):
        Penalty(ban=100.0, max_ban=50.0)
    with pytest.raises(ratekeeper.InvalidArgument):
        Penalty(window=-1.0)
    with pytest.raises(ratekeeper.UnsupportedPolicy):
        engine.policy("c", "concurrency 2", penalty=LOGIN)
    with pytest.raises(TypeError):
        engine.policy("x", "1/second", penalty=(3, 600, 900, 14400))


def test_options_are_part_of_the_policy(engine):
    engine.policy("opt", "5/minute", penalty=LOGIN)
    assert engine.policy("opt", "5 per minute", penalty=LOGIN).id == engine.find_policy("opt").id
    for other in ({"penalty": None}, {"shadow": True}, {"retry_jitter": 1.0}, {"record_keys": True},
                  {"penalty": Penalty(strikes=4)}):
        with pytest.raises(ratekeeper.PolicyMismatch):
            engine.policy("opt", "5/minute", **{"penalty": LOGIN, **other})


# ------------------------------------------------------------------ retry jitter


def test_retry_jitter_is_bounded_and_never_shorter_than_the_true_wait(engine):
    plain = engine.policy("plain", "1/minute")
    jittered = engine.policy("jit", "1/minute", retry_jitter=2.0)
    assert plain.check("k", now_ns=T0).allowed and jittered.check("k", now_ns=T0).allowed
    true_wait = plain.check("k", now_ns=T0 + S).retry_after_ns
    assert true_wait == 59 * S
    waits = [jittered.check("k", now_ns=T0 + S).retry_after_ns for _ in range(300)]
    assert all(true_wait <= w <= true_wait + 2 * S for w in waits)
    assert max(waits) - min(waits) > S  # spread out, not one value
    assert len(set(waits)) > 250
    with pytest.raises(ratekeeper.InvalidArgument):
        engine.policy("bad", "1/minute", retry_jitter=-1.0)


def test_jitter_leaves_never_as_never(engine):
    p = engine.policy("jn", "2/minute", retry_jitter=5.0)
    d = p.check("k", cost=3, now_ns=T0)
    assert not d.allowed and d.retry_after_ns == ratekeeper.U64_MAX and math.isinf(d.retry_after)


# ------------------------------------------------------------------ shadow mode


def test_shadow_mode_passes_counts_and_records_would_be_denials(engine):
    p = engine.policy("new-limit", "2/minute", shadow=True)
    ds = [p.check("k", now_ns=T0 + i) for i in range(5)]
    assert all(d.allowed for d in ds)
    assert [d.shadow_denied for d in ds] == [False, False, True, True, True]
    assert ds[2].retry_after > 0  # describes the denial it would have been
    st = p.stats()
    assert (st.allowed, st.denied, st.shadow_denied, st.banned) == (2, 3, 3, 0)
    events = p.recent_denials()
    # Three denials of one key within a second: one event (the ring samples
    # each key once per second); the totals above count all three.
    assert [e.shadow for e in events] == [True] and not events[0].banned
    # Nothing is charged for a would-be denial: the quota comes back on time.
    assert not p.check("k", now_ns=T0 + 30 * S).shadow_denied


# ------------------------------------------------------------------ overrides


def test_override_set_get_clear(engine):
    p = engine.policy("api", "10/minute")
    assert p.override("partner") is None
    p.set_override("partner", 10.0)
    assert p.override("partner") == 10.0
    assert p.override(b"partner") == 10.0
    assert p.check("partner", now_ns=T0).limit == 100
    assert p.check("someone", now_ns=T0).limit == 10
    p.set_override("partner", 0.0012)
    assert p.override("partner") == pytest.approx(0.001)
    p.clear_override("partner")
    assert p.override("partner") is None
    p.clear_override("never-set")  # not an error
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(ratekeeper.InvalidArgument):
            p.set_override("x", bad)
    with pytest.raises(TypeError):
        p.set_override("x", "10")
    with pytest.raises(ratekeeper.WrongPolicyKind):
        engine.policy("conc", "concurrency 2").set_override("x", 2.0)


def test_override_is_visible_across_two_engines_on_one_file(shared_path):
    with ratekeeper.Engine.shared(shared_path) as a, ratekeeper.Engine.shared(shared_path) as b:
        pa = a.policy("api", "5/minute")
        pb = b.policy("api", "5/minute")
        pa.set_override("key:partner", 4.0)
        assert pb.override("key:partner") == 4.0
        assert sum(pb.check("key:partner", now_ns=T0).allowed for _ in range(25)) == 20
        pb.clear_override("key:partner")
        assert pa.override("key:partner") is None


def _child_sets_override(path: str, factor: float, conn) -> None:
    with ratekeeper.Engine.shared(path) as e:
        p = e.policy("api", "5/minute")
        p.set_override("key:partner", factor)
        conn.send(p.override("key:partner"))
        conn.close()


def test_override_is_visible_across_two_processes(shared_path):
    with ratekeeper.Engine.shared(shared_path) as e:
        p = e.policy("api", "5/minute")
        ctx = multiprocessing.get_context("fork")  # the child opens the file itself, after the fork
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=_child_sets_override, args=(shared_path, 3.0, child_end))
        child.start()
        try:
            assert parent_end.poll(30) and parent_end.recv() == 3.0
        finally:
            child.join(30)
        assert child.exitcode == 0
        assert p.override("key:partner") == 3.0
        assert p.check("key:partner", now_ns=T0).limit == 15


# ------------------------------------------------------------------ recent denials


def test_recent_denials_keep_keys_only_with_record_keys(engine):
    anon = engine.policy("anon", "1/minute", penalty=Penalty(strikes=2, window=60.0, ban=30.0, max_ban=60.0))
    named = engine.policy("named", "1/minute", record_keys=True)
    for p in (anon, named):
        p.check("ip:198.51.100.1", now_ns=T0)
        p.check("ip:198.51.100.1", now_ns=T0 + S)
        p.check("ip:198.51.100.1", now_ns=T0 + 2 * S)
    a = anon.recent_denials()
    n = named.recent_denials()
    assert [e.ticket for e in a] == [0, 1] and [e.ticket for e in n] == [0, 1]
    assert all(e.key is None for e in a)
    assert [e.key for e in n] == [b"ip:198.51.100.1"] * 2
    assert a[0].key_hash == a[1].key_hash != 0
    assert a[0].time == pytest.approx((T0 + S) / 1e9) and a[0].time_ns == T0 + S
    assert not a[0].banned and a[1].banned and a[1].retry_after == pytest.approx(30.0)
    assert n[0].retry_after == pytest.approx(59.0)
    assert named.recent_denials(since=1) == n[1:]
    assert named.recent_denials(since=2) == []
    long_key = "k" * 200
    named.check(long_key, now_ns=T0)
    named.check(long_key, now_ns=T0)
    assert named.recent_denials(since=2)[0].key == b"k" * 80  # cut at RK_EVENT_KEY_BYTES


def test_a_flood_on_one_key_is_one_event_per_second_and_every_denial_is_counted(engine):
    p = engine.policy("flood", "5/minute")
    for i in range(15_000):  # 10,000 checks a second for 1.5 seconds
        p.check("k", now_ns=T0 + i * 100_000)
    events = p.recent_denials()
    assert len(events) == 2 and events[1].time_ns - events[0].time_ns == pytest.approx(S, abs=2e6)  # to the sampler tick (2^20 ns)
    assert p.stats().denied == 15_000 - 5


def test_recent_denials_keep_the_last_512(engine):
    p = engine.policy("flood", "1/hour")
    for i in range(700):  # two seconds apart: every denial is an event
        p.check("k", now_ns=T0 + 2 * i * S)
    events = p.recent_denials()
    assert len(events) == 512
    assert events[-1].ticket == 698 and events[0].ticket == 698 - 511
