"""ratekeeper.asgi against real servers: uvicorn, and `gunicorn -w 4` with
uvicorn's UvicornWorker and the ratekeeper.gunicorn hooks, on 127.0.0.1
(servers stopped by PID); plus in-process checks of what a server cannot
show (the same decision gives Flask's bytes, bad configuration, the lists,
fail open/closed). No timing-dependent assertion: limits are per hour or
per day, so nothing refills during a test."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi import Depends, FastAPI  # noqa: E402

import ratekeeper  # noqa: E402
from ratekeeper.asgi import Ratekeeper, header, remote_addr  # noqa: E402
from test_gunicorn import gunicorn_server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------ servers


def uvicorn_server(tmp_path_factory, tag: str, app: str):
    """Runs `uvicorn <app>` on 127.0.0.1 (a free port) with a shared file and
    a served-requests log of its own; yields {port, pid, path, served, log};
    stops it by PID and removes the file."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path_factory.mktemp("shm"))
    path = os.path.join(base, f"rk-{tag}-{os.getpid()}.rk")
    work = tmp_path_factory.mktemp(tag)
    log_path, served = work / "uvicorn.log", work / "served.log"
    env = dict(os.environ, RATEKEEPER_SHARED_PATH=path, ASGI_SERVED_LOG=str(served))
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "0", "--no-proxy-headers",
         "--lifespan", "on", "--log-level", "info"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_text())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.05)
        assert port, "uvicorn did not start:\n" + log_path.read_text()
        yield {"port": port, "pid": proc.pid, "path": path, "served": served, "log": log_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        if os.path.exists(path):
            os.unlink(path)


@pytest.fixture(scope="module")
def uvicorn_app(tmp_path_factory):
    yield from uvicorn_server(tmp_path_factory, "asgi-uvicorn", "asgi_app:app")


@pytest.fixture(scope="module")
def uvicorn_plain(tmp_path_factory):
    yield from uvicorn_server(tmp_path_factory, "asgi-plain", "asgi_app:plain")


@pytest.fixture(scope="module")
def gunicorn_uvicorn(tmp_path_factory):
    served = tmp_path_factory.mktemp("asgi-gunicorn") / "served.log"
    for server in gunicorn_server(tmp_path_factory, "asgi-gunicorn", env={"ASGI_SERVED_LOG": str(served)},
                                  conf="gunicorn_asgi_conf.py", app="asgi_app:app"):
        server["served"] = served
        yield server


def get(port: int, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """-> (status, {lower-case name: value}, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def served(server, what: str) -> int:
    p = server["served"]
    if not os.path.exists(p):
        return 0
    return sum(1 for line in open(p) if line.split()[0] == what)


# ------------------------------------------------------------------ gunicorn -w 4, UvicornWorker


def test_four_uvicorn_workers_admit_exactly_20_of_200_and_the_app_served_those_20(gunicorn_uvicorn):
    port = gunicorn_uvicorn["port"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get(port, "/hourly"), range(200)))
    codes = [status for status, _, _ in results]
    assert codes.count(200) == 20 and codes.count(429) == 180
    assert served(gunicorn_uvicorn, "hourly") == 20  # the app's own count
    pids = {json.loads(b)["pid"] for s, _, b in results if s == 200}
    pids |= {json.loads(get(port, "/pid")[2])["pid"] for _ in range(40)}
    assert len(pids) >= 2, "the requests should have been spread over several workers"
    with ratekeeper.Engine.shared(gunicorn_uvicorn["path"]) as e:
        assert e.find_policy("asgi:20/hour").stats().allowed == 20
    # every 429 is the full over-limit response
    for status, h, body in results:
        if status != 429:
            continue
        assert h["content-type"] == "application/problem+json"
        assert int(h["retry-after"]) >= 1
        assert h["ratelimit-policy"] == '"hourly";q=20;w=3600'
        assert re.fullmatch(r'"hourly";r=0;t=\d+', h["ratelimit"])
        doc = json.loads(body)
        assert doc["type"] == "about:blank" and doc["title"] == "Too Many Requests" and doc["status"] == 429
        assert doc["policy"] == "hourly" and doc["retry_after"] == int(h["retry-after"])
        assert doc["detail"] == f"Rate limit hourly exceeded (20 per 3600 s); retry in {doc['retry_after']} s."


def test_two_dependency_limits_are_one_batch_across_workers_all_or_nothing(gunicorn_uvicorn):
    port = gunicorn_uvicorn["port"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: get(port, "/multi", {"X-API-Key": "k1"}), range(40)))
    codes = [s for s, _, _ in results]
    assert codes.count(200) == 3 and codes.count(429) == 37
    assert served(gunicorn_uvicorn, "multi") == 3
    ok = [h for s, h, _ in results if s == 200]
    assert all(h["ratelimit-policy"] == '"small";q=3;w=3600, "wide";q=100;w=86400' for h in ok)
    with ratekeeper.Engine.shared(gunicorn_uvicorn["path"]) as e:
        # the wide limit was charged for the 3 allowed requests only, not the 37 denied ones
        assert e.find_policy("asgi:100/day").peek("multi\x00x-api-key:k1").remaining == 100 - 3 - 1


# ------------------------------------------------------------------ uvicorn


def test_allowed_responses_carry_the_fields_though_the_endpoint_returns_a_dict(uvicorn_app):
    status, h, body = get(uvicorn_app["port"], "/multi", {"X-API-Key": "fields"})
    assert status == 200 and json.loads(body)["pid"]
    assert h["ratelimit-policy"] == '"small";q=3;w=3600, "wide";q=100;w=86400'
    assert re.fullmatch(r'"small";r=2;t=\d+', h["ratelimit"])


def test_path_limits_override_the_defaults_and_other_routes_get_the_defaults(uvicorn_app):
    port = uvicorn_app["port"]
    codes = [get(port, "/path-limited")[0] for _ in range(6)]
    assert codes == [200] * 4 + [429] * 2
    assert served(uvicorn_app, "path-limited") == 4
    status, h, _ = get(port, "/defaulted")
    assert status == 200 and h["ratelimit-policy"] == '"default";q=50;w=3600'
    status, h, _ = get(port, "/pid")  # exempt path: no fields
    assert status == 200 and "ratelimit" not in h


def test_websocket_and_lifespan_scopes_pass_through_untouched(uvicorn_app):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{uvicorn_app['port']}/ws", open_timeout=30) as ws:
        ws.send("hello")
        assert ws.recv(timeout=30) == "echo:hello"
    status, _, body = get(uvicorn_app["port"], "/lifespan")
    assert status == 200 and json.loads(body) == {"lifespan_ran": True}


def test_a_client_that_disconnects_mid_body_is_charged_and_the_server_goes_on(uvicorn_app):
    port = uvicorn_app["port"]
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
    with ratekeeper.Engine.shared(uvicorn_app["path"]) as e:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the check runs when the headers arrive
            try:
                if e.find_policy("asgi:30/hour").stats().allowed == 1:
                    break
            except ratekeeper.UnknownPolicy:
                pass
            time.sleep(0.05)
        s.close()  # mid-body
        assert e.find_policy("asgi:30/hour").stats().allowed == 1
        status, h, body = get(port, "/upload", method="POST", body=b"y" * 5,
                              headers={"Content-Type": "application/octet-stream"})
        assert status == 200 and json.loads(body) == {"bytes": 5}
        assert re.fullmatch(r'"upload";r=28;t=\d+', h["ratelimit"])  # 30 - the disconnected one - this one
        assert e.find_policy("asgi:30/hour").stats().allowed == 2
    assert served(uvicorn_app, "upload") == 1  # the disconnected request never completed
    assert get(port, "/pid")[0] == 200


def test_a_plain_asgi_app_gets_path_and_default_limits(uvicorn_plain):
    port = uvicorn_plain["port"]
    assert [get(port, "/login")[0] for _ in range(3)] == [200, 200, 429]
    status, h, body = get(port, "/login")
    assert status == 429 and h["content-type"] == "application/problem+json"
    assert json.loads(body)["policy"] == "/login" and h["ratelimit-policy"] == '"/login";q=2;w=3600'
    assert [get(port, "/other")[0] for _ in range(7)] == [200] * 6 + [429]
    free = [get(port, "/free") for _ in range(10)]
    assert all(s == 200 and "ratelimit" not in h for s, h, _ in free)
    assert served(uvicorn_plain, "plain") == 2 + 6 + 10


def test_the_429_of_a_request_that_can_never_pass_is_flasks_byte_for_byte(uvicorn_app):
    from flask import Flask

    from ratekeeper.flask import Ratekeeper as FlaskRatekeeper

    status, h, body = get(uvicorn_app["port"], "/too-costly")
    flask_app = Flask(__name__)
    frk = FlaskRatekeeper(flask_app, engine=ratekeeper.Engine())

    @flask_app.get("/too-costly")
    @frk.limit("2/hour", cost=5)
    def too_costly():
        return {"never": True}

    r = flask_app.test_client().get("/too-costly")
    assert status == r.status_code == 429
    assert body == r.get_data()
    for name in ("content-type", "content-length", "ratelimit-policy", "ratelimit"):
        assert h[name] == r.headers[name], name
    assert "retry-after" not in h and "Retry-After" not in r.headers


# ------------------------------------------------------------------ in process


def _flask_and_asgi_429(decision, items, decl_kwargs):
    """The 429 of one decision through ratekeeper.flask and ratekeeper.asgi:
    (status, [(lower-case name, value)], body) of each."""
    from flask import Flask

    from ratekeeper._web.options import PLAIN
    from ratekeeper._web.plan import LimitDecl, _Entry
    from ratekeeper._web.responses import _Context, _header_fields
    from ratekeeper.flask import Ratekeeper as FlaskRatekeeper

    app = Flask(__name__)
    frk = FlaskRatekeeper(app)
    fst = app.extensions["ratekeeper"]
    ark = Ratekeeper()
    out = []
    for rk, st in ((frk, fst), (ark, ark.state)):
        plan = [_Entry(LimitDecl(spec, "route", **kw), kw.get("name") or "view", "view", st.default_key, PLAIN)
                for spec, kw in decl_kwargs]
        ctx = _Context(st, items, plan, decision, len(items) - 1, False)
        if rk is frk:
            r = rk._breach(st, ctx)
            fields = list(r.headers.items()) + _header_fields(ctx)  # + what its WSGI middleware appends
            out.append((r.status_code, [(n.lower(), v) for n, v in fields], r.get_data()))
        else:
            reply = rk._breach(st, ctx)
            out.append((reply.status, [(n.lower(), v) for n, v in reply.headers], reply.body))
    return out


def test_the_same_decision_gets_the_same_429_bytes_from_flask_and_asgi():
    t0 = 10**15
    with ratekeeper.Engine() as e:
        small = e.policy("small", "3/hour")
        wide = e.policy("wide", "10/second;100/day")
        items = [(wide, "k", 1), (small, "k", 1)]
        for _ in range(3):
            e.check_many(items, now_ns=t0)
        decision, index = e.check_many(items, now_ns=t0)
        assert not decision.allowed and index == 1
        flask_429, asgi_429 = _flask_and_asgi_429(decision, items, [("10/second;100/day", {"name": "wide"}),
                                                                    ("3/hour", {"name": "small"})])
    assert flask_429 == asgi_429
    status, fields, body = asgi_429
    assert status == 429 and dict(fields)["retry-after"] == "1200"
    assert dict(fields)["ratelimit-policy"] == '"wide-0";q=10;w=1, "wide-1";q=100;w=86400, "small";q=3;w=3600'
    assert json.loads(body)["detail"] == "Rate limit small exceeded (3 per 3600 s); retry in 1200 s."


def run(app, path="/", headers=None, client=("203.0.113.7", 1234), method="GET"):
    async def go():
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, headers=headers or {})

    return asyncio.run(go())


def test_bad_configuration_raises_at_construction():
    with pytest.raises(TypeError, match="unknown options: trusted_proxy"):
        Ratekeeper(trusted_proxy=1)
    with pytest.raises(ratekeeper.ParseError):
        Ratekeeper(default="5 per fortnight")
    with pytest.raises(ratekeeper.ParseError):
        Ratekeeper(paths={"/login": "five/minute"})
    with pytest.raises(ValueError, match="starting with '/'"):
        Ratekeeper(paths={"login": "5/minute"})
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Ratekeeper(trusted_proxies=-1)
    with pytest.raises(ValueError, match="IPV6_PREFIX"):
        Ratekeeper(ipv6_prefix=129)
    with pytest.raises(ValueError, match="WHEN_FULL"):
        Ratekeeper(when_full="drop")
    with pytest.raises(ValueError, match="REDIS_ON_FAILURE"):
        Ratekeeper(redis_on_failure="maybe")
    with pytest.raises(TypeError, match="key must be a callable"):
        Ratekeeper(key="ip")
    with pytest.raises(ratekeeper.ParseError):
        Ratekeeper().limit("3/hourz")
    with pytest.raises(TypeError, match="Starlette or FastAPI"):
        Ratekeeper().init_app(object())


def test_a_limit_dependency_without_the_middleware_is_a_clear_error():
    rk = Ratekeeper()
    app = FastAPI()

    @app.get("/x", dependencies=[Depends(rk.limit("1/hour"))])
    async def x():
        return {}

    with pytest.raises(RuntimeError, match="needs the middleware"):
        run(app, "/x")


def test_client_address_keys_use_trusted_proxies_and_the_ipv6_prefix_like_flask():
    breaches = []
    app = FastAPI()
    rk = Ratekeeper(app, engine=ratekeeper.Engine(), trusted_proxies=1, on_breach=breaches.append)

    @app.get("/one", dependencies=[Depends(rk.limit("1/hour"))])
    async def one():
        return {}

    # IPv6: one /64 is one client
    assert run(app, "/one", client=("2001:db8:1:2::5", 1)).status_code == 200
    assert run(app, "/one", client=("2001:db8:1:2::99", 1)).status_code == 429
    assert breaches[-1].key == "one\x002001:db8:1:2::/64"
    # behind one trusted proxy: the client is the last X-Forwarded-For entry
    assert run(app, "/one", {"X-Forwarded-For": "198.51.100.1, 192.0.2.4"}).status_code == 200
    assert run(app, "/one", {"X-Forwarded-For": "203.0.113.50, 192.0.2.4"}).status_code == 429
    assert breaches[-1].key == "one\x00192.0.2.4"


def test_header_keys_have_flasks_values_and_fall_back_to_the_address():
    seen = []
    app = FastAPI()
    rk = Ratekeeper(app, engine=ratekeeper.Engine())

    def record():
        seen.append(header("X-API-Key")())
        return "k"

    @app.get("/h", dependencies=[Depends(rk.limit("100/hour", key=record))])
    async def h():
        return {}

    run(app, "/h", {"X-API-Key": "abc"})
    run(app, "/h")
    assert seen == ["x-api-key:abc", "203.0.113.7"]


def test_fail_closed_answers_503_problem_json_and_fail_open_passes():
    for fail_open, expected in ((False, 503), (True, 200)):
        engine = ratekeeper.Engine()
        app = FastAPI()
        rk = Ratekeeper(app, engine=engine, default="5/hour", fail_open=fail_open)

        @app.get("/x")
        async def x():
            return {}

        assert run(app, "/x").status_code == 200
        engine.close()  # every engine call now raises EngineClosed
        r = run(app, "/x")
        assert r.status_code == expected
        if expected == 503:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json() == {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                                "detail": "The rate limiter is unavailable."}
        del rk


def test_deny_and_allow_lists_and_the_penalty_box():
    app = FastAPI()
    rk = Ratekeeper(app, engine=ratekeeper.Engine(), default="1/hour", denylist=["198.51.100.0/24"],
                    allowlist=["192.0.2.1"], penalty=ratekeeper.Penalty(strikes=2, window=600, ban=900, max_ban=900))

    @app.get("/x")
    async def x():
        return {}

    r = run(app, "/x", client=("198.51.100.7", 1))
    assert r.status_code == 403 and r.json()["title"] == "Forbidden"
    assert all(run(app, "/x", client=("192.0.2.1", 1)).status_code == 200 for _ in range(3))
    codes = [run(app, "/x").status_code for _ in range(4)]
    assert codes == [200, 429, 429, 429]
    r = run(app, "/x")
    assert r.json()["banned"] is True and r.headers["retry-after"] == str(r.json()["retry_after"])


def test_deduct_when_refunds_by_the_status_of_the_started_response():
    from fastapi import HTTPException

    app = FastAPI()
    rk = Ratekeeper(app, engine=ratekeeper.Engine())

    @app.get("/login/{ok}", dependencies=[Depends(rk.limit("2/hour", deduct_when=lambda r: r.status_code >= 400))])
    async def login(ok: int):
        if not ok:
            raise HTTPException(401)
        return {}

    assert [run(app, "/login/1").status_code for _ in range(5)] == [200] * 5  # successes are free
    assert [run(app, "/login/0").status_code for _ in range(3)] == [401, 401, 429]


def test_deduct_when_refund_is_placed_at_the_charge_not_in_a_window_opened_since():
    # As in test_flask.py: request A is charged in window W0 and answered
    # after W0 ended and request B (a failure, counted) opened W1; A's
    # refund must not take B's unit from W1.
    from fastapi import HTTPException

    app = FastAPI()
    rk = Ratekeeper(app, engine=ratekeeper.Engine())
    steps: dict = {}

    @app.get("/login/{ok}", dependencies=[
        Depends(rk.limit("fixed_window 2/2 seconds", deduct_when=lambda r: r.status_code >= 400))])
    async def login(ok: int):
        if not ok:
            raise HTTPException(401)
        deadline = ratekeeper.now_ns() + 2_050_000_000  # W0, opened by this request's check, is over
        while ratekeeper.now_ns() < deadline:
            await asyncio.sleep(0.01)
        steps["w0_over"].set()
        await steps["b_answered"].wait()
        return {}

    async def go():
        steps["w0_over"], steps["b_answered"] = asyncio.Event(), asyncio.Event()
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            a = asyncio.create_task(c.get("/login/1"))
            await asyncio.wait_for(steps["w0_over"].wait(), 30)
            b = (await c.get("/login/0")).status_code
            steps["b_answered"].set()
            a_status = (await asyncio.wait_for(a, 30)).status_code
            rest = [(await c.get("/login/0")).status_code for _ in range(2)]
        return a_status, b, rest

    assert asyncio.run(go()) == (200, 401, [401, 429])  # W1 holds B and one more


def test_redis_engine_calls_run_off_the_event_loop(redis_server, monkeypatch):
    import ratekeeper.asgi._extension as ext

    calls = []
    real = ext.run_off_loop

    async def counting(fn):
        calls.append(fn)
        return await real(fn)

    monkeypatch.setattr(ext, "run_off_loop", counting)
    engine = ratekeeper.Engine.redis(redis_server.url, prefix=f"asgi-{os.getpid()}:")
    app = FastAPI()
    Ratekeeper(app, engine=engine, default="2/hour")

    @app.get("/x")
    async def x():
        return {}

    assert [run(app, "/x").status_code for _ in range(3)] == [200, 200, 429]
    assert len(calls) == 3
    engine.close()


def test_inline_checks_of_a_local_engine_never_leave_the_loop(monkeypatch):
    import ratekeeper.asgi._extension as ext

    async def forbidden(fn):
        raise AssertionError("a local engine's check went to a thread")

    app = FastAPI()
    Ratekeeper(app, engine=ratekeeper.Engine(), default="2/hour", key=remote_addr)
    monkeypatch.setattr(ext, "run_off_loop", forbidden)

    @app.get("/x")
    async def x():
        return {}

    assert [run(app, "/x").status_code for _ in range(3)] == [200, 200, 429]


def test_a_custom_response_is_an_asgi_app_and_gets_the_fields_it_lacks():
    from starlette.responses import PlainTextResponse

    app = FastAPI()
    Ratekeeper(app, engine=ratekeeper.Engine(), default="1/hour",
               response=lambda breach: PlainTextResponse(f"slow down ({breach.name})", status_code=429,
                                                         headers={"Retry-After": "7"}))

    @app.get("/x")
    async def x():
        return {}

    assert run(app, "/x").status_code == 200
    r = run(app, "/x")
    assert r.status_code == 429 and r.text == "slow down (default)"
    assert r.headers["retry-after"] == "7"  # its own, not replaced
    assert r.headers["ratelimit-policy"] == '"default";q=1;w=3600'


def test_metrics_endpoint_serves_the_engines_counters_and_is_never_limited():
    app = FastAPI()
    Ratekeeper(app, engine=ratekeeper.Engine(), default="1/hour", metrics_endpoint="/metrics")

    @app.get("/x")
    async def x():
        return {}

    assert [run(app, "/x").status_code for _ in range(3)] == [200, 429, 429]
    for _ in range(3):
        r = run(app, "/metrics")
        assert r.status_code == 200 and "ratelimit" not in r.headers
    assert 'ratekeeper_decisions_total{outcome="allowed",policy="asgi:1/hour"} 1.0' in r.text
    assert 'ratekeeper_decisions_total{outcome="denied",policy="asgi:1/hour"} 2.0' in r.text


def test_the_readme_quick_start_runs_as_written():
    import ratekeeper.asgi

    app = FastAPI()
    rk = Ratekeeper(app, engine=ratekeeper.Engine(), default="100/minute", paths={"/health": None})

    @app.get("/search", dependencies=[Depends(rk.limit("10/second", key=header("X-API-Key")))])
    async def search(q: str):
        return {"q": q}

    @app.get("/health")
    async def health():
        return {}

    r = run(app, "/search?q=a", {"X-API-Key": "k"})  # (10/second refills: no count of denials here)
    assert r.status_code == 200 and r.json() == {"q": "a"}
    assert r.headers["ratelimit-policy"] == '"search";q=10;w=1'
    assert "ratelimit" not in run(app, "/health").headers
    assert ratekeeper.asgi.Ratekeeper is Ratekeeper


def test_acquire_with_a_timeout_waits_in_a_thread_and_a_plain_try_runs_inline(monkeypatch):
    import ratekeeper.asgi._threads as ext
    from ratekeeper.asgi import acquire, release

    threaded = []
    real = ext.run_off_loop

    async def counting(fn):
        threaded.append(fn)
        return await real(fn)

    monkeypatch.setattr(ext, "run_off_loop", counting)

    async def go():
        with ratekeeper.Engine() as e:
            jobs = e.policy("jobs", "concurrency 1")
            first = await acquire(jobs, "k")  # inline
            assert threaded == []
            with pytest.raises(ratekeeper.Throttled):
                await acquire(jobs, "k")  # inline, refused at once
            waiter = asyncio.ensure_future(acquire(jobs, "k", timeout=30.0))  # waits in a thread
            await asyncio.sleep(0)
            assert await release(first)
            second = await waiter
            assert len(threaded) == 1 and not second.released
            assert await release(second)

    asyncio.run(go())


def test_a_mounted_fastapi_app_s_dependency_limits_are_found_before_routing():
    from starlette.applications import Starlette
    from starlette.routing import Mount

    engine = ratekeeper.Engine()
    calls = []
    inner = FastAPI()
    outer = Starlette(routes=[Mount("/v1", app=inner)])
    rk = Ratekeeper(outer, engine=engine, default="100/hour")

    @inner.get("/items/{n}", dependencies=[Depends(rk.limit("2/hour", name="items"))])
    async def items(n: int):
        return {"n": n}

    real = engine.check_many
    engine.check_many = lambda items, now_ns=None: calls.append(len(items)) or real(items, now_ns)
    codes = [run(outer, f"/v1/items/{i}").status_code for i in range(3)]
    assert codes == [200, 200, 429]  # one counter per route, whatever the path parameter
    r = run(outer, "/v1/items/9")
    assert r.headers["content-type"] == "application/problem+json" and r.json()["policy"] == "items"
    assert calls == []  # one limit: a plain check, not a batch
    # each request charged once (a second check by the dependency would have denied the second request)
    assert engine.find_policy("asgi:2/hour").stats().allowed == 2


def test_a_route_the_middleware_cannot_see_is_checked_by_its_dependency():
    inner = FastAPI()
    rk = Ratekeeper(engine=ratekeeper.Engine())

    @inner.get("/x", dependencies=[Depends(rk.limit("1/hour", name="x"))])
    async def x():
        return {}

    async def opaque(scope, receive, send):  # no .router: the middleware cannot resolve the route
        await inner(scope, receive, send)

    app = rk.wrap(opaque)
    assert run(app, "/x").status_code == 200
    r = run(app, "/x")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-policy"] == '"x";q=1;w=3600'
