"""Shared engines: two Engine objects and several processes on one file, bad
files, the per-process engine cache and the Gunicorn hooks."""

from __future__ import annotations

import multiprocessing
import os
import stat
import types

import pytest

import ratekeeper
import ratekeeper.gunicorn
from ratekeeper import CorruptFile, Engine, IOFailure, PolicyMismatch

S = 1_000_000_000
T0 = 5_000 * S


@pytest.fixture
def shm_path(tmp_path):
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    path = os.path.join(base, f"rk-pytest-{os.getpid()}-{os.urandom(4).hex()}.rk")
    yield path
    if os.path.exists(path):
        os.unlink(path)


def test_two_engines_on_one_file_share_limits_and_policies(shm_path):
    with Engine.shared(shm_path, capacity=1024) as a, Engine.shared(shm_path) as b:
        pa = a.policy("login", "5/minute")
        pb = b.find_policy("login")
        assert (pb.name, pb.spec, pb.id) == ("login", "5/minute", pa.id)
        assert b.policy("login", "5 per minute").id == pa.id
        for _ in range(3):
            assert pa.check("ip:1", now_ns=T0).allowed
        for _ in range(2):
            assert pb.check("ip:1", now_ns=T0).allowed
        assert not pa.check("ip:1", now_ns=T0).allowed
        assert not pb.check("ip:1", now_ns=T0).allowed
        assert pb.stats().allowed == 5 and pa.stats().denied == 2
        with pytest.raises(PolicyMismatch, match="5/minute"):
            b.policy("login", "6/minute")
        assert a.path == shm_path and "shared" in repr(a)


def test_the_shared_file_keeps_state_across_opens(shm_path):
    with Engine.shared(shm_path) as a:
        a.policy("p", "2/hour").check("k", cost=2, now_ns=T0)
    with Engine.shared(shm_path) as b:
        assert [p.name for p in b.policies()] == ["p"]
        assert not b.find_policy("p").check("k", now_ns=T0).allowed


def test_a_new_file_gets_the_requested_mode(shm_path):
    with Engine.shared(shm_path, mode=0o640, max_bytes=64 << 20):
        pass
    assert stat.S_IMODE(os.stat(shm_path).st_mode) == 0o640


def test_a_foreign_file_is_refused_with_corrupt_file(shm_path):
    with open(shm_path, "wb") as f:
        f.write(b"this is not a ratekeeper file" * 200)
    os.chmod(shm_path, 0o600)
    with pytest.raises(CorruptFile) as info:
        Engine.shared(shm_path)
    assert info.value.status == 14 and str(info.value)


def test_a_file_others_can_write_is_refused_as_unsafe(shm_path):
    with Engine.shared(shm_path) as e:
        e.policy("p", "1/second")
    os.chmod(shm_path, 0o666)
    with pytest.raises(ratekeeper.UnsafeFile) as info:
        Engine.shared(shm_path)
    assert info.value.status == 21 and "mode 0666, wider than the configured 0600" in str(info.value)
    assert isinstance(info.value, PermissionError)
    os.symlink(shm_path, shm_path + ".link")
    try:
        with pytest.raises(ratekeeper.UnsafeFile, match="symbolic link"):
            Engine.shared(shm_path + ".link")
    finally:
        os.unlink(shm_path + ".link")


def test_an_unusable_path_is_an_io_failure(tmp_path):
    with pytest.raises(IOFailure) as info:
        Engine.shared(tmp_path / "no" / "such" / "dir" / "x.rk")
    assert isinstance(info.value, OSError) and "x.rk" in str(info.value)


def test_a_policy_that_does_not_fit_is_out_of_memory(shm_path):
    with Engine.shared(shm_path, max_bytes=1 << 20) as e:
        with pytest.raises(ratekeeper.OutOfMemory):
            e.policy("huge", "10/second", capacity=1 << 22)


