"""A Flask-Limiter app whose only ratekeeper line is the storage URI
(test_limits_gunicorn.py serves it with `gunicorn -w 4`). The strategy is
$LIMITS_STRATEGY; every request the view serves appends a line to
$SERVED_LOG (O_APPEND: one write per line, whole lines from any worker)."""

import os
import time

from flask import Flask, jsonify
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import ratekeeper.limits_storage  # noqa: F401  registers ratekeeper+shm:// with limits

app = Flask(__name__)
limiter = Limiter(
    get_remote_address,
    app=app,
    storage_uri=f"ratekeeper+shm://{os.environ['RATEKEEPER_SHARED_PATH']}",
    strategy=os.environ["LIMITS_STRATEGY"],
    headers_enabled=True,
)
_served = os.open(os.environ["SERVED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


@app.get("/limited")
@limiter.limit("20/year")  # no window edge during a test: exact totals for every strategy
def limited():
    os.write(_served, f"{os.getpid()}\n".encode())
    return jsonify(pid=os.getpid())


@app.get("/nap")
@limiter.exempt
def nap():
    """Holds its worker for 0.2 s (the fixture's wait for every worker)."""
    time.sleep(0.2)
    return jsonify(pid=os.getpid())
