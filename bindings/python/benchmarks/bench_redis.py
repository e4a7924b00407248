"""ratekeeper's Redis backend against `limits` RedisStorage and Flask-Limiter
``redis://``, side by side in one run, against one local redis-server that
this script starts (127.0.0.1, a free port, no persistence) and stops by its
PID (not a test).

    python3 bindings/python/benchmarks/bench_redis.py [--quick]

1. One check: ``policy.check(key)`` of an ``Engine.redis(url)`` engine vs
   ``limits`` ``RedisStorage`` ``hit`` with FixedWindowRateLimiter and
   MovingWindowRateLimiter, and a redis-py ``PING`` (one round trip: the
   floor of any check that asks Redis). Keys rotate over 10,000 clients, limits are never
   reached (every call is an allowed, charged hit). Median of several timed
   batches (the contenders' batches take turns), µs per call.
2. Flask per-request overhead: one route with two limits,
   ``"10000/second;100000/hour"`` (each library's default algorithm: GCRA for
   ratekeeper, fixed window for Flask-Limiter), served by Flask's test client,
   vs the same route with no limiter. Requests come from 1,000 client
   addresses and are interleaved (one of each app in turn); each round's
   overhead is median(with) - median(without); the median over rounds is
   printed.
3. Redis traffic per check and per request, in a separate pass of each
   contender alone under ``MONITOR``: the commands clients sent (one per round
   trip: no contender here pipelines), and the commands Lua scripts ran inside
   the server; then the time Redis itself spent per call (``INFO
   commandstats`` ``usec`` deltas, over a second pass without MONITOR); for
   ratekeeper also its client's own count of round trips
   (``Engine.redis_stats()["round_trips"]``).

``--inside-redis [--before OLD.lua]`` runs one more table alone, which needs
no ratekeeper Python package: the time inside Redis (``INFO commandstats``
µs per call) of the very commands ratekeeper's Rust client sends (``FCALL``
of ``src/redis/ratekeeper.lua`` loaded as a function library, ``EVALSHA``
of it, and with ``--before`` an older script, e.g. ``git show
HEAD~1:src/redis/ratekeeper.lua > /tmp/old.lua``, through ``EVALSHA`` and,
if it is a function library too, ``FCALL``; each script gets its policies in
the form it takes: one argument from protocol 3 on), sent with redis-py,
beside ``limits`` ``RedisStorage`` fixed and moving window ``hit`` at the
same limits, on one server, contenders taking turns, median of the rounds;
and a floor: ``FCALL`` of a function that sends only what a check of a
compact state must (``TIME``, ``MGET``, ``SET PX``) and returns 11 integers.

Installs ``limits``, ``flask-limiter`` and ``redis`` (the Python client) with
pip if they are missing; needs ``redis-server`` on PATH. The ratekeeper rows
are skipped (with a note) when the installed package has no Redis backend.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from bench import ensure  # noqa: E402  (this script's directory is on sys.path)
from redis_server import RedisServer  # noqa: E402

N_KEYS = 10_000
N_CLIENTS = 1_000
CHECK_LIMIT = "100000000/hour"
ROUTE_LIMITS = "10000/second;100000/hour"


def have_ratekeeper_redis() -> bool:
    import ratekeeper

    return hasattr(ratekeeper.Engine, "redis")


def per_call_us(fns: dict, calls: int, repeats: int) -> dict:
    """{name: median over `repeats` batches of `calls` calls, in µs per call}.
    The contenders' batches take turns (one batch of each per round), so
    that a noisy neighbour slows them all alike."""
    timers = {name: timeit.Timer(fn) for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer.timeit(number=calls) / calls * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def traffic_of(server: RedisServer, fn, n: int, engine=None) -> str:
    """Runs `fn` n times under MONITOR (for the commands), then n times
    without it (for the server's own time); returns both per call."""
    rt0 = engine.redis_stats()["round_trips"] if engine is not None else 0
    with server.monitor() as m:
        for _ in range(n):
            fn()
    usec0 = sum(server.commandstats("usec").values())
    for _ in range(n):
        fn()
    server_us = (sum(server.commandstats("usec").values()) - usec0) / n
    parts = ", ".join(f"{cmd} {k / n:.2f}" for cmd, k in sorted(m.clients.items()))
    text = (f"{m.round_trips / n:5.2f} round trips ({parts}); {sum(m.scripts.values()) / n:5.2f} commands "
            f"in scripts; {server_us:5.1f} µs in Redis")
    if engine is not None:
        text += f"; client's own count {(engine.redis_stats()['round_trips'] - rt0) / (2 * n):.2f}"
    return text


# ---------------------------------------------------------------- 1. one check


def floor_checks(url: str) -> dict:
    """{name: function}: one PING round trip, the floor of any Redis check."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    client.ping()
    return {"(floor) redis-py PING, one round trip": client.ping}


def limits_checks(url: str) -> dict:
    """{name: hit function} for limits' Redis strategies (warmed)."""
    from limits import parse, storage, strategies

    item = parse(CHECK_LIMIT)
    out = {}
    for cls in (strategies.FixedWindowRateLimiter, strategies.MovingWindowRateLimiter):
        # Keys of their own: the two strategies keep different Redis types.
        keys = [f"{cls.__name__}:ip:10.{i // 256 % 256}.{i % 256}.{i // 65536}" for i in range(N_KEYS)]
        limiter = cls(storage.RedisStorage(url))
        hit = limiter.hit
        it = iter(range(1 << 62))

        def run(hit=hit, it=it, keys=keys):
            hit(item, keys[next(it) % N_KEYS])

        for _ in range(200):
            run()
        out[f"limits RedisStorage {cls.__name__}.hit"] = run
    return out


def ratekeeper_checks(url: str) -> tuple:
    """({name: check function}, engine) for ratekeeper's Redis engine (warmed)."""
    import ratekeeper

    engine = ratekeeper.Engine.redis(url, prefix="rkbench:")
    keys = [f"ip:10.{i // 256 % 256}.{i % 256}.{i // 65536}" for i in range(N_KEYS)]
    out = {}
    for label, spec in (
        (f"gcra {CHECK_LIMIT}", CHECK_LIMIT),
        (f"fixed_window {CHECK_LIMIT}", f"fixed_window {CHECK_LIMIT}"),
        (ROUTE_LIMITS + " (2 limits)", ROUTE_LIMITS),
    ):
        check = engine.policy(f"bench-{len(out)}", spec).check
        it = iter(range(1 << 62))

        def run(check=check, it=it):
            check(keys[next(it) % N_KEYS])

        for _ in range(200):
            run()
        out[f"ratekeeper Engine.redis policy.check, {label}"] = run
    return out, engine


# ---------------------------------------------------------------- 0. inside Redis

SCRIPT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, os.pardir,
                           "src", "redis", "ratekeeper.lua")
