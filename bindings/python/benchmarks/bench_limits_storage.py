"""Flask-Limiter with ``ratekeeper.limits_storage`` beside its own
``memory://`` and ``redis://`` storages, in one run (not a test).

    python3 bindings/python/benchmarks/bench_limits_storage.py [--quick]

1. Flask per-request overhead: one route with ``@limiter.limit(LIMIT)``
   served by Flask's test client, for each storage (``memory://``,
   ``redis://`` on a local redis-server this script starts on a free port
   and stops by PID, ``ratekeeper://``, ``ratekeeper+shm:///dev/shm/...``),
   each limits strategy (fixed-window, moving-window,
   sliding-window-counter) and headers off (one storage call per request:
   the hit) and on (the hit plus the reads of ``get_window_stats``).
   Requests come from 1,000 client addresses; for each configuration the
   apps (one per storage, and one without a limiter) are interleaved (one
   request of each in turn); each round's
   overhead is median(with) - median(without); the median over rounds is
   printed, and its ratio to ``memory://``'s.
2. One hit: the strategy's ``hit`` on the storage alone (no Flask), keys
   rotating over 1,000 clients, median of several timed batches.

The limit is never reached (every request is an allowed, charged hit).
ratekeeper's storages use ``?capacity=4096`` (1,000 clients; the moving
window's sliding log keeps LIMIT timestamps per key). Installs ``limits``,
``flask-limiter`` and ``redis`` with pip if missing; the ``redis://`` rows
are skipped (with a note) without ``redis-server`` on PATH.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
import timeit
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from bench import ensure  # noqa: E402  (this script's directory is on sys.path)

N_CLIENTS = 1_000
LIMIT = "1000/hour"
STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")


def environ_for(i: int) -> dict:
    return {"REMOTE_ADDR": f"203.0.{i // 256 % 4}.{i % 256}"}


def make_app(storage_uri=None, strategy=None, headers=False, prefix=""):
    from flask import Flask

    app = Flask(__name__)
    view = lambda: "ok"  # noqa: E731
    if storage_uri is None:
        app.add_url_rule("/", "index", view)
        return app
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    limiter = Limiter(get_remote_address, app=app, storage_uri=storage_uri, strategy=strategy,
                      headers_enabled=headers, key_prefix=prefix)
    app.add_url_rule("/", "index", limiter.limit(LIMIT)(view))
    return app


def bench_flask(apps: dict, requests: int, rounds: int) -> dict:
    """{app name: overhead ns} (median over rounds of median(with) - median(without))."""
    clients = {name: app.test_client() for name, app in apps.items()}
    for name, c in clients.items():  # warm-up (every client once: first touches) and a sanity check
        for i in range(N_CLIENTS):
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
    return {name: statistics.median(m - b for m, b in zip(ms, base)) for name, ms in per_round.items()}


def bench_hits(storages: dict, calls: int, repeats: int) -> dict:
    """{(storage, strategy): ns per hit}, contenders' batches taking turns."""
    from limits import parse
    from limits.strategies import STRATEGIES as LIMITERS

    item = parse(LIMIT)
    fns = {}
    for sname, storage in storages.items():
        for strategy in STRATEGIES:
            hit = LIMITERS[strategy](storage).hit
            keys = [f"bench-{strategy}-{i}" for i in range(N_CLIENTS)]
            it = iter(range(10**12))

            def run(hit=hit, keys=keys, it=it):
                hit(item, keys[next(it) % N_CLIENTS])

            for _ in range(N_CLIENTS):  # every key once: first touches are not timed
                run()
            fns[(sname, strategy)] = timeit.Timer(run)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, timer in fns.items():
            samples[name].append(timer.timeit(calls) / calls * 1e9)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = ap.parse_args()
    requests, rounds, calls, repeats = (200, 3, 300, 3) if args.quick else (500, 7, 2_000, 7)

    ensure("limits:limits", "flask-limiter:flask_limiter", "flask:flask", "redis:redis")
    import flask_limiter
    import limits
    from limits.storage import storage_from_string

    import ratekeeper
    import ratekeeper.limits_storage  # noqa: F401  registers the schemes

    base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    shm = os.path.join(base, f"rk-bench-limits-{os.getpid()}-{uuid.uuid4().hex[:8]}.rk")
    uris = {
        "memory://": "memory://",
        "ratekeeper://": "ratekeeper://?capacity=4096",
        "ratekeeper+shm://": f"ratekeeper+shm://{shm}?capacity=4096",
    }
    server = None
    if shutil.which("redis-server"):
        from redis_server import RedisServer

        server = RedisServer()
        server.start()
        uris["redis://"] = server.url
    try:
        print(f"ratekeeper {ratekeeper.__version__}, limits {limits.__version__}, "
              f"Flask-Limiter {flask_limiter.__version__}, Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs; limit {LIMIT}, {N_CLIENTS:,} clients")
        if server is None:
            print("redis-server is not on PATH: the redis:// rows are skipped")

        print(f"\n== Flask-Limiter per-request overhead, ns (median over {rounds} rounds of "
              f"{requests} interleaved requests per app; ratio to memory://)")
        names = list(uris)
        print(f"{'strategy':<24}{'headers':<9}" + "".join(f"{n:>26}" for n in names))
        for headers in (False, True):
            for strategy in STRATEGIES:
                # One configuration at a time: the app without a limiter and
                # one app per storage, interleaved (one MemoryStorage alive,
                # as in a real app: its expiry timer thread scans every key).
                apps = {"no limiter": make_app()}
                for sname, uri in uris.items():
                    apps[sname] = make_app(uri, strategy, headers, f"b{uuid.uuid4().hex[:6]}")
                over = bench_flask(apps, requests, rounds)
                ref = over["memory://"]
                cells = "".join(f"{over[n]:>17,.0f} ({over[n] / ref:4.2f}x)" for n in names)
                print(f"{strategy:<24}{'on' if headers else 'off':<9}{cells}", flush=True)
                for app in apps.values():
                    limiter = app.extensions.get("limiter")
                    for ext in (limiter if isinstance(limiter, set) else {limiter} if limiter else set()):
                        timer = getattr(ext.storage, "timer", None)
                        if timer is not None:
                            timer.cancel()

        storages = {n: storage_from_string(u) for n, u in uris.items()}
        print(f"\n== one hit on the storage (strategy.hit, no Flask), ns per call "
              f"(median of {repeats} batches of {calls:,}; ratio to memory://)")
        hits = bench_hits(storages, calls, repeats)
        print(f"{'strategy':<24}" + "".join(f"{n:>26}" for n in names))
        for strategy in STRATEGIES:
            ref = hits[("memory://", strategy)]
            print(f"{strategy:<24}" + "".join(
                f"{hits[(n, strategy)]:>17,.0f} ({hits[(n, strategy)] / ref:4.2f}x)" for n in names))
        timer = getattr(storages["memory://"], "timer", None)
        if timer is not None:
            timer.cancel()
    finally:
        if server is not None:
            server.close()
        if os.path.exists(shm):
            os.unlink(shm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
