"""What ratekeeper.asgi costs the event loop per request (not a test).

    python3 bindings/python/benchmarks/bench_asgi.py [--quick]

1. The engine call the middleware makes inline: ``policy.check(key)`` of an
   in-process engine and of a shared-file engine (/dev/shm), keys rotating
   over 10,000 clients, never over the limit. Median of timed batches, ns
   per call.
2. The whole middleware per request, no server: a trivial ASGI app called
   directly (one ``http.response.start`` and one body) with and without
   ``Ratekeeper(default="1000000/hour").wrap(app)`` on a shared-file engine,
   in one event loop; one call of each in turn, timed one by one;
   overhead = median(with) - median(without), µs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import ratekeeper
from ratekeeper.asgi import Ratekeeper


def engine_call(policy: ratekeeper.Policy, n: int) -> float:
    keys = [f"client-{i}" for i in range(10_000)]
    batches = []
    for _ in range(7):
        t = time.perf_counter_ns()
        for i in range(n):
            policy.check(keys[i % 10_000])
        batches.append((time.perf_counter_ns() - t) / n)
    return statistics.median(batches)


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def per_request(n: int, path: str) -> tuple:
    rk = Ratekeeper(engine=ratekeeper.Engine.shared(path), default="1000000/hour")
    wrapped = rk.wrap(app)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    def scope(i: int) -> dict:
        return {"type": "http", "method": "GET", "path": "/x", "headers": [(b"host", b"t")],
                "client": (f"10.0.{i % 100}.{i % 250}", 1234)}

    plain, limited = [], []
    for i in range(n):
        s = scope(i)
        t = time.perf_counter_ns()
        await app(s, receive, send)
        plain.append(time.perf_counter_ns() - t)
        s = scope(i)
        t = time.perf_counter_ns()
        await wrapped(s, receive, send)
        limited.append(time.perf_counter_ns() - t)
    return statistics.median(plain) / 1000, statistics.median(limited) / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(base, f"rk-bench-asgi-{os.getpid()}.rk")
    try:
        with ratekeeper.Engine() as local:
            print(f"policy.check, in-process engine: {engine_call(local.policy('p', '1000000/hour'), n):.0f} ns")
        with ratekeeper.Engine.shared(path) as shared:
            print(f"policy.check, shared-file engine: {engine_call(shared.policy('p', '1000000/hour'), n):.0f} ns")
        plain, limited = asyncio.run(per_request(n // 10, path))
        print(f"ASGI request, no middleware: {plain:.1f} µs; with the middleware: {limited:.1f} µs; "
              f"overhead {limited - plain:.1f} µs")
    finally:
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
