"""Redis Sentinel from Python: ``Engine.redis("redis+sentinel://...")``
against a real master, replica and three sentinels on 127.0.0.1 (free
ports, a directory of their own under /tmp, each process killed by its PID
at teardown, also on failure). The master is SIGKILLed: until the
sentinels have promoted the replica, the failure policy decides (``local``,
``open``, ``closed``) and no exception reaches the caller; then decisions
come from the new master, with the state the old one had replicated.

No assertion depends on machine speed: waits are bounded generously and
counts are asserted. The URL is passed through to the Rust engine, so this
needs nothing of the Python binding but its public API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

import ratekeeper

SERVICE = "mymaster"
BOUND_S = 60.0  # longest wait for readiness and for a failover


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return out.stdout.strip()


class SentinelSet:
    """A master, a replica and three sentinels (quorum 2, down after 1 s)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rk-py-sentinel-")
        self.procs: list = []  # (port, Popen): master, replica, sentinels

    def _spawn(self, port: int, args: list) -> None:
        d = os.path.join(self.dir, str(port))
        os.makedirs(d, exist_ok=True)
        p = subprocess.Popen(["redis-server", *args], cwd=d, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append((port, p))

    def start(self) -> "SentinelSet":
        self.master, self.replica = free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._spawn(self.master, ["--port", str(self.master), *common])
        self._spawn(self.replica, ["--port", str(self.replica), *common,
                                   "--replicaof", "127.0.0.1", str(self.master)])
        self.sentinels = [free_port() for _ in range(3)]
        for port in self.sentinels:
            d = os.path.join(self.dir, str(port))
            os.makedirs(d, exist_ok=True)
            conf = os.path.join(d, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                        f"sentinel failover-timeout {SERVICE} 10000\n")
            self._spawn(port, [conf, "--sentinel"])
        deadline = time.monotonic() + BOUND_S
        while not self._ready():
            assert time.monotonic() < deadline, "the sentinels were not ready in time"
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        if "master_link_status:up" not in cli(self.replica, "INFO", "replication"):
            return False
        for s in self.sentinels:
            replicas = cli(s, "SENTINEL", "replicas", SERVICE)
            others = cli(s, "SENTINEL", "sentinels", SERVICE)
            if str(self.replica) not in replicas or "s_down" in replicas:
                return False
            if not all(str(o) in others for o in self.sentinels if o != s):
                return False
        return True

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{nodes}/{SERVICE}"

    def reported_master(self):
        for s in self.sentinels:
            lines = cli(s, "SENTINEL", "get-master-addr-by-name", SERVICE).splitlines()
            if len(lines) == 2:
                return int(lines[1])
        return None

    def kill_master(self) -> None:
        port, p = self.procs[0]
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def close(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinels():
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if os.environ.get("CI", "") not in ("", "0", "false"):
            pytest.fail("redis-server is not installed, and CI must run the Redis tests")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    s = SentinelSet()
    try:
        yield s.start()
    finally:
        s.close()


def engine(url: str, on_failure: str) -> ratekeeper.Engine:
    return ratekeeper.Engine.redis(url, prefix=f"rkpy-{uuid.uuid4().hex[:8]}:", on_failure=on_failure,
                                   connect_timeout=0.2, timeout=0.2, retry_min=0.02, retry_max=0.2,
                                   deny_cache=0, log_switches=False)


def test_a_sentinel_url_that_does_not_parse_raises_at_open():
    with pytest.raises(Exception):
        ratekeeper.Engine.redis("redis+sentinel://127.0.0.1:1/", log_switches=False)


def test_a_failover_is_followed_and_the_failure_policy_decides_meanwhile(sentinels):
    engines = {f: engine(sentinels.url, f) for f in ("local", "open", "closed")}
    policies = {f: e.policy("p", "fixed_window 3/hour") for f, e in engines.items()}
    for p in policies.values():
        assert p.check("k").allowed and p.check("k").allowed
        for _ in range(3):
            assert p.check("spent").allowed
        assert not p.check("spent").allowed
    assert cli(sentinels.master, "WAIT", "1", "5000") == "1"

    sentinels.kill_master()
    killed = time.monotonic()
    fallback = {f: 0 for f in engines}
    allowed = {f: 0 for f in engines}
    back = {}
    i = 0
    while len(back) < len(engines):
        assert time.monotonic() - killed < BOUND_S, f"no failover: sentinels say {sentinels.reported_master()}"
        promoted = sentinels.reported_master() == sentinels.replica
        for f, e in engines.items():
            if f in back:
                continue
            key = {"open": "spent", "closed": f"fresh-{i}", "local": "local"}[f]
            before = e.redis_stats()
            d = policies[f].check(key)  # never raises
            after = e.redis_stats()
            if after["fallback_decisions"] > before["fallback_decisions"]:
                fallback[f] += 1
                allowed[f] += int(d.allowed)
            elif promoted and after["round_trips"] > before["round_trips"] and after["failovers"] >= 1:
                back[f] = time.monotonic() - killed
        i += 1
        time.sleep(0.01)

    print({f: f"{t:.2f} s" for f, t in back.items()}, fallback)
    for f, e in engines.items():
        assert fallback[f] >= 1, f
        s = e.redis_stats()
        assert s["failovers"] >= 1 and s["recoveries"] >= 1, (f, s)
        # The new master has the replicated state: the third of three.
        assert policies[f].check("k").allowed, f
        assert not policies[f].check("k").allowed, f
        e.close()
    assert allowed["open"] == fallback["open"]
    assert allowed["closed"] == 0
    assert sentinels.reported_master() == sentinels.replica
