#!/usr/bin/env python3
"""Requests per second of one Flask app under uWSGI, three ways, in one run:

  none    no limiter: every request enters Python and gets 200;
  plugin  the ratekeeper uWSGI plugin in the router (bindings/uwsgi): after
          the first 100, every request is denied with a 429 written in C,
          without entering Python;
  flask   the Flask extension (ratekeeper.flask) on the same limit: the 429s
          are written by Python.

    python3 benches/uwsgi_bench.py                    # prints the table
    python3 benches/uwsgi_bench.py --update-report    # and puts it in benches/REPORT.md

Each server is `uwsgi --master --processes 4 --http11-socket 127.0.0.1:<port>
--disable-logging` (workers speak HTTP/1.1 with keep-alive themselves: no router process between
wrk and the worker, so the table compares what the workers do); load is
`wrk -t2 -c32` on 127.0.0.1 for --seconds (default 10) per round, the
three servers in turn, --rounds rounds (default 3), each figure the median
of its rounds. The limit is `100/hour` per client address: at this load
nearly every request of `plugin` and `flask` is denied (the table says how
many). Builds what it needs in a temporary directory: the C library
(`make install`, reusing CARGO_TARGET_DIR's release build), the plugin
(`uwsgi --build-plugin`), and a venv of the python3 that Debian's uWSGI
embeds with Flask and this repository's Python package. Installs wrk,
uwsgi-core and uwsgi-plugin-python3 with apt-get if missing. Stops every
server by its master's PID; removes its files.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
APP = ROOT / "benches" / "uwsgi_bench_app.py"
SPEC = "100/hour"
CONFIGS = ("none", "plugin", "flask")


def sh(cmd, **kw):
    """Runs a setup command. Its output goes to stderr unless redirected:
    stdout is the table alone (report.py puts it in benches/REPORT.md)."""
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    kw.setdefault("stdout", sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def need_packages():
    need = []
    if not shutil.which("wrk"):
        need.append("wrk")
    if not shutil.which("uwsgi"):
        need.append("uwsgi-core")
    if not Path("/usr/lib/uwsgi/plugins/python3_plugin.so").exists():
        need.append("uwsgi-plugin-python3")
    if not shutil.which("pkg-config"):
        need.append("pkg-config")
    if subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip"], capture_output=True).returncode:
        need.append("python3-venv")
    # Headers that Debian's uwsgi.h includes (its build has capabilities,
    # UUIDs, SSL, PCRE and zlib); `uwsgi --build-plugin` needs them.
    for header, package in [("sys/capability.h", "libcap-dev"), ("uuid/uuid.h", "uuid-dev"),
                            ("openssl/ssl.h", "libssl-dev"), ("pcre.h", "libpcre3-dev"),
                            ("zlib.h", "zlib1g-dev")]:
        probe = subprocess.run(["gcc", "-E", "-x", "c", "-"], input=f"#include <{header}>\n",
                               capture_output=True, text=True)
        if probe.returncode:
            need.append(package)
    if need:
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", *need], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build(work):
    prefix = work / "prefix"
    sh(["make", "-s", "install", f"PREFIX={prefix}", f"CARGO_TARGET_DIR={TARGET}"], cwd=ROOT)
    env = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}
    sh(["uwsgi", "--build-plugin", ROOT / "bindings" / "uwsgi"], cwd=work, env=env, stdout=subprocess.DEVNULL)
    # The interpreter Debian's python3 plugin embeds is /usr/bin/python3.
    venv = work / "venv"
    sh(["/usr/bin/python3", "-m", "venv", venv])
    pip_env = {**os.environ, "RATEKEEPER_STATIC_LIB": str(TARGET / "release" / "libratekeeper.a")}
    sh([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "flask", ROOT / "bindings" / "python"],
       env=pip_env)
    return work / "ratekeeper_plugin.so", venv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config, plugin, venv, work):
    port = free_port()
    shm = Path(f"/dev/shm/rk-uwsgi-bench-{os.getpid()}-{config}.rk")
    plugins = f"python3,{plugin}" if config == "plugin" else "python3"
    cmd = ["uwsgi", "--plugin-dir", "/usr/lib/uwsgi/plugins", "--plugins", plugins, "--master", "--processes", "4",
           "--http11-socket", f"127.0.0.1:{port}", "--wsgi-file", APP, "--virtualenv", venv, "--disable-logging"]
    if config == "plugin":
        cmd += ["--ratekeeper-file", shm, "--route", f"^/ ratekeeper:policy=bench,spec={SPEC},key=${{REMOTE_ADDR}}"]
    if config == "flask":
        cmd += ["--env", f"BENCH_FLASK_LIMIT={SPEC}", "--env", f"RATEKEEPER_SHARED_PATH={shm}"]
    log = open(work / f"{config}.log", "ab")
    with log:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{config}: uwsgi exited at startup:\n" + (work / f"{config}.log").read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                if c.recv(64).startswith(b"HTTP/1."):
                    return proc, port, shm
        except OSError:
            time.sleep(0.1)
    stop(proc, shm)
    raise SystemExit(f"{config}: uwsgi did not answer in 60 s")


def stop(proc, shm):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if shm.exists():
        shm.unlink()


def wrk(port, seconds):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, total, int(m.group(1)) if m else 0, errors.group(1) if errors else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--update-report", action="store_true", help="put the table in benches/REPORT.md")
    args = ap.parse_args()
    need_packages()
    work = Path(tempfile.mkdtemp(prefix="rk-uwsgi-bench."))
    try:
        plugin, venv = build(work)
        runs = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            for config in CONFIGS:
                proc, port, shm = start(config, plugin, venv, work)
                try:
                    wrk(port, 1)  # warm up: imports, the first 100 allowed
                    runs[config].append(wrk(port, args.seconds))
                finally:
                    stop(proc, shm)
                print(f"round {r + 1} {config}: {runs[config][-1][0]:.0f} req/s", file=sys.stderr, flush=True)
        text = table(runs, args)
        print(text)
        if args.update_report:
            sys.path.insert(0, str(ROOT / "benches"))
            import report

            report.update_uwsgi_section(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(runs, args):
    med = {c: statistics.median(r[0] for r in runs[c]) for c in CONFIGS}
    lines = [
        f"uWSGI {subprocess.run(['uwsgi', '--version'], capture_output=True, text=True).stdout.strip()}, "
        f"4 worker processes, --http11-socket, wrk -t2 -c32, {args.rounds} rounds of {args.seconds} s "
        f"(median), limit {SPEC} per client address, {os.cpu_count()} CPUs",
        "",
        f"{'':8} {'req/s':>9} {'denied':>8} {'us/request':>11} {'vs plugin':>10}   req/s of each round",
    ]
    for c in CONFIGS:
        total = sum(r[1] for r in runs[c])
        denied = sum(r[2] for r in runs[c])
        rounds = " ".join(f"{r[0]:.0f}" for r in runs[c])
        lines.append(f"{c:8} {med[c]:9.0f} {100.0 * denied / max(1, total):7.1f}% {1e6 / med[c]:11.1f} "
                     f"{med['plugin'] / med[c]:9.2f}x   {rounds}")
    lines += [
        "",
        f"a request denied by the plugin costs {med['none'] / med['plugin']:.2f}x one that enters Python "
        f"and gets 200 (none), {med['flask'] / med['plugin']:.2f}x one denied by the Flask extension",
    ]
    errs = [f"{c}: {r[3]}" for c in CONFIGS for r in runs[c] if r[3]]
    if errs:
        lines.append("wrk socket errors: " + "; ".join(errs))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
