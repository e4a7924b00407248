"""A real `gunicorn -w 4` on 127.0.0.1 sharing one file: exactly the quota
passes, also when a worker is SIGKILLed mid-traffic. Gunicorn is always
stopped by its PID."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import pytest

import ratekeeper

pytest.importorskip("gunicorn")
HERE = os.path.dirname(os.path.abspath(__file__))


def children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from gunicorn_server(tmp_path_factory, "gunicorn-test")


def gunicorn_server(tmp_path_factory, tag: str, env: Optional[dict] = None, n_workers: int = 4,
                    conf: str = "gunicorn_conf.py", app: str = "gunicorn_app:app",
                    args: Sequence[str] = (), start_timeout: float = 30):
    """Runs `gunicorn -w N` (``conf``, default gunicorn_conf.py, and ``app``,
    default gunicorn_app:app; test_asgi.py serves its app with UvicornWorker) on
    127.0.0.1 with a shared file of its own (and `env` added to its
    environment); yields {port, pid, path, workers, log}; stops it by PID
    and removes the file."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path_factory.mktemp("shm"))
    path = os.path.join(base, f"rk-{tag}-{os.getpid()}.rk")
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = dict(os.environ, RATEKEEPER_SHARED_PATH=path, **(env or {}))
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", conf, "-w", str(n_workers), *args, app],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    workers: set = set()
    try:
        port = None
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log_path.read_text())
            if m and len(children(proc.pid)) == n_workers:
                port = int(m.group(1))
                break
            time.sleep(0.05)
        assert port, "gunicorn did not start:\n" + log_path.read_text()
        wait_for_every_worker(port, n_workers, log_path)
        yield {"port": port, "pid": proc.pid, "path": path, "workers": workers, "log": log_path}
    finally:
        workers.update(children(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in workers:  # by PID, in case any outlived the master
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        if os.path.exists(path):
            os.unlink(path)


def wait_for_every_worker(port: int, n_workers: int, log_path) -> None:
    """Returns once each of the n_workers workers has answered a request.
    A worker is forked before it has imported the app; on a loaded machine
    the first ones ready would otherwise serve a whole burst, and a test
    of exactness across workers would run on one. Rounds of 2N concurrent
    /nap requests (each holds a sync worker for 0.2 s) reach every worker
    that accepts connections."""
    seen: set = set()
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(2 * n_workers) as pool:
        while len(seen) < n_workers:
            assert time.monotonic() < deadline, (
                f"only {len(seen)} of {n_workers} workers answered in 60 s:\n" + log_path.read_text()
            )
            seen |= {p for _, p in pool.map(lambda _: request(port, "/nap"), range(2 * n_workers)) if p}


def request(port: int, path: str, retries: int = 5):
    """GET -> (status, pid). A connection dropped by a killed worker is
    retried (it was not answered, so it is not counted)."""
    for attempt in range(retries):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            pid = json.loads(body).get("pid") if r.status == 200 else None
            return r.status, pid
        except (ConnectionError, http.client.HTTPException, OSError):
            if attempt == retries - 1:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


def test_four_workers_admit_exactly_20_of_200(server):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: request(server["port"], "/limited"), range(200)))
    codes = [status for status, _ in results]
    assert codes.count(200) == 20 and codes.count(429) == 180
    pids = {request(server["port"], "/pid")[1] for _ in range(40)} | {p for _, p in results if p}
    assert len(pids) >= 2, "the requests should have been spread over several workers"
    with ratekeeper.Engine.shared(server["path"]) as e:
        st = e.find_policy("flask:20/minute").stats()
        assert st.allowed == 20


def test_a_worker_sigkilled_mid_traffic_changes_nothing(server):
    port, master = server["port"], server["pid"]
    codes = []
    killed = None
    for i in range(200):
        status, pid = request(port, "/limited-b")
        codes.append(status)
        if killed is None and codes.count(200) == 10:
            killed = pid  # the worker that just answered: SIGKILL it mid-burst
            server["workers"].update(children(master))
            os.kill(killed, signal.SIGKILL)
    assert killed is not None
    assert codes.count(200) == 20 and codes.count(429) == 180
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (killed in children(master) or len(children(master)) < 4):
        time.sleep(0.05)
    assert killed not in children(master) and len(children(master)) == 4  # replaced
    server["workers"].update(children(master))
    # the replacement attached to the same file: still no quota left
    assert [request(port, "/limited-b")[0] for _ in range(20)] == [429] * 20
    with ratekeeper.Engine.shared(server["path"]) as e:
        assert e.find_policy("flask:20/minute").stats().allowed == 40


def test_child_exit_gives_back_the_permits_of_a_sigkilled_worker(server):
    """The master reaps a dead worker, then its child_exit hook releases the
    worker's permits: release_holder accepts the pid (no longer a live
    process) and frees exactly that worker's permits, not the others'."""
    port, master = server["port"], server["pid"]
    held: dict = {}
    for _ in range(6):  # of "concurrency 8": never full
        status, pid = request(port, "/hold")
        assert status == 200
        held[pid] = held.get(pid, 0) + 1
    victim = next(iter(held))

    def in_flight(policy) -> int:
        d = policy.peek("job")  # a concurrency peek: as if taking one more
        assert d.allowed
        return 8 - 1 - d.remaining

    with ratekeeper.Engine.shared(server["path"]) as e:
        policy = e.find_policy("held")
        assert in_flight(policy) == 6
        server["workers"].update(children(master))
        os.kill(victim, signal.SIGKILL)
        needle = f"released {held[victim]} permits of dead worker {victim}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and needle not in server["log"].read_text():
            time.sleep(0.05)
        assert needle in server["log"].read_text(), server["log"].read_text()[-3000:]
        assert in_flight(policy) == 6 - held[victim]
    while time.monotonic() < deadline and len(children(master)) < 4:
        time.sleep(0.05)
    server["workers"].update(children(master))