S_NS = 1_000_000_000
# A function that sends what a check of a compact state must send (TIME,
# MGET, SET PX) and returns a reply of 11 integers, deciding nothing.
FLOOR_LIBRARY = """#!lua name=ratekeeper_floor_bench
redis.register_function('rk_floor_bench', function(keys, args)
  local t = redis.call('TIME')
  local r = redis.call('MGET', keys[1], keys[2])
  redis.call('SET', keys[1], '12345678', 'PX', 1)
  return {1, 0, 100, 99, 0, 36000, 0, 0, 0, tonumber(t[1]), 0}
end)
"""
# The line of ratekeeper.lua that says it takes a policy as one argument.
PROTOCOL_3 = "Protocol 3: a policy is one argument."
# (label, ratekeeper item record after the cost (PROTOCOL.md), limits limit
# string or None, limits strategy)
INSIDE_CASES = (
    ("gcra 100000000/hour", ["1", "g", "100000000", str(3600 * S_NS), "100000000"], "100000000/hour", "fixed"),
    ("fixed_window 100000000/hour", ["1", "f", "100000000", str(3600 * S_NS), "100000000"], "100000000/hour",
     "fixed"),
    ("10000/second;100000/hour (2 limits; limits: 2 hits)",
     ["2", "g", "10000", str(S_NS), "10000", "g", "100000", str(3600 * S_NS), "100000"],
     "10000/second;100000/hour", "fixed"),
    ("sliding_log 1000/hour (limits: moving window)", ["1", "l", "1000", str(3600 * S_NS), "1000"], "1000/hour",
     "moving"),
)


