#!/usr/bin/env bash
# The Python binding's tests, as CI runs them. On a fresh Debian machine with
# Python >= 3.9 (pip), gcc and a Rust toolchain (cargo on PATH), it installs
# what it needs (the package, which builds the Rust library with cargo,
# honouring CARGO_TARGET_DIR; pytest, flask, gunicorn, prometheus-client and
# redis, the Python client the Redis tests' helpers use; python3-dev and
# redis-server with apt-get only if missing) and runs pytest. Exits non-zero
# on failure; pytest's summary line is the last line printed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

command -v cargo >/dev/null || { echo "run_tests.sh: cargo is not on PATH (install Rust with rustup)" >&2; exit 2; }
need=()
command -v cc >/dev/null || command -v gcc >/dev/null || need+=(gcc)
include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[ -f "$include/Python.h" ] || need+=(python3-dev)
"$python" -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== pip install ./bindings/python pytest flask gunicorn prometheus-client redis (builds the Rust library)"
"$python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$here"
"$python" -m pip install -q --disable-pip-version-check "$here" pytest flask gunicorn prometheus-client redis

echo "== pytest bindings/python/tests"
cd "$here/tests"
exec "$python" -m pytest -q -p no:cacheprovider -o console_output_style=classic "$@"
