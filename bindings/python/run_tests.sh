#!/usr/bin/env bash
# The Python binding's tests, as CI runs them. On a fresh Debian machine with
# Python >= 3.10 (pip, venv), gcc and a Rust toolchain (cargo on PATH), it:
#   1. builds the wheel with `maturin build --release --zig --compatibility
#      manylinux2014` (pip-installs maturin and ziglang into a build venv
#      first; honours CARGO_TARGET_DIR): zig links against glibc 2.17's
#      symbols, so the wheel is manylinux_2_17 and installs on any x86_64
#      Linux with glibc >= 2.17 (checked below), not just on machines as new
#      as the one that built it;
#   2. installs that wheel into a fresh venv whose PATH has no cargo and runs
#      the smoke test (tests/wheel_smoke.py: import, a shared engine, a check,
#      a Flask app with one limit, a plain ASGI app behind ratekeeper.asgi):
#      the wheel needs no Rust to install or run;
#   3. installs the wheel and pytest, flask, gunicorn, prometheus-client,
#      redis (the Python client the Redis tests' helpers use), fastapi,
#      uvicorn, uvicorn-worker, httpx and websockets (the ASGI tests), and
#      limits, flask-limiter and slowapi (ratekeeper.limits_storage's tests)
#      into $PYTHON
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

echo "== maturin build --release --zig --compatibility manylinux2014 (the wheel: the Rust library linked into ratekeeper._ratekeeper)"
mkdir -p "$work"
[ -x "$work/maturin-venv/bin/maturin" ] && "$work/maturin-venv/bin/python" -m ziglang version >/dev/null 2>&1 || {
  "$python" -m venv "$work/maturin-venv"
  "$work/maturin-venv/bin/python" "${pip_q[@]}" "maturin>=1.7,<2" "ziglang>=0.11,<0.15"
}
rm -rf "$work/wheels"
(
  cd "$here"
  # maturin finds zig through the `ziglang` package of its own venv.
  export PATH="$work/maturin-venv/bin:$PATH"
  maturin build --release --quiet --zig --compatibility manylinux2014 --interpreter "$python" --out "$work/wheels"
)
wheel="$(ls "$work"/wheels/ratekeeper-*.whl)"
echo "   $(basename "$wheel")"
case "$(basename "$wheel")" in
  *manylinux_2_17_x86_64*|*manylinux_2_17_aarch64*) ;;
  *) echo "run_tests.sh: the wheel is not manylinux_2_17: $(basename "$wheel")" >&2; exit 1 ;;
esac
# maturin audits the tag it writes; check the symbols ourselves too: no
# glibc symbol version above 2.17 may be imported.
"$python" - "$wheel" <<'PY'
import re, subprocess, sys, tempfile, zipfile
with tempfile.TemporaryDirectory() as d:
    z = zipfile.ZipFile(sys.argv[1])
    so = [n for n in z.namelist() if n.endswith(".so")]
    assert len(so) == 1, so
    path = z.extract(so[0], d)
    syms = subprocess.run(["objdump", "-T", path], check=True, capture_output=True, text=True).stdout
versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_(\d+(?:\.\d+)+)", syms)}
newest = max(versions)
assert newest <= (2, 17), f"the module imports glibc {'.'.join(map(str, newest))} symbols: not manylinux_2_17"
print(f"   newest glibc symbol version imported: {'.'.join(map(str, newest))} (manylinux_2_17 allows 2.17)")
PY

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

echo "== pip install the wheel, pytest, flask, gunicorn, prometheus-client, redis, fastapi, uvicorn, uvicorn-worker, httpx, websockets, limits, flask-limiter, slowapi"
"$python" "${pip_q[@]}" --force-reinstall --no-deps "$wheel"
"$python" "${pip_q[@]}" pytest flask gunicorn prometheus-client redis \
  fastapi "uvicorn>=0.30" uvicorn-worker httpx websockets \
  "limits>=4.1" "flask-limiter>=3.10" "slowapi>=0.1.9"

echo "== pytest bindings/python/tests"
cd "$here/tests"
exec "$python" -m pytest -q -p no:cacheprovider -o console_output_style=classic "$@"
