"""Starts the demo API under `gunicorn -w 4` on 127.0.0.1 (a free port) with
its limits in one shared file, sends a bounded burst from several simulated
clients, prints what passed and what was throttled per client and one full
429, then stops gunicorn by its PID and removes the file. Bounded: < 200
requests, 45 s at most."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE = time.monotonic() + 45

# (label, headers, requests); all arrive through one proxy at 127.0.0.1,
# which appends the client's address to X-Forwarded-For.
CLIENTS = [
    ("partner key (10/minute)", {"X-API-Key": "partner-acme", "X-Forwarded-For": "192.0.2.10"}, 14),
    ("free key (4/minute)", {"X-API-Key": "free-bob", "X-Forwarded-For": "192.0.2.11"}, 14),
    ("no key, 203.0.113.7", {"X-Forwarded-For": "203.0.113.7"}, 10),
    ("no key, spoofs XFF", {"X-Forwarded-For": "1.2.3.4, 198.51.100.23"}, 10),
    ("IPv6 2001:db8:1:2::1", {"X-Forwarded-For": "2001:db8:1:2::1"}, 5),
    ("IPv6 2001:db8:1:2::99 (same /64)", {"X-Forwarded-For": "2001:db8:1:2::99"}, 5),
]


def children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def get(port: int, path: str, headers: dict):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.reason, r.getheaders(), r.read().decode()
    finally:
        conn.close()


def main() -> int:
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(shm, f"ratekeeper-demo-{os.getpid()}.rk")
    log_path = os.path.join(tempfile.gettempdir(), f"ratekeeper-demo-{os.getpid()}.log")
    env = dict(os.environ, RATEKEEPER_SHARED_PATH=path)
    log = open(log_path, "w")
    print(f"== starting gunicorn -w 4 (shared limits in {path})")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn_conf.py", "app:app"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    workers: set = set()
    try:
        port = None
        while time.monotonic() < DEADLINE and proc.poll() is None:
            with open(log_path) as f:
                m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", f.read())
            if m and len(children(proc.pid)) == 4:
                port = int(m.group(1))
                break
            time.sleep(0.05)
        if port is None:
            print("gunicorn did not start:")
            print(open(log_path).read())
            return 1
        workers.update(children(proc.pid))
        print(f"   master pid {proc.pid}, workers {sorted(workers)}, http://127.0.0.1:{port}\n")

        jobs = [(label, headers) for label, headers, n in CLIENTS for _ in range(n)]
        results = defaultdict(list)
        served_by = defaultdict(set)  # workers that answered a client's passed requests
        first_429 = None

        def send(job):
            label, headers = job
            return label, get(port, "/api/search", headers)

        with ThreadPoolExecutor(6) as pool:
            for label, (status, reason, headers, body) in pool.map(send, jobs):
                results[label].append(status)
                m = re.search(r'"worker":\s*(\d+)', body) if status == 200 else None
                if m:
                    served_by[label].add(int(m.group(1)))
                if status == 429 and first_429 is None and "free" in label:
                    first_429 = (status, reason, headers, body)
                if time.monotonic() > DEADLINE:
                    break

        print(f"{'client':36} {'sent':>4} {'passed':>6} {'throttled':>9}  passed via workers")
        for label, _, _ in CLIENTS:
            c = Counter(results[label])
            via = ", ".join(str(p) for p in sorted(served_by[label])) or "-"
            print(f"{label:36} {len(results[label]):>4} {c[200]:>6} {c[429]:>9}  {via}")

        seen = Counter()
        for _ in range(24):
            status, _, _, body = get(port, "/healthz", {})
            m = re.search(r'"worker":\s*(\d+)', body)
            if m:
                seen[int(m.group(1))] += 1
        print(f"\n(/healthz is exempt; 24 calls were answered by {len(seen)} different workers)")

        if first_429:
            status, reason, headers, body = first_429
            print("\n== one 429, in full:")
            print(f"HTTP/1.1 {status} {reason}")
            for name, value in headers:
                print(f"{name}: {value}")
            print()
            print(body)

        import ratekeeper

        with ratekeeper.Engine.shared(path) as engine:
            print("\n== totals in the shared file (all 4 workers together):")
            for policy in engine.policies():
                st = policy.stats()
                print(f"   {policy.name:22} allowed {st.allowed:3}  denied {st.denied:3}  keys {st.occupancy}")
        return 0
    finally:
        workers.update(children(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        for p in (path, log_path):
            if os.path.exists(p):
                os.unlink(p)
        print(f"\n== stopped gunicorn (pid {proc.pid}) and removed {path}")


if __name__ == "__main__":
    sys.exit(main())
