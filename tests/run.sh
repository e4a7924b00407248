#!/usr/bin/env bash
# The whole test suite, as CI runs it (README "Tests"). Installs what it
# needs on a fresh Debian machine; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n=== %s ===\n' "$*"; }

step "system packages"
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v g++ >/dev/null || need+=(g++)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

step "format and lints"
cargo fmt --all -- --check
# The Python extension (bindings/python: PyO3) is a workspace of its own,
# which `cargo fmt --all` above does not reach.
(cd bindings/python && cargo fmt -- --check)
cargo clippy --all-targets --features cli -- -D warnings
# Without the Redis backend (feature `redis`, on by default) it must build too.
CARGO_TARGET_DIR=target/no-redis cargo clippy --no-default-features --lib --tests -- -D warnings
(cd bindings/python && CARGO_TARGET_DIR="$PWD/../../target/python" cargo clippy --all-targets -- -D warnings)

step "the committed C header is what cbindgen generates"
cargo build --lib
git diff --exit-code -- include/ || { echo "include/ratekeeper.h is stale: commit the regenerated header"; exit 1; }

step "unit, model, multi-process and CLI tests (debug: overflow checks on)"
cargo test --features cli

step "the same in release (what users run)"
cargo test --release --features cli

step "loom models of the lock-free protocol"
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
  cargo test --release --lib loom_

if [ -x tests/c/run.sh ]; then
  step "C ABI: plain, ASan+UBSan, valgrind, pkg-config example"
  tests/c/run.sh
fi

step "Linux aarch64 under qemu-user, rustc 1.85: unit, integration and C tests (tests/aarch64.sh)"
# qemu does NOT reproduce aarch64's weak memory ordering (guest loads and
# stores run on the x86_64 host): this proves that the crate builds with
# its MSRV and behaves on aarch64, not that its atomics are ordered right;
# the ordering review (README "Platforms") and the loom models above do that.
# Adds 9 min here (2 shared cores, root present, cold target directory),
# 13-14 min on a fresh machine, which debootstraps the Debian root first
# (README "Tests").
tests/aarch64.sh

step "Python package, Flask extension, Gunicorn (pytest)"
bash bindings/python/run_tests.sh

step "uWSGI plugin: built with uwsgi --build-plugin, under uwsgi --master --processes 4 (tests/uwsgi/run.sh)"
# After the Python step: the plugin's 429 is compared with ratekeeper.flask's.
tests/uwsgi/run.sh

if [ -x fuzz/smoke.sh ]; then
  step "fuzz smoke (${FUZZ_SECONDS:-20} s per target)"
  fuzz/smoke.sh
fi

step "all green"
