"""Flask-Limiter and slowapi, unchanged but for
``storage_uri="ratekeeper+shm:///..."``, under a real Gunicorn with 4
workers (slowapi on uvicorn workers): for each strategy of limits, exactly
20 of 200 concurrent requests pass across the workers, and the app itself
served exactly those 20. Gunicorn is always stopped by its PID."""

from __future__ import annotations

import contextlib
import http.client
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("limits")

from test_gunicorn import gunicorn_server  # noqa: E402

import ratekeeper  # noqa: E402

STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter"]
POLICY = {  # the storage's policy a "20/year" limit of each strategy lands in
    "fixed-window": "limits:fixed:31104000",
    "moving-window": "limits:moving:20/31104000",
    "sliding-window-counter": "limits:sliding:20/31104000",
}


@contextlib.contextmanager
def serve(tmp_path_factory, app: str, strategy: str, worker_class: str = "sync"):
    """Runs `gunicorn -w 4 -k worker_class app` with ratekeeper's hooks
    (gunicorn_conf.py) on a shared file of its own, through
    test_gunicorn.gunicorn_server; yields {port, path, served, log}; stops
    it by PID and removes the file."""
    served = tmp_path_factory.mktemp("served") / "served.log"
    env = {"LIMITS_STRATEGY": strategy, "SERVED_LOG": str(served), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with contextlib.contextmanager(gunicorn_server)(
        tmp_path_factory, f"limits-gunicorn-{uuid.uuid4().hex}", env=env, app=app,
        args=("-k", worker_class), start_timeout=60,
    ) as server:
        yield {"port": server["port"], "path": server["path"], "served": served, "log": server["log"]}


def get(port: int, path: str):
    """GET -> (status, pid of the worker that served a 200, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        pid = json.loads(body).get("pid") if r.status == 200 else None
        return r.status, pid, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def burst_admits_exactly_the_quota(server, strategy: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get(server["port"], "/limited"), range(200)))
    codes = [status for status, _, _ in results]
    assert (codes.count(200), codes.count(429)) == (20, 180), server["log"].read_text()[-3000:]
    served = server["served"].read_text().split()
    assert len(served) == 20  # the app's own count: exactly the allowed requests ran
    assert sorted(served) == sorted(str(pid) for _, pid, _ in results if pid)
    assert len(set(served)) >= 2, "the requests should have been spread over several workers"
    for status, _, headers in results:  # limits' headers, from the storage's reads
        assert headers["x-ratelimit-limit"] == "20"
        if status == 429:
            assert headers["x-ratelimit-remaining"] == "0"
    with ratekeeper.Engine.shared(server["path"]) as e:
        st = e.find_policy(POLICY[strategy]).stats()
        # fixed window: the counter counts every hit (limits' semantics)
        assert st.allowed == (200 if strategy == "fixed-window" else 20)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_flask_limiter_on_four_gunicorn_workers_admits_exactly_20_of_200(tmp_path_factory, strategy):
    pytest.importorskip("flask_limiter")
    with serve(tmp_path_factory, "limits_flask_app:app", strategy) as server:
        burst_admits_exactly_the_quota(server, strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_slowapi_on_four_uvicorn_workers_admits_exactly_20_of_200(tmp_path_factory, strategy):
    pytest.importorskip("slowapi")
    pytest.importorskip("uvicorn")
    with serve(tmp_path_factory, "limits_slowapi_app:app", strategy, worker_class="uvicorn_worker.UvicornWorker") as server:
        burst_admits_exactly_the_quota(server, strategy)