def _hammer(path: str, n: int, queue) -> None:
    # Opened in the child, after fork (README: "Open the engine after fork").
    with Engine.shared(path) as e:
        p = e.policy("hot", "100/hour")
        queue.put(sum(p.check("one-key", now_ns=T0).allowed for _ in range(n)))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_processes_on_one_file_admit_exactly_the_quota(shm_path, start_method):
    ctx = multiprocessing.get_context(start_method)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(shm_path, 60, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    totals = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(totals) == 100
    with Engine.shared(shm_path) as e:
        st = e.find_policy("hot").stats()
        assert (st.allowed, st.denied) == (100, 140)


def test_shared_engine_is_one_engine_per_process(shm_path):
    a = ratekeeper.shared_engine(shm_path)
    assert ratekeeper.shared_engine(shm_path) is a
    a.close()
    b = ratekeeper.shared_engine(shm_path)
    assert b is not a and not b.closed
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child():
        queue.put(ratekeeper.shared_engine(shm_path) is not b)

    proc = ctx.Process(target=child)
    proc.start()
    assert queue.get(timeout=30) is True
    proc.join(10)
    b.close()


# ------------------------------------------------------------------ gunicorn hooks


def _hold_permits(path: str, ready, done) -> None:
    with Engine.shared(path) as e:
        c = e.policy("reports", "concurrency 3")
        c.acquire("k")
        c.acquire("k")
        ready.set()
        done.wait(30)
        os._exit(0)  # dies holding its permits


def test_gunicorn_hooks_create_attach_and_release_a_dead_workers_permits(shm_path, monkeypatch):
    monkeypatch.delenv("RATEKEEPER_SHARED_PATH", raising=False)
    logs = []
    server = types.SimpleNamespace(proc_name="app:app", log=types.SimpleNamespace(
        info=logs.append, warning=logs.append))
    on_starting, post_fork, child_exit = ratekeeper.gunicorn.hooks(
        path=shm_path, policies={"reports": "concurrency 3"})
    on_starting(server)
    assert os.environ["RATEKEEPER_SHARED_PATH"] == shm_path
    assert os.path.exists(shm_path) and "shared limits" in logs[-1]

    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_hold_permits, args=(shm_path, ready, done))
    worker.start()
    assert ready.wait(30)
    with Engine.shared(shm_path) as e:
        c = e.find_policy("reports")
        assert c.peek("k").remaining == 0  # 2 of 3 held, peek takes the third
        done.set()
        worker.join(30)
        child_exit(server, types.SimpleNamespace(pid=worker.pid))
        assert "released 2 permits" in logs[-1]
        assert c.peek("k").remaining == 2

    post_fork(server, types.SimpleNamespace(pid=os.getpid()))
    assert ratekeeper.shared_engine(shm_path).find_policy("reports").name == "reports"
    ratekeeper.shared_engine(shm_path).close()


def test_gunicorn_on_starting_refuses_a_corrupt_file(shm_path):
    with open(shm_path, "wb") as f:
        f.write(b"\0garbage" * 1000)
    os.chmod(shm_path, 0o600)
    on_starting, _, _ = ratekeeper.gunicorn.hooks(path=shm_path)
    with pytest.raises(CorruptFile):
        on_starting(types.SimpleNamespace(proc_name="x", log=None))


def test_gunicorn_default_path(monkeypatch):
    monkeypatch.setenv("RATEKEEPER_SHARED_PATH", "/dev/shm/explicit.rk")
    assert ratekeeper.gunicorn.default_path("app:app") == "/dev/shm/explicit.rk"
    monkeypatch.delenv("RATEKEEPER_SHARED_PATH")
    path = ratekeeper.gunicorn.default_path("my app:create_app()")
    assert os.path.basename(path) == "ratekeeper-my_app_create_app.rk"
    assert set(ratekeeper.gunicorn.__all__) == {"on_starting", "post_fork", "child_exit"}


def test_reset_of_a_shared_engine_clears_the_file_for_every_engine_on_it(shm_path):
    with Engine.shared(shm_path) as a, Engine.shared(shm_path) as b:
        pa, pb = a.policy("p", "1/minute"), b.policy("p", "1/minute")
        assert pa.check("k", now_ns=T0).allowed
        assert not pb.check("k", now_ns=T0).allowed
        assert b.reset() == 1
        assert pa.check("k", now_ns=T0).allowed
