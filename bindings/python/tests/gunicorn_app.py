"""The app that test_gunicorn.py serves with `gunicorn -w 4`."""

import os

from flask import Flask, jsonify

from ratekeeper.flask import Ratekeeper

app = Flask(__name__)
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
