#!/usr/bin/env bash
# The Python binding's tests, as CI runs them. On a fresh Debian machine with
# Python >= 3.10 (pip, venv), gcc and a Rust toolchain (cargo on PATH), it:
#   1. builds the wheel with `maturin build --release` (pip-installs maturin
#      into a build venv first; honours CARGO_TARGET_DIR);
#   2. installs that wheel into a fresh venv whose PATH has no cargo and runs
#      the smoke test (tests/wheel_smoke.py: import, a shared engine, a check,
#      a Flask app with one limit): the wheel needs no Rust to install or run;
#   3. installs the wheel and pytest, flask, gunicorn, prometheus-client,
#      redis (the Python client the Redis tests' helpers use), and limits,
#      flask-limiter, slowapi, starlette and uvicorn (ratekeeper.limits_storage's
#      tests) into $PYTHON
#      (gcc, python3-venv, python3-pip and redis-server with apt-get only if
#      missing) and runs pytest.
# Exits non-zero on failure; pytest's summary line is the last line printed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
work="${RATEKEEPER_BUILD_DIR:-$here/build}"

command -v cargo >/dev/null || { echo "run_tests.sh: cargo is not on PATH (install Rust with rustup)" >&2; exit 2; }
need=()
command -v cc >/dev/null || command -v gcc >/dev/null || need+=(gcc)  # ring (rustls) compiles some C
"$python" -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
"$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
pip_q=(-m pip install -q --disable-pip-version-check)

echo "== maturin build --release (the wheel: the Rust library linked into ratekeeper._ratekeeper)"
mkdir -p "$work"
[ -x "$work/maturin-venv/bin/maturin" ] || {
  "$python" -m venv "$work/maturin-venv"
  "$work/maturin-venv/bin/python" "${pip_q[@]}" "maturin>=1.7,<2"
}
rm -rf "$work/wheels"
(cd "$here" && "$work/maturin-venv/bin/maturin" build --release --quiet --interpreter "$python" --out "$work/wheels")
wheel="$(ls "$work"/wheels/ratekeeper-*.whl)"
echo "   $(basename "$wheel")"

echo "== the wheel in a fresh venv without cargo on PATH: tests/wheel_smoke.py"
rm -rf "$work/smoke-venv"
"$python" -m venv "$work/smoke-venv"
no_cargo_path=""
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -n "$d" ] && [ ! -e "$d/cargo" ] && [ ! -e "$d/rustc" ] && no_cargo_path="${no_cargo_path:+$no_cargo_path:}$d"
done
(
  export PATH="$work/smoke-venv/bin:$no_cargo_path"
  unset CARGO CARGO_HOME RUSTUP_HOME
  ! command -v cargo >/dev/null || { echo "run_tests.sh: cargo is still on PATH" >&2; exit 1; }
  python "${pip_q[@]}" --only-binary=:all: "$wheel" flask
  cd "$here/tests" && python wheel_smoke.py
)

echo "== pip install the wheel, pytest, flask, gunicorn, prometheus-client, redis, limits, flask-limiter, slowapi, starlette, uvicorn"
"$python" "${pip_q[@]}" --force-reinstall --no-deps "$wheel"
"$python" "${pip_q[@]}" pytest flask gunicorn prometheus-client redis \
  "limits>=4.1" "flask-limiter>=3.10" "slowapi>=0.1.9" starlette "uvicorn>=0.30"

echo "== pytest bindings/python/tests"
cd "$here/tests"
exec "$python" -m pytest -q -p no:cacheprovider -o console_output_style=classic "$@"