def inside_redis(server: RedisServer, calls: int, rounds: int, before: str | None) -> None:
    """Prints µs inside Redis per call (commandstats) for each case and contender."""
    import redis as redis_py
    from limits import parse_many, storage, strategies

    r = redis_py.Redis(host="127.0.0.1", port=server.port)
    text = open(SCRIPT_PATH).read()
    r.execute_command("FUNCTION", "LOAD", "REPLACE", f"#!lua name=ratekeeper_bench\nlocal SUFFIX = '_bench'\n{text}")
    sha_new = r.script_load(text)
    old_text = open(before).read() if before else ""
    sha_old = r.script_load(old_text) if before else None
    # An older script that is a function library too (protocol 2 on) is
    # also called as one: FCALL before and after, side by side.
    fcall_old = before is not None and "register_function" in old_text
    if fcall_old:
        r.execute_command("FUNCTION", "LOAD", "REPLACE",
                          f"#!lua name=ratekeeper_before\nlocal SUFFIX = '_before'\n{old_text}")
    # Protocol 3 takes a policy as one argument (its fields joined by
    # spaces); protocols 1 and 2 took each field as an argument.
    one_arg = {how: PROTOCOL_3 in t
               for how, t in (("fcall", text), ("evalsha", text), ("old", old_text), ("fcall_old", old_text))}
    r.execute_command("FUNCTION", "LOAD", "REPLACE", FLOOR_LIBRARY)
    keys = [f"ip:10.{i // 256 % 256}.{i % 256}" for i in range(N_KEYS)]

    def floor():
        """The commands a check of a compact state cannot do without (TIME,
        MGET of state and override, SET PX) and its 11-integer reply, with
        no decision at all: what any script call of this shape costs."""
        it = iter(range(1 << 62))

        def run():
            k = keys[next(it) % N_KEYS]
            r.execute_command("FCALL", "rk_floor_bench", 2, f"rkb:floor:{{{k}}}:c", f"rkb:floor:{{{k}}}:o", "")
        return run

    def ratekeeper(how: str, record: list, compact: bool):
        it = iter(range(1 << 62))
        penalty = ["0", "0", "0", "0"]
        suffix = "c" if compact and how != "old" else "s"

        def run():
            k = keys[next(it) % N_KEYS]
            ks = [f"rkb:{how}:{{{k}}}:{suffix}", f"rkb:{how}:{{{k}}}:o"]
            policy = [" ".join([*record, *penalty])] if one_arg[how] else [*record, *penalty]
            rest = ["", "1", "1", *policy]
            if how in ("fcall", "fcall_old"):
                name = "rk_check_bench" if how == "fcall" else "rk_check_before"
                r.execute_command("FCALL", name, 2, *ks, *rest)
            else:
                r.execute_command("EVALSHA", sha_new if how == "evalsha" else sha_old, 2, *ks, "check", *rest)
        return run

    def limits_hit(spec: str, kind: str):
        stor = storage.RedisStorage(f"redis://127.0.0.1:{server.port}")
        cls = strategies.FixedWindowRateLimiter if kind == "fixed" else strategies.MovingWindowRateLimiter
        limiter, items, it = cls(stor), parse_many(spec), iter(range(1 << 62))

        def run():
            k = keys[next(it) % N_KEYS]
            for item in items:  # Flask-Limiter's way: one hit per limit
                limiter.hit(item, "lim", kind, k)
        return run

    def usec_per_call(fn) -> float:
        for _ in range(100):
            fn()
        r.config_resetstat()
        for _ in range(calls):
            fn()
        stats = r.info("commandstats")
        usec = sum(v["usec"] for name, v in stats.items() if name in ("cmdstat_evalsha", "cmdstat_fcall"))
        return usec / calls

    print(f"\n== inside Redis: INFO commandstats µs per check (evalsha + fcall usec / checks), {calls:,} checks "
          f"per contender and round, keys rotate over {N_KEYS:,}, median of {rounds} rounds (contenders take turns)")
    for label, record, spec, kind in INSIDE_CASES:
        compact = "l" not in record
        fns = {"ratekeeper FCALL (library)": ratekeeper("fcall", record, compact),
               "ratekeeper EVALSHA (no FUNCTION)": ratekeeper("evalsha", record, compact)}
        if fcall_old:
            fns["ratekeeper before (FCALL of --before)"] = ratekeeper("fcall_old", record, compact)
        if sha_old:
            fns["ratekeeper before (EVALSHA of --before)"] = ratekeeper("old", record, compact)
        if compact:
            fns["(floor) FCALL: TIME, MGET, SET, no logic"] = floor()
        fns[f"limits {kind} window, {spec}"] = limits_hit(spec, kind)
        got: dict = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                got[name].append(usec_per_call(fn))
        print(f"  {label}")
        med = {name: statistics.median(v) for name, v in got.items()}
        for name, us in med.items():
            runs = " ".join(f"{u:.1f}" for u in got[name])
            print(f"    {name:44} {us:6.1f} µs   rounds: {runs}")
        lim = med[f"limits {kind} window, {spec}"]
        print(f"    ratio FCALL / limits = {med['ratekeeper FCALL (library)'] / lim:.2f}")
        if compact:
            print(f"    ratio floor / limits = {med['(floor) FCALL: TIME, MGET, SET, no logic'] / lim:.2f}")
        if fcall_old:
            print(f"    ratio FCALL / FCALL before = "
                  f"{med['ratekeeper FCALL (library)'] / med['ratekeeper before (FCALL of --before)']:.2f}")


