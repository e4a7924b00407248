"""The app that test_gunicorn.py and test_monitoring.py serve with `gunicorn -w 4`."""

import os

from flask import Flask, jsonify

from ratekeeper.flask import Ratekeeper

app = Flask(__name__)
# /metrics: the Prometheus metrics of the shared file (every worker's totals).
app.config["RATEKEEPER_METRICS_ENDPOINT"] = "/metrics"
rk = Ratekeeper(app)  # engine: the shared file of $RATEKEEPER_SHARED_PATH (set by the hooks)


@app.get("/limited")
@rk.limit("20/minute")
def limited():
    return jsonify(pid=os.getpid())


@app.get("/limited-b")
@rk.limit("20/minute")
def limited_b():
    return jsonify(pid=os.getpid())


@app.get("/pid")
@rk.exempt
def pid():
    return jsonify(pid=os.getpid())


@app.get("/metered")
@rk.limit("5/minute", name="metered")
def metered():
    return jsonify(pid=os.getpid())


@app.after_request
def worker_pid(response):
    """Names the worker that answered (429s and /metrics included)."""
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response
