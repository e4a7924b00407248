"""The Redis backend from Python, against real redis-servers (started on
127.0.0.1 with free ports by the fixtures of conftest.py, stopped by PID):
decisions equal the in-process engine's, two processes (and two Gunicorn
"hosts") share one limit exactly, a Flask app keeps answering while Redis is
stopped, hung or restarted, and opening against a bad URL, a wrong password
or a server that is not Redis raises a clear error."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import ratekeeper
from ratekeeper.errors import BackendError, EngineClosed, InvalidArgument

flask = pytest.importorskip("flask")
from ratekeeper.flask import Ratekeeper  # noqa: E402
from window_edge import refund_across_a_window_edge  # noqa: E402

MS = 1_000_000
S = 1_000_000_000


def prefix() -> str:
    """A key prefix of the test's own: tests sharing the session's server
    never see each other's keys or policy definitions."""
    return f"rkpy-{uuid.uuid4().hex[:12]}:"


def redis(url: str, **options) -> ratekeeper.Engine:
    options.setdefault("prefix", prefix())
    options.setdefault("log_switches", False)
    return ratekeeper.Engine.redis(url, **options)


# ---------------------------------------------------------------- decisions


SPECS = [
    "5/second",
    "gcra 10/second burst 3",
    "fixed_window 4/2 seconds",
    "sliding_window 6/second",
    "sliding_log 3/second",
    "10/second; fixed_window 30/10 seconds",
]


@pytest.mark.parametrize("spec", SPECS)
def test_decisions_equal_the_in_process_engines_at_explicit_times(redis_server, spec):
    rng = random.Random(spec)
    # deny_cache=0: a cached denial answers with the figures of when it was
    # cached (an approximation by design); the script itself is exact.
    remote, local = redis(redis_server.url, deny_cache=0), ratekeeper.Engine()
    rp, lp = remote.policy("p", spec), local.policy("p", spec)
    now = 1_000 * S
    for step in range(250):
        now += rng.randrange(0, 400_000) * 1000  # whole microseconds
        key = f"client-{rng.randrange(3)}"
        cost = rng.choice([1, 1, 1, 2])
        if rng.random() < 0.1:
            assert rp.peek(key, cost, now) == lp.peek(key, cost, now), (step, key)
        got, want = rp.check(key, cost, now), lp.check(key, cost, now)
        assert got == want, f"step {step}: {key} cost {cost} at {now}: Redis {got} != in-process {want}"
    stats = remote.redis_stats()
    assert stats["up"] and stats["round_trips"] > 0 and stats["failovers"] == 0
    assert stats["fallback_decisions"] == 0
    remote.close()
    local.close()


def test_check_many_and_clock_and_reset_go_through_redis(redis_server):
    engine = redis(redis_server.url)
    a = engine.policy("a", "3/minute")
    b = engine.policy("b", "10/second; 100/hour")
    before = engine.redis_stats()["round_trips"]
    d, i = engine.check_many([(a, "k"), (b, "k", 2)])
    assert d.allowed and (i, d.limit, d.remaining) == (0, 3, 2)
    assert engine.redis_stats()["round_trips"] == before + 1, "one round trip for the whole batch"
    assert a.check("k").remaining == 1  # Redis TIME: no explicit now
    assert a.reset("k") is True
    assert a.check("k").remaining == 2
    assert isinstance(a, ratekeeper.Policy) and a.name == "a" and a.spec == "3/minute"
    assert "redis" in repr(engine)
    engine.close()
    with pytest.raises(EngineClosed):
        a.check("k")


def test_redis_stats_is_none_for_an_engine_that_is_not_redis_backed():
    with ratekeeper.Engine() as engine:
        assert engine.redis_stats() is None


# ---------------------------------------------------------------- two hosts