# ---------------------------------------------------------------- 2. Flask


def make_app(decorate=lambda view: view):
    from flask import Flask

    app = Flask(__name__)

    @app.get("/")
    @decorate
    def index():
        return "ok"

    return app


def flask_apps(url: str, with_ratekeeper: bool) -> tuple:
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    apps = {"no limiter": make_app()}
    limiter = Limiter(get_remote_address, storage_uri=url, key_prefix="flbench")
    fl_app = make_app(limiter.limit(ROUTE_LIMITS))
    limiter.init_app(fl_app)
    apps["Flask-Limiter redis://"] = fl_app
    engine = None
    if with_ratekeeper:
        import ratekeeper
        from ratekeeper.flask import Ratekeeper

        engine = ratekeeper.Engine.redis(url, prefix="rkflask:")
        rk = Ratekeeper(engine=engine)
        rk_app = make_app(rk.limit(ROUTE_LIMITS))
        rk.init_app(rk_app)
        apps["ratekeeper Engine.redis"] = rk_app
    return apps, engine


def environ_for(i: int) -> dict:
    return {"REMOTE_ADDR": f"203.0.{i // 256 % 4}.{i % 256}"}


def bench_flask(apps: dict, requests: int, rounds: int) -> dict:
    """{app name: (median request ns, overhead ns)} with medians over rounds."""
    clients = {name: app.test_client() for name, app in apps.items()}
    for name, c in clients.items():  # warm-up (loads the scripts), and a sanity check
        for i in range(300):
            r = c.get("/", environ_base=environ_for(i))
            assert r.status_code == 200, (name, r.status_code, r.get_data(as_text=True))
    clock = time.perf_counter_ns
    per_round = {name: [] for name in clients}
    k = 0
    for _ in range(rounds):
        times = {name: [] for name in clients}
        for _ in range(requests):
            env = environ_for(k)
            k += 1
            for name, c in clients.items():
                t = clock()
                c.get("/", environ_base=env)
                times[name].append(clock() - t)
        for name, ts in times.items():
            per_round[name].append(statistics.median(ts))
    base = per_round["no limiter"]
    return {
        name: (statistics.median(ms), statistics.median(m - b for m, b in zip(ms, base)))
        for name, ms in per_round.items()
    }


