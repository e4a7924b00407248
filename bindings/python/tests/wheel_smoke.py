"""Smoke test of an installed wheel (run_tests.sh runs it in a fresh venv
with no cargo on PATH): import, a shared engine, a check, a Flask app with
one limit, a plain ASGI app behind ratekeeper.asgi (no ASGI framework
installed). Prints one line per step; exits non-zero on failure."""

import os
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(here)]

import ratekeeper  # noqa: E402

assert "site-packages" in ratekeeper.__file__, ratekeeper.__file__
print(f"import: ratekeeper {ratekeeper.__version__} from {os.path.dirname(ratekeeper.__file__)}")

with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
    path = os.path.join(d, "smoke.rk")
    with ratekeeper.Engine.shared(path) as a, ratekeeper.Engine.shared(path) as b:
        pa, pb = a.policy("smoke", "2/minute"), b.policy("smoke", "2/minute")
        t = ratekeeper.now_ns()
        assert pa.check("k", now_ns=t).remaining == 1
        assert pb.check("k", now_ns=t).remaining == 0  # one limit, two engines on one file
        denied = pa.check("k", now_ns=t)
        assert not denied.allowed and denied.retry_after > 0
    print("shared engine: 2 allowed, the 3rd denied across two Engine objects")

from flask import Flask  # noqa: E402

from ratekeeper.flask import Ratekeeper, remote_addr  # noqa: E402

app = Flask(__name__)
rk = Ratekeeper(app, default="3/minute", key=remote_addr)


@app.get("/")
def index():
    return "ok"


client = app.test_client()
codes = [client.get("/").status_code for _ in range(5)]
assert codes == [200, 200, 200, 429, 429], codes
last = client.get("/")
assert last.status_code == 429 and "Retry-After" in last.headers, dict(last.headers)
print(f"flask: {codes} and a 429 with Retry-After {last.headers['Retry-After']}")

import asyncio  # noqa: E402

from ratekeeper.asgi import Ratekeeper as AsgiRatekeeper  # noqa: E402


async def plain(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def asgi_statuses(n):
    wrapped = AsgiRatekeeper(default="2/minute").wrap(plain)
    statuses = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(n):
        await wrapped({"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("192.0.2.1", 1)},
                      receive, send)
    return statuses


statuses = asyncio.run(asgi_statuses(3))
assert statuses == [200, 200, 429], statuses
print(f"asgi: {statuses} without an ASGI framework installed")
print("wheel smoke test passed")