HAMMER = r"""
import json, sys, threading, time
import ratekeeper
url, prefix, start_at, calls = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
engine = ratekeeper.Engine.redis(url, prefix=prefix, log_switches=False)
policy = engine.policy("login", "25/hour")
allowed = []

def run():
    while time.time() < start_at:
        time.sleep(0.001)
    allowed.append(sum(policy.check("ip:203.0.113.9").allowed for _ in range(calls)))

threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"allowed": sum(allowed), "pid": __import__("os").getpid(), "stats": engine.redis_stats()}))
"""


def test_two_processes_with_their_own_engines_admit_exactly_the_quota(redis_server, tmp_path):
    p = prefix()
    start_at = time.time() + 1.0
    procs = [
        subprocess.Popen([sys.executable, "-c", HAMMER, redis_server.url, p, str(start_at), "40"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    assert sum(r["allowed"] for r in results) == 25, results
    assert len({r["pid"] for r in results}) == 2
    for r in results:
        assert r["stats"]["up"] and r["stats"]["round_trips"] > 0 and r["stats"]["fallback_decisions"] == 0


def test_two_gunicorn_hosts_on_one_redis_admit_exactly_the_quota(redis_factory, tmp_path_factory):
    pytest.importorskip("gunicorn")
    from test_gunicorn import gunicorn_server, request

    server = redis_factory()
    env = {"RATEKEEPER_REDIS_URL": server.url}
    hosts = [gunicorn_server(tmp_path_factory, f"redis-host-{i}", env=env, n_workers=2) for i in range(2)]
    infos = [next(h) for h in hosts]
    try:
        ports = [info["port"] for info in infos]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: request(ports[i % 2], "/hourly"), range(200)))
        codes = [status for status, _ in results]
        assert codes.count(200) == 20 and codes.count(429) == 180, codes
        pids = {pid for _, pid in results if pid}
        assert len(pids) >= 2, "both hosts should have admitted requests"
        # Each worker opened its own Redis engine after fork: the server saw
        # at least one connection per worker (plus each master's check).
        assert int(server.info("stats")["total_connections_received"]) >= 4
    finally:
        for h in hosts:
            h.close()  # runs the generator's finally: gunicorn stopped by PID


# ---------------------------------------------------------------- failover


def redis_app(url: str, on_failure: str):
    app = flask.Flask(__name__)
    app.config.update(
        TESTING=True,  # an exception would propagate into the test instead of becoming a 500
        RATEKEEPER_REDIS_URL=url,
        RATEKEEPER_REDIS_ON_FAILURE=on_failure,
        RATEKEEPER_REDIS_OPTIONS={"prefix": prefix(), "log_switches": False, "retry_min": 0.05, "retry_max": 0.25},
    )
    rk = Ratekeeper(app)

    @app.get("/")
    @rk.limit("5/hour")
    def index():
        return "ok"

    return app, rk


def several_limits_app(url: str, **config):
    app = flask.Flask(__name__)
    app.config.update(
        TESTING=True,
        RATEKEEPER_REDIS_URL=url,
        RATEKEEPER_REDIS_OPTIONS={"prefix": prefix(), "log_switches": False},
        **config,
    )
    return app, Ratekeeper(app)


def test_flask_on_redis_shadow_limits_never_stop_or_skip_the_enforced_ones(redis_server):
    """A request with shadow-mode and enforced limits on a Redis engine: the
    shadow limits' would-be denials neither let an enforced denial through
    nor keep the enforced limits from being charged."""
    app, rk = several_limits_app(redis_server.url, RATEKEEPER_SHADOW=True, RATEKEEPER_DEFAULT="2/minute")

    @app.get("/roomy")
    @rk.limit("100/minute", shadow=False, override_defaults=False)
    def roomy():
        return "roomy"

    @app.get("/tight")
    @rk.limit("1/minute", shadow=False)
    @rk.limit("1/hour")  # shadow (the app's default), with a longer retry-after than the enforced limit
    def tight():
        return "tight"

    c = app.test_client()
    assert [c.get("/roomy").status_code for _ in range(4)] == [200] * 4
    with app.app_context():
        engine = rk.engine
    assert engine.find_policy("flask:2/minute [shadow]").stats().shadow_denied == 2
    assert engine.find_policy("flask:100/minute").stats().allowed == 4
    assert engine.find_policy("flask:100/minute").peek("roomy\x00127.0.0.1").remaining == 95  # charged 4 times
    assert [c.get("/tight").status_code for _ in range(3)] == [200, 429, 429]


def test_flask_on_redis_penalty_box_with_several_limits_counts_strikes(redis_server):
    # Specs of its own: the process's engine on this URL (and its counters)
    # is shared with the other tests' apps.
    app, rk = several_limits_app(redis_server.url, RATEKEEPER_DEFAULT="90/minute",
                                 RATEKEEPER_APPLICATION_LIMITS="900/minute")

    @app.post("/login")
    @rk.limit("2/minute", name="login", override_defaults=False,
              penalty=ratekeeper.Penalty(strikes=2, window=600.0, ban=60.0, max_ban=60.0))
    def login():
        return "ok"

    c = app.test_client()
    results = [c.post("/login", environ_base={"REMOTE_ADDR": "198.51.100.9"}) for _ in range(5)]
    assert [r.status_code for r in results] == [200, 200, 429, 429, 429]
    assert [bool((r.get_json(silent=True) or {}).get("banned")) for r in results] == [False] * 3 + [True] * 2
    with app.app_context():
        engine = rk.engine
    assert engine.find_policy("flask:90/minute").stats().allowed == 2  # not charged for denied requests
    assert engine.find_policy("flask:900/minute").stats().allowed == 2


def test_flask_on_redis_deduct_when_refunds_at_the_charges_redis_time(redis_server):
    """A success's refund is placed at its ``decision.at_ns``, Redis's time
    of the charge, not at Redis's time after the response, in a window
    another request opened since (README, "refund"; window_edge.py)."""
    app, rk = several_limits_app(redis_server.url)
    assert refund_across_a_window_edge(app, rk, "198.51.100.12") == (200, [401, 429])


def test_a_redis_decision_is_made_at_redis_time(redis_server):
    e = redis(redis_server.url)
    p = e.policy("at", "10/second")
    assert p.check("k", now_ns=5 * S).at_ns == 5 * S  # an explicit time is used as given
    d = p.check("k")  # Redis's clock: nanoseconds since 2026-01-01 UTC, far from the local one
    assert abs(d.at_ns - (time.time() - 1_767_225_600) * S) < 60 * S


def timed_get(client, addr: str):
    t = time.monotonic()
    r = client.get("/", environ_base={"REMOTE_ADDR": addr})
    return r, time.monotonic() - t


EXPECTED_WHILE_DOWN = {
    # this host's own tables: a fresh client gets its 5, then 429s
    "local": [200] * 5 + [429] * 5,
    "open": [200] * 10,
    "closed": [429] * 10,
}


@pytest.mark.parametrize("on_failure,how", [
    ("local", "stop"), ("open", "kill"), ("closed", "stop"), ("local", "freeze"),
])
def test_flask_keeps_answering_while_redis_is_down_and_recovers_by_itself(redis_factory, on_failure, how):
    server = redis_factory()
    app, rk = redis_app(server.url, on_failure)
    client = app.test_client()
    r, _ = timed_get(client, "198.51.100.1")
    assert r.status_code == 200
    with app.app_context():
        engine = rk.engine
    before = engine.redis_stats()["round_trips"]
    for _ in range(2):
        r, _ = timed_get(client, "198.51.100.1")
        assert r.status_code == 200
    stats = engine.redis_stats()
    assert stats["up"] and stats["round_trips"] == before + 2, "one round trip per request"

    {"stop": server.stop, "kill": server.kill, "freeze": server.freeze}[how]()
    try:
        codes, slowest = [], 0.0
        for _ in range(10):
            r, took = timed_get(client, "198.51.100.2")
            codes.append(r.status_code)
            slowest = max(slowest, took)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
        assert codes == EXPECTED_WHILE_DOWN[on_failure]
        assert slowest < 1.0, f"a request took {slowest:.3f} s while Redis was down"
        stats = engine.redis_stats()
        assert not stats["up"] and stats["failovers"] == 1 and stats["errors"] >= 1
        assert stats["fallback_decisions"] >= 1
    finally:
        if how == "freeze":
            server.thaw()
        else:
            server.start()  # the same port

    # Traffic brings it back by itself (a try every retry_max at most).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not engine.redis_stats()["up"]:
        r, took = timed_get(client, "198.51.100.3")
        assert r.status_code in (200, 429) and took < 1.0
        time.sleep(0.02)
    stats = engine.redis_stats()
    assert stats["up"] and stats["recoveries"] == 1, stats
    before = stats["round_trips"]
    r, _ = timed_get(client, "198.51.100.4")
    assert r.status_code == 200
    assert engine.redis_stats()["round_trips"] == before + 1, "decided in Redis again"


# ---------------------------------------------------------------- errors


def test_a_bad_url_is_a_value_error(redis_server):
    for url in ("http://127.0.0.1:6379/", "not a url", "redis://127.0.0.1:notaport/"):
        with pytest.raises(ValueError) as info:
            ratekeeper.Engine.redis(url)
        assert isinstance(info.value, InvalidArgument)
        assert "URL" in str(info.value)
    with pytest.raises(TypeError):
        ratekeeper.Engine.redis(b"redis://127.0.0.1/")  # type: ignore[arg-type]


@pytest.mark.parametrize("options,message", [
    ({"on_failure": "sometimes"}, "on_failure"),
    ({"timeout": 0}, "timeout"),
    ({"connect_timeout": -1.0}, "connect_timeout"),
    ({"prefix": "{app}"}, "prefix"),
    ({"on_failure": "open", "fallback_path": "/dev/shm/never-created.rk"}, "fallback_path"),
    ({"hash_secret": b"short"}, "hash_secret"),
    ({"deny_cache": -1}, "deny_cache"),
    ({"retry_min": 2.0, "retry_max": 1.0}, "retry"),
])
def test_bad_options_are_value_errors_naming_the_option(redis_server, options, message):
    with pytest.raises(ValueError, match=message):
        ratekeeper.Engine.redis(redis_server.url, **options)


def test_a_wrong_password_is_a_backend_error_that_never_shows_the_password(redis_factory):
    server = redis_factory(password="right-password")
    wrong = server.url.replace("right-password", "wrong-password")
    with pytest.raises(BackendError) as info:
        ratekeeper.Engine.redis(wrong)
    text = str(info.value)
    assert "authentication failed" in text and "wrong-password" not in text
    assert info.value.status_name == "RK_ERR_BACKEND" and isinstance(info.value, ConnectionError)
    with pytest.raises(BackendError, match="authentication"):
        ratekeeper.Engine.redis(server.url.replace(":right-password@", ""))  # no password at all
    engine = redis(server.url)  # the right one
    assert engine.policy("p", "1/minute").check("k").allowed
    assert engine.redis_stats()["up"]
    engine.close()


@pytest.fixture
def not_redis():
    """A TCP server on 127.0.0.1 that answers every connection like a web
    server would, then closes it. Yields its port; stopped at teardown."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(0.5)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_server_that_is_not_redis_is_a_backend_error(not_redis):
    with pytest.raises(BackendError) as info:
        ratekeeper.Engine.redis(f"redis://127.0.0.1:{not_redis}/0", log_switches=False)
    assert f"127.0.0.1:{not_redis}" in str(info.value)


def test_an_unreachable_server_is_not_an_error_the_engine_starts_on_its_failure_policy():
    engine = ratekeeper.Engine.redis("redis://127.0.0.1:1/0", on_failure="closed", log_switches=False)
    d = engine.policy("p", "5/minute").check("k")
    assert not d.allowed and d.retry_after > 0
    stats = engine.redis_stats()
    assert not stats["up"] and stats["failovers"] == 1 and stats["fallback_decisions"] == 1
    engine.close()


# ---------------------------------------------------------------- processes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_uses_its_parents_connections(redis_server):
    url = redis_server.url
    parent = ratekeeper.redis_engine(url, prefix=prefix(), log_switches=False)
    policy = parent.policy("p", "100/minute")
    assert policy.check("k").allowed
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        code = 1
        try:
            try:
                policy.check("k")
            except EngineClosed as e:
                if "redis_engine" in str(e):
                    code = 2
            if code == 2:
                mine = ratekeeper.redis_engine(url, prefix=prefix(), log_switches=False)
                if mine is not parent and mine.policy("p", "100/minute").check("k").allowed:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert policy.check("k").allowed, "the parent's engine still works"
    assert ratekeeper.redis_engine(url) is parent


def test_prometheus_reports_the_redis_counters_of_a_redis_engine(redis_server):
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from ratekeeper.prometheus import generate

    engine = redis(redis_server.url)
    policy = engine.policy("p", "2/minute")
    for _ in range(3):
        policy.check("k")
    body, _ = generate(engine)
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if not s.labels}
    stats = engine.redis_stats()
    assert samples["ratekeeper_redis_up"] == 1
    assert samples["ratekeeper_redis_round_trips_total"] == stats["round_trips"] >= 2
    assert samples["ratekeeper_redis_failovers_total"] == 0
    assert samples["ratekeeper_redis_deny_cache_hits_total"] == stats["deny_cache_hits"]
    engine.close()
    local, _ = generate(ratekeeper.Engine())
    assert b"ratekeeper_redis_" not in local


def test_reset_clears_a_redis_engines_policies_for_every_host(redis_server):
    """Policy.reset_all() and Engine.reset() on a Redis engine delete the
    policies' keys in Redis: another host on the same prefix sees full
    quotas, another policy keeps its state until it is reset too, and
    another prefix is never touched."""
    shared = prefix()
    a = redis(redis_server.url, prefix=shared)
    b = redis(redis_server.url, prefix=shared)
    other = redis(redis_server.url)
    login_a, api_a = a.policy("login", "2/hour"), a.policy("api", "sliding_log 1/hour")
    login_b, api_b = b.policy("login", "2/hour"), b.policy("api", "sliding_log 1/hour")
    login_other = other.policy("login", "2/hour")
    keys = [f"client:{i}" for i in range(10)]
    for k in keys:
        assert login_a.check(k, 2).allowed and not login_b.check(k).allowed
        assert api_a.check(k).allowed and not api_b.check(k).allowed
        assert login_other.check(k, 2).allowed
    assert login_b.reset_all() == 10
    for k in keys:
        assert login_a.check(k, 2).allowed, "login is fresh on the other host too"
        assert not api_a.check(k).allowed, "api keeps its state"
    assert b.reset() == 20  # login's 10 keys (charged again) and api's 10
    for k in keys:
        assert login_a.check(k, 2).allowed and api_b.check(k).allowed
        assert not login_other.check(k).allowed, "another prefix keeps its state"
    for e in (a, b, other):
        assert e.redis_stats()["fallback_decisions"] == 0
        e.close()


def test_reset_of_a_flask_app_on_redis_for_a_pytest_fixture(redis_server):
    """The README's pytest fixture pattern works on Redis: rk.reset()
    gives every limit its full quota back."""
    app, rk = redis_app(redis_server.url, "closed")
    c = app.test_client()
    assert [c.get("/").status_code for _ in range(6)] == [200] * 5 + [429]
    # At least this client's key (the app's engine is the process's one for
    # this URL, which earlier tests' apps may have charged too).
    assert rk.reset() >= 1
    assert [c.get("/").status_code for _ in range(6)] == [200] * 5 + [429]