def flask_traffic(server: RedisServer, apps: dict, engine, n: int) -> dict:
    out = {}
    for name, app in apps.items():
        if name == "no limiter":
            continue
        c = app.test_client()
        it = iter(range(1 << 62))

        def request(c=c, it=it):
            r = c.get("/", environ_base=environ_for(next(it)))
            assert r.status_code == 200

        out[name] = traffic_of(server, request, n, engine if name.startswith("ratekeeper") else None)
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--inside-redis", action="store_true",
                    help="only the table of time inside Redis (no ratekeeper Python package needed)")
    ap.add_argument("--before", metavar="OLD.lua", help="with --inside-redis: an older script to compare")
    args = ap.parse_args()
    if args.inside_redis:
        ensure("limits:limits", "redis:redis")
        server = RedisServer()
        server.start()
        try:
            print(f"redis-server {server.info('server').get('redis_version', '?')} on 127.0.0.1:{server.port}, "
                  f"{os.cpu_count()} CPUs")
            inside_redis(server, 500 if args.quick else 5_000, 3 if args.quick else 5, args.before)
        finally:
            server.close()
        return 0
    calls, repeats, requests, rounds, traffic_n = (
        (300, 3, 300, 3, 200) if args.quick else (2_000, 9, 1_000, 5, 1_000)
    )

    ensure("limits:limits", "flask-limiter:flask_limiter", "flask:flask", "redis:redis")
    import flask_limiter
    import limits
    import ratekeeper
    import redis

    ours = have_ratekeeper_redis()
    server = RedisServer()
    server.start()
    try:
        version = server.info("server").get("redis_version", "?")
        print(f"ratekeeper {ratekeeper.__version__}, limits {limits.__version__}, "
              f"Flask-Limiter {flask_limiter.__version__}, redis-py {redis.__version__}, "
              f"redis-server {version} on 127.0.0.1:{server.port} (pid {server.pid}), "
              f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
        if not ours:
            print("ratekeeper: this build has no Redis backend (Engine.redis): its rows are skipped")

        print(f"\n== one check, one client thread (median of {repeats} batches of {calls:,} calls; "
              f"keys rotate over {N_KEYS:,}; limit {CHECK_LIMIT})")
        floor = floor_checks(server.url)
        theirs = limits_checks(server.url)
        mine, engine = ratekeeper_checks(server.url) if ours else ({}, None)
        lat = per_call_us({**floor, **theirs, **mine}, calls, repeats)
        for name, us in lat.items():
            print(f"  {name:78} {us:7.1f} µs")
        if ours:
            first_mine = lat[next(iter(mine))]
            fixed_mine = lat[next(n for n in mine if "fixed_window" in n)]
            fw = lat["limits RedisStorage FixedWindowRateLimiter.hit"]
            mw = lat["limits RedisStorage MovingWindowRateLimiter.hit"]
            print(f"  ratio ratekeeper gcra / limits FixedWindow   = {first_mine / fw:.3f} (target <= 0.5)")
            print(f"  ratio ratekeeper fixed_window / limits FixedWindow = {fixed_mine / fw:.3f}")
            print(f"  ratio ratekeeper gcra / limits MovingWindow  = {first_mine / mw:.3f}")

        print(f"\n== Redis traffic per check ({traffic_n:,} checks of each alone)")
        for name, fn in {**theirs, **mine}.items():
            print(f"  {name:78} {traffic_of(server, fn, traffic_n, engine if name in mine else None)}")
        if engine is not None:
            engine.close()

        print(f"\n== Flask per request: one route limited to \"{ROUTE_LIMITS}\" vs no limiter "
              f"(test client; {rounds} rounds of {requests:,} interleaved requests from {N_CLIENTS:,} clients; "
              f"median over rounds)")
        apps, fengine = flask_apps(server.url, ours)
        fl = bench_flask(apps, requests, rounds)
        for name, (ns, over) in fl.items():
            extra = "" if name == "no limiter" else f"   overhead {over / 1000:7.1f} µs"
            print(f"  {name:30} {ns / 1000:8.1f} µs{extra}")
        if ours:
            ratio = fl["ratekeeper Engine.redis"][1] / fl["Flask-Limiter redis://"][1]
            print(f"  overhead ratio ratekeeper / Flask-Limiter = {ratio:.3f} (target <= 0.5)")

        print(f"\n== Redis traffic per Flask request ({traffic_n:,} requests of each app alone)")
        for name, text in flask_traffic(server, apps, fengine, traffic_n).items():
            print(f"  {name:30} {text}")
        if fengine is not None:
            s = fengine.redis_stats()
            print(f"  ratekeeper redis_stats at the end: {s}")
            fengine.close()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
