"""ratekeeper's Python binding against `limits` and Flask-Limiter, side by side
in one run (not a test).

    python3 bindings/python/benchmarks/bench.py [--quick]

1. One check: ``policy.check(key)`` (str key, encoding included) vs
   ``limits`` MemoryStorage ``hit`` with FixedWindowRateLimiter,
   MovingWindowRateLimiter and SlidingWindowCounterRateLimiter; plus
   ratekeeper's cffi-only path (``RATEKEEPER_NO_SPEEDUPS=1``, a subprocess).
   Keys rotate over 10,000 clients, limits are never reached (every call is
   an allowed, charged hit). Median of several timed batches, ns per call.
2. Flask per-request overhead: the same trivial route served by Flask's test
   client with no limiter, with ratekeeper (every header on: RateLimit,
   RateLimit-Policy, legacy X-RateLimit-*) and with Flask-Limiter
   (``memory://``, headers on). Requests are interleaved (one of each in
   turn) and timed one by one; overhead = median(with) - median(without).

Installs ``limits`` and ``flask-limiter`` with pip if they are missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import timeit

N_KEYS = 10_000


def ensure(*packages: str) -> None:
    missing = []
    for pkg, module in (p.split(":") for p in packages):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pkg)
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        importlib.invalidate_caches()


def per_call_ns(fn, calls: int, repeats: int) -> float:
    """Median over `repeats` batches of `calls` calls, in ns per call."""
    timer = timeit.Timer(fn)
    return statistics.median(t / calls * 1e9 for t in timer.repeat(repeat=repeats, number=calls))


def bench_ratekeeper_check(calls: int, repeats: int) -> dict:
    import ratekeeper

    engine = ratekeeper.Engine()
    policy = engine.policy("bench", "100000000/hour")
    keys = [f"ip:10.{i // 256 % 256}.{i % 256}.{i // 65536}" for i in range(N_KEYS)]
    bkeys = [k.encode() for k in keys]
    check = policy.check
    it = iter(range(1 << 62))

    def str_key():
        check(keys[next(it) % N_KEYS])

    def bytes_key():
        check(bkeys[next(it) % N_KEYS])

    now = ratekeeper.now_ns()

    def explicit_now():
        check(keys[next(it) % N_KEYS], 1, now)

    def loop_only():
        keys[next(it) % N_KEYS]

    for k in keys:  # warm: every key tracked
        check(k)
    out = {
        "policy.check(str key)": per_call_ns(str_key, calls, repeats),
        "policy.check(bytes key)": per_call_ns(bytes_key, calls, repeats),
        "policy.check(key, 1, now_ns)": per_call_ns(explicit_now, calls, repeats),
        "(loop and key lookup alone)": per_call_ns(loop_only, calls, repeats),
    }
    engine.close()
    return out


def bench_limits(calls: int, repeats: int) -> dict:
    from limits import parse, storage, strategies

    item = parse("100000000/hour")
    keys = [f"ip:10.{i // 256 % 256}.{i % 256}.{i // 65536}" for i in range(N_KEYS)]
    out = {}
    for cls in (
        strategies.FixedWindowRateLimiter,
        strategies.MovingWindowRateLimiter,
        strategies.SlidingWindowCounterRateLimiter,
    ):
        limiter = cls(storage.MemoryStorage())
        hit = limiter.hit
        it = iter(range(1 << 62))

        def run():
            hit(item, keys[next(it) % N_KEYS])

        for k in keys:
            hit(item, k)
        out[f"limits {cls.__name__}.hit"] = per_call_ns(run, calls, repeats)
    return out


def flask_apps():
    from flask import Flask
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from ratekeeper.flask import Ratekeeper

    def make():
        app = Flask(__name__)

        @app.get("/")
        def index():
            return "ok"

        return app

    bare = make()
    rk_app = make()
    Ratekeeper(rk_app, default="100000000/hour", headers_enabled=True, legacy_headers=True)
    fl_app = make()
    Limiter(get_remote_address, app=fl_app, default_limits=["100000000/hour"], storage_uri="memory://",
            headers_enabled=True)
    return {"no limiter": bare, "ratekeeper (all headers)": rk_app, "Flask-Limiter memory://": fl_app}


def bench_flask(requests: int) -> dict:
    apps = flask_apps()
    clients = {name: app.test_client() for name, app in apps.items()}
    env = {"REMOTE_ADDR": "203.0.113.7"}
    for c in clients.values():  # warm-up
        for _ in range(200):
            assert c.get("/", environ_base=env).status_code == 200
    r = clients["ratekeeper (all headers)"].get("/", environ_base=env)
    assert "RateLimit" in r.headers and "X-RateLimit-Limit" in r.headers, r.headers
    r = clients["Flask-Limiter memory://"].get("/", environ_base=env)
    assert "X-RateLimit-Limit" in r.headers, r.headers
    times = {name: [] for name in clients}
    clock = time.perf_counter_ns
    for _ in range(requests):
        for name, c in clients.items():
            t = clock()
            c.get("/", environ_base=env)
            times[name].append(clock() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--check-only-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    calls, repeats, requests = (20_000, 5, 1_000) if args.quick else (200_000, 9, 5_000)

    if args.check_only_json:  # the cffi-only subprocess
        print(json.dumps(bench_ratekeeper_check(calls // 4, repeats)))
        return 0

    ensure("limits:limits", "flask-limiter:flask_limiter", "flask:flask")
    import ratekeeper
    from ratekeeper import _native

    print(f"ratekeeper {ratekeeper.__version__}, Python {sys.version.split()[0]}, "
          f"C fast path: {'yes' if _native.speedups is not None else 'no'}")
    print(f"\n== one check (median of {repeats} batches of {calls:,} calls; keys rotate over {N_KEYS:,})")
    rk = bench_ratekeeper_check(calls, repeats)
    lim = bench_limits(calls // 4, repeats)
    env = dict(os.environ, RATEKEEPER_NO_SPEEDUPS="1")
    cffi_only = json.loads(subprocess.run(
        [sys.executable, __file__, "--check-only-json"] + (["--quick"] if args.quick else []),
        env=env, check=True, capture_output=True, text=True).stdout)
    ours = rk["policy.check(str key)"]
    for name, ns in rk.items():
        print(f"  {name:44} {ns:9.0f} ns")
    print(f"  {'policy.check(str key), cffi only (no C fast path)':44} {cffi_only['policy.check(str key)']:9.0f} ns")
    for name, ns in lim.items():
        print(f"  {name:44} {ns:9.0f} ns   ratekeeper is {ns / ours:5.1f}x faster (ratio {ours / ns:.3f})")

    print(f"\n== Flask per request (test client, trivial route; median of {requests:,} interleaved requests)")
    fl = bench_flask(requests)
    base = fl["no limiter"]
    for name, ns in fl.items():
        over = ns - base
        print(f"  {name:30} {ns / 1000:8.1f} us   overhead {over / 1000:7.1f} us")
    ours = fl["ratekeeper (all headers)"] - base
    theirs = fl["Flask-Limiter memory://"] - base
    print(f"  overhead ratio ratekeeper / Flask-Limiter = {ours / theirs:.3f} (target <= 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
