"""The app that test_gunicorn.py, test_monitoring.py and test_redis.py serve
with `gunicorn -w N`."""

import os
import time

from flask import Flask, jsonify

from ratekeeper.flask import Ratekeeper

app = Flask(__name__)
# /metrics: the Prometheus metrics of the shared file (every worker's totals).
app.config["RATEKEEPER_METRICS_ENDPOINT"] = "/metrics"
# engine: the Redis of $RATEKEEPER_REDIS_URL if set (test_redis.py), else the
# shared file of $RATEKEEPER_SHARED_PATH (set by the hooks)
rk = Ratekeeper(app)


@app.get("/limited")
@rk.limit("20/minute")
def limited():
    return jsonify(pid=os.getpid())


@app.get("/limited-b")
@rk.limit("20/minute")
def limited_b():
    return jsonify(pid=os.getpid())


@app.get("/hourly")
@rk.limit("20/hour")
def hourly():
    """No refill during a test (one token per 3 minutes): exact totals."""
    return jsonify(pid=os.getpid())


@app.get("/pid")
@rk.exempt
def pid():
    return jsonify(pid=os.getpid())


@app.get("/nap")
@rk.exempt
def nap():
    """Holds its (sync) worker for 0.2 s: concurrent naps reach every ready
    worker, which is how the tests' fixture waits until all have booted."""
    time.sleep(0.2)
    return jsonify(pid=os.getpid())


@app.get("/metered")
@rk.limit("5/minute", name="metered")
def metered():
    return jsonify(pid=os.getpid())


_held = []  # permits this worker keeps until it dies


@app.get("/hold")
@rk.exempt
def hold():
    """Takes a permit of the concurrency policy "held" and never gives it
    back: the worker dies holding it (test_gunicorn.py)."""
    import ratekeeper

    engine = ratekeeper.shared_engine(os.environ["RATEKEEPER_SHARED_PATH"])
    _held.append(engine.policy("held", "concurrency 8 ttl 1 hour").acquire("job"))
    return jsonify(pid=os.getpid())


@app.after_request
def worker_pid(response):
    """Names the worker that answered (429s and /metrics included)."""
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response
