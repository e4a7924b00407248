"""The demo API: a Flask app whose limits every gunicorn worker shares.

- GET /api/search: per API key (X-API-Key; clients without one are keyed by
  their address), a tier chosen per request: partner keys get 10/minute,
  everybody else 4/minute; plus a 20/second burst limit.
- GET /healthz: exempt.

Behind one trusted proxy (RATEKEEPER_TRUSTED_PROXIES = 1): the client
address is the last X-Forwarded-For entry, whatever the client wrote before it.
"""

import os

from flask import Flask, jsonify, request

from ratekeeper.flask import Ratekeeper, header

app = Flask(__name__)
app.config.update(
    RATEKEEPER_TRUSTED_PROXIES=1,
    RATEKEEPER_DEFAULT="100/minute",
)
rk = Ratekeeper(app)  # shared file: $RATEKEEPER_SHARED_PATH, set by ratekeeper.gunicorn


def tier() -> str:
    key = request.headers.get("X-API-Key", "")
    return "10/minute" if key.startswith("partner-") else "4/minute"


@app.get("/api/search")
@rk.limit("20/second", name="burst", key=header("X-API-Key"))
@rk.limit(tier, name="plan", key=header("X-API-Key"))
def search():
    return jsonify(results=[], worker=os.getpid())


@app.get("/healthz")
@rk.exempt
def healthz():
    return jsonify(ok=True, worker=os.getpid())
