#!/usr/bin/env python3
"""How many checks per second one redis-server sustains before its latency
climbs: ratekeeper (1 limit, 2 limits, a one-key flood with and without the
deny cache) beside ``limits`` RedisStorage fixed window (1 limit; 2 limits
= 2 calls per request, as Flask-Limiter makes them; a one-key flood).

    CARGO_TARGET_DIR=/work/target-redis cargo build --release --example redis_capacity
    python3 benches/redis_capacity.py [--quick] [--procs 4] [--threads 8] [--seconds 2]

Starts one redis-server (127.0.0.1, a free port, no persistence; stopped by
its PID), then for each scenario and offered load starts ``--procs`` client
processes (examples/redis_capacity.rs, open loop, each check timed from its
scheduled start, so queueing shows), and prints per load: achieved checks
per second, p50 and p99 latency, the redis-server's CPU use (from
/proc/PID/stat) and its commands per check. A scenario stops climbing once
its p50 passes 5 ms or it falls 10% behind the offered load (p99 alone
is not a stop: on a shared machine one scheduling hiccup can spike it). Writes
benches/plots/redis_capacity.png (p50 and p99 against offered load) and
the table as markdown on stdout.

The ``limits`` rows send the very script ``limits`` 5.x sends for a fixed
window hit (``incr_expire.lua``, read from the installed ``limits`` package)
from the same Rust client, so both sides are driven alike and the figures
are the server's capacity, not a Python client's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings" / "python" / "tests"))
from redis_server import RedisServer  # noqa: E402

SCENARIOS = [
    ("rk1", "ratekeeper, gcra 1 limit"),
    ("rk2", "ratekeeper, 2 limits (1 call)"),
    ("lim1", "limits fixed window, 1 limit"),
    ("lim2", "limits fixed window, 2 limits (2 calls)"),
    ("rkflood-nocache", "ratekeeper, one-key flood, no deny cache"),
    ("rkflood", "ratekeeper, one-key flood, deny cache"),
    ("lim2flood", "limits, one-key flood, 2 limits (2 calls)"),
]


def cpu_ticks(pid: int) -> int:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def pct(xs: list, p: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def run_level(binary: Path, server: RedisServer, script: str, scenario: str, rate: int, procs: int,
              threads: int, seconds: float) -> dict:
    start = time.time_ns() + 1_500_000_000  # every process connected by then
    calls0 = sum(server.commandstats("calls").values())
    args = [server.url, scenario, str(rate / procs), str(threads), str(int(seconds * 1000)), str(start), script]
    ps = [subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    while time.time_ns() < start:
        time.sleep(0.01)
    t0, c0 = time.monotonic(), cpu_ticks(server.pid)
    outs = [p.communicate()[0] for p in ps]
    wall, c1 = time.monotonic() - t0, cpu_ticks(server.pid)
    calls1 = sum(server.commandstats("calls").values())
    lat, done, fallback = [], 0, 0
    for o in outs:
        f = o.split()
        done += int(f[0])
        fallback += int(f[1])
        lat.extend(int(x) for x in f[2:])
    lat.sort()
    return {
        "offered": rate,
        # Completed over the time from the first scheduled check to the
        # last process's exit (a server that falls behind takes longer).
        "achieved": done / max(wall, seconds),
        "behind_s": wall - seconds,
        "p50_us": pct(lat, 0.50),
        "p99_us": pct(lat, 0.99),
        "redis_cpu": (c1 - c0) / os.sysconf("SC_CLK_TCK") / wall,
        "cmds_per_check": (calls1 - calls0) / max(done, 1),
        "fallback": fallback,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--scenarios", default=",".join(s for s, _ in SCENARIOS))
    ap.add_argument("--update-report", action="store_true",
                    help="also write the section of benches/REPORT.md (report.py keeps it)")
    ap.add_argument("--inside", metavar="FILE",
                    help="with --update-report: the output of bench_redis.py --inside-redis to include")
    args = ap.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release" / "examples" / "redis_capacity"
    if not binary.exists():
        sys.exit(f"{binary} is missing: cargo build --release --example redis_capacity")
    import limits

    script = str(Path(limits.__file__).parent / "resources" / "redis" / "lua_scripts" / "incr_expire.lua")
    levels = [2_000, 8_000, 32_000] if args.quick else [1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000,
                                                        40_000, 60_000, 80_000]
    server = RedisServer()
    server.start()
    results: dict = {}
    text: list = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        text.append(line)

    try:
        version = server.info("server").get("redis_version", "?")
        say(f"redis-server {version} on 127.0.0.1:{server.port} (pid {server.pid}), {os.cpu_count()} CPUs, "
              f"{args.procs} client processes x {args.threads} threads, {args.seconds:g} s per load, "
              f"limits {limits.__version__}")
        wanted = args.scenarios.split(",")
        for scenario, label in SCENARIOS:
            if scenario not in wanted:
                continue
            results[scenario] = []
            say(f"\n{label} ({scenario})")
            say("  offered/s  achieved/s    p50 µs    p99 µs  redis CPU  cmds/check")
            for rate in levels:
                row = run_level(binary, server, script, scenario, rate, args.procs, args.threads, args.seconds)
                results[scenario].append(row)
                say(f"  {row['offered']:9,} {row['achieved']:11,.0f} {row['p50_us']:9,} {row['p99_us']:9,} "
                    f"{row['redis_cpu']:9.0%} {row['cmds_per_check']:11.2f}"
                    + (f"  ({row['fallback']} fallback decisions)" if row["fallback"] else ""))
                if row["p50_us"] > 5_000 or row["achieved"] < 0.9 * rate:
                    break
    finally:
        server.close()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in ((axes[0], "p50_us", "p50"), (axes[1], "p99_us", "p99")):
        for scenario, label in SCENARIOS:
            rows = results.get(scenario)
            if not rows:
                continue
            ax.plot([r["offered"] for r in rows], [r[key] / 1000 for r in rows], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered checks per second (open loop)")
        ax.set_title(f"{title} latency, one redis-server")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    out = ROOT / "benches" / "plots" / "redis_capacity.png"
    fig.savefig(out, dpi=100)
    print(f"\nwrote {out.relative_to(ROOT)}")
    if args.update_report:
        update_report(text, args)
    return 0


HEADING = "## Redis: time inside Redis and capacity of one server"


def update_report(text: list, args) -> None:
    """Writes the section into benches/REPORT.md, in place of the old one
    (or before the uWSGI section), leaving every other section alone."""
    report = ROOT / "benches" / "REPORT.md"
    new = [HEADING, ""]
    if args.inside:
        new += [
            "Time inside Redis per check (`INFO commandstats` µs per `FCALL`/`EVALSHA`, the commands "
            "ratekeeper's client sends, beside `limits` RedisStorage), one run:",
            "`python3 bindings/python/benchmarks/bench_redis.py --inside-redis --before OLD.lua` "
            "(OLD.lua: the script before protocol 2)",
            "",
            "```",
            *Path(args.inside).read_text().rstrip().splitlines(),
            "```",
            "",
        ]
    new += [
        "Capacity: open-loop load from several client processes on 127.0.0.1 against one redis-server, "
        "p50/p99 latency against offered load, one run:",
        f"`python3 benches/redis_capacity.py --procs {args.procs} --threads {args.threads} "
        f"--seconds {args.seconds:g}` (client processes: `examples/redis_capacity.rs`; "
        "the clients share the machine's cores with the server, whose CPU use is shown)",
        "",
        "![p50 and p99 latency against offered load](plots/redis_capacity.png)",
        "",
        "```",
        *[line for line in text if line is not None],
        "```",
    ]
    lines = report.read_text().splitlines()
    if HEADING in lines:
        start = lines.index(HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new + ([""] if end < len(lines) else [])
    else:
        uwsgi = next((i for i, l in enumerate(lines) if l.startswith("## uWSGI")), len(lines))
        lines[uwsgi:uwsgi] = new + [""]
    report.write_text("\n".join(lines) + "\n")
    print(f"updated {report.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
