#!/usr/bin/env bash
# ratekeeper's Python demo: a Flask API under `gunicorn -w 4` on 127.0.0.1
# whose workers share one limit (a file under /dev/shm); a bounded burst from
# several simulated clients; what passed and what was throttled, and one 429.
# Installs what it needs (pip install ./bindings/python flask gunicorn; the
# package build compiles the Rust library with cargo). Stops everything it
# started. Set RATEKEEPER_DEMO_SKIP_INSTALL=1 to use what is installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkg="$(dirname "$here")"
python="${PYTHON:-python3}"
if [ "${RATEKEEPER_DEMO_SKIP_INSTALL:-0}" != 1 ]; then
  echo "== pip install ./bindings/python flask gunicorn (builds the Rust library)"
  "$python" -m pip install -q --disable-pip-version-check "$pkg" flask gunicorn
fi
exec "$python" "$here/run_demo.py"
