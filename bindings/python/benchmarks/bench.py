"""ratekeeper's Python binding against `limits` and Flask-Limiter, side by side
in one run (not a test).

    python3 bindings/python/benchmarks/bench.py [--quick]

1. One check: ``policy.check(key)`` (str key, encoding included) vs
   ``limits`` MemoryStorage ``hit`` with FixedWindowRateLimiter,
   MovingWindowRateLimiter and SlidingWindowCounterRateLimiter.
   Keys rotate over 10,000 clients, limits are never reached (every call is
   an allowed, charged hit). Median of several timed batches, ns per call.
2. Flask per-request overhead: the same trivial route served by Flask's test
   client with no limiter, with ratekeeper (every header on: RateLimit,
   RateLimit-Policy, legacy X-RateLimit-*) and with Flask-Limiter
   (``memory://``, headers on). Requests are interleaved (one of each in
   turn) and timed one by one; overhead = median(with) - median(without).

``--against PYTHON`` runs the same measurements, in the same run, under
another interpreter with another build of ratekeeper installed (e.g. the
previous release's venv) and prints both side by side (``--json``: the
numbers of this interpreter only, as JSON).

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


def measure(quick: bool) -> dict:
    calls, repeats, requests = (20_000, 5, 1_000) if quick else (200_000, 9, 5_000)
    rk = bench_ratekeeper_check(calls, repeats)
    lim = bench_limits(calls // 4, repeats)
    fl = bench_flask(requests)
    return {"check": rk, "limits": lim, "flask": fl, "calls": calls, "repeats": repeats, "requests": requests}


def report(m: dict, label: str) -> None:
    rk, lim, fl = m["check"], m["limits"], m["flask"]
    print(f"\n== {label}: one check (median of {m['repeats']} batches of {m['calls']:,} calls; "
          f"keys rotate over {N_KEYS:,})")
    ours = rk["policy.check(str key)"]
    for name, ns in rk.items():
        print(f"  {name:44} {ns:9.0f} ns")
    for name, ns in lim.items():
        print(f"  {name:44} {ns:9.0f} ns   ratekeeper is {ns / ours:5.1f}x faster (ratio {ours / ns:.3f})")
    print(f"== {label}: Flask per request (test client, trivial route; median of {m['requests']:,} "
          "interleaved requests)")
    base = fl["no limiter"]
    for name, ns in fl.items():
        print(f"  {name:30} {ns / 1000:8.1f} us   overhead {(ns - base) / 1000:7.1f} us")
    theirs = fl["Flask-Limiter memory://"] - base
    print(f"  overhead ratio ratekeeper / Flask-Limiter = {(fl['ratekeeper (all headers)'] - base) / theirs:.3f} "
          "(target <= 0.08)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--json", action="store_true", help="print this interpreter's numbers as JSON")
    ap.add_argument("--against", metavar="PYTHON", help="also measure under this interpreter, side by side")
    args = ap.parse_args()

    ensure("limits:limits", "flask-limiter:flask_limiter", "flask:flask")
    import ratekeeper

    if args.json:
        print(json.dumps(measure(args.quick)))
        return 0
    print(f"ratekeeper {ratekeeper.__version__} ({os.path.dirname(ratekeeper.__file__)}), "
          f"Python {sys.version.split()[0]}")
    other = None
    if args.against:
        cmd = [args.against, os.path.abspath(__file__), "--json"] + (["--quick"] if args.quick else [])
        other = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    mine = measure(args.quick)
    if other is not None:
        report(other, f"against ({args.against})")
    report(mine, "this interpreter")
    if other is not None:
        print("\n== side by side (against -> this)")
        for name in mine["check"]:
            print(f"  {name:44} {other['check'][name]:7.0f} ns -> {mine['check'][name]:7.0f} ns")
        for m, who in ((other, "against"), (mine, "this")):
            base = m["flask"]["no limiter"]
            ratio = (m["flask"]["ratekeeper (all headers)"] - base) / (m["flask"]["Flask-Limiter memory://"] - base)
            fixed = m["check"]["policy.check(str key)"] / m["limits"]["limits FixedWindowRateLimiter.hit"]
            print(f"  {who:8} check / limits FixedWindow hit = {fixed:.3f}; Flask overhead / Flask-Limiter = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
