#!/usr/bin/env bash
# Linux aarch64, the second supported platform (README "Platforms"): builds
# ratekeeper for aarch64-unknown-linux-gnu with rustc 1.85 (the MSRV) and
# runs its tests under qemu-user, on an x86_64 Debian machine, as root, with
# no toolchain download. tests/run.sh runs it; a copy, grown from
# ../shared/tools/aarch64-test.sh, so that a fresh clone has it.
#
# Without arguments (the CI step):
#   1. `cargo test --release --target aarch64-unknown-linux-gnu --features
#      cli --lib --tests` with default features: every unit and integration
#      test, the Redis backend's too (the tests start the root's x86_64
#      redis-server, which the aarch64 test programs reach on 127.0.0.1).
#      The release profile is overridden to opt-level 1, no debug info, with
#      debug assertions and overflow checks. Debug would be too slow to run:
#      qemu ran the debug unit tests 7x slower than native, and
#      tests/model.rs takes 150 s natively in debug (~17 min here,
#      estimated). Opt-level 3 with line tables compiled in 12m47s against
#      3m37s and ran model.rs in 114-133 s against 188 s (one cold build
#      each, on a busy 2-core machine);
#   2. the unit tests again on two older CPU models (QEMU_CPU): neoverse-n1
#      (LSE `casp`, no LSE2: 16-byte loads are `casp` too) and cortex-a53
#      (ARMv8.0: `ldxp`/`stxp` loops), so that each of portable-atomic's
#      16-byte paths runs (qemu's default CPU, `max`, has LSE2);
#   3. the C tests, plain builds (tests/c/run.sh, aarch64-linux-gnu-gcc and
#      -g++; ASan, valgrind and `make install` are not cross tools);
#   4. one shared file used by both architectures in turn: the x86_64 CLI
#      (built natively) and the aarch64 CLI (under qemu) charge one key of
#      one policy and add policies, and must agree on every count (the file
#      layout and the key hash do not depend on the architecture).
# With arguments: `cargo test --target aarch64-unknown-linux-gnu ARGS` only,
#   e.g. tests/aarch64.sh --no-default-features --lib
#
# qemu does NOT reproduce aarch64's weak memory ordering: it runs guest
# loads and stores on the x86_64 host, whose ordering is stronger. This step
# proves that the code builds and behaves on aarch64, not that its orderings
# are right: that is the ordering review (README "Platforms") and the loom
# models' job.
#
# How: a Debian trixie root (debootstrap, kept at $RK_ARM64_ROOT, default
# /var/tmp/rk-arm64-root; ~1 min the first time) supplies rustc/cargo 1.85,
# the aarch64 standard library (libstd-rust-dev:arm64), the cross gcc/g++,
# qemu-user, and redis-server/redis-cli/openssl for the Redis tests. Build
# scripts and proc-macros run natively; test programs run under
# qemu-aarch64 (cargo's runner; `RATEKEEPER_TEST_RUNNER` for the tests that
# start a program of this build, tests/support/runner.rs). The root's
# mounts (proc, dev, dev/shm) live in a private mount namespace that ends
# with the step; runs sharing one root take turns (flock). The build keeps
# its target directory in the root (`/root/rk-target`), so a second run is
# incremental.
# Cargo.lock: the committed one pins dependencies newer than 1.85 allows
# (redis 1.8 needs 1.88), so a copy is re-resolved with cargo 1.85's
# MSRV-aware resolver (CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback);
# RK_ARM64_KEEP_LOCK=1 builds with the committed file as it is. Doc-tests
# do not run with --target on cargo 1.85.
#
# Cost (2 shared cores): 13m46s on a fresh machine (root 1.5 min, compiling
# 7.3 min, tests 5 min: model.rs 3.2, alloc.rs 0.7); 9 min with the root
# present and a cold target directory (README "Tests").
#
# Env: RK_ARM64_ROOT, RK_ARM64_KEEP_LOCK=1, CARGO_TARGET_DIR (the native
# CLI of step 4), CI=true (a missing tool is a failure, as in tests/c/run.sh).
set -euo pipefail
# One compound command, read whole before it runs: editing this file during
# a run (which takes minutes) does not derail the run.
{
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."
REPO=$(pwd)
R=${RK_ARM64_ROOT:-/var/tmp/rk-arm64-root}
TRIPLE=aarch64-unknown-linux-gnu
QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu"
[ "$(id -u)" = 0 ] || { echo "aarch64.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }

# Everything below runs in a private mount namespace: the bind mounts into
# the root are this run's alone and vanish when it ends, even if it is killed.
if [ -z "${RK_ARM64_IN_NS:-}" ]; then
  exec unshare --mount --propagation private env RK_ARM64_IN_NS=1 bash "$SELF" "$@"
fi
mkdir -p "$(dirname "$R")"
exec 9>"$R.lock"
flock 9

# The Debian archive this machine's apt already uses (first URI of the sources).
mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -vi security | awk '{print $2}' | head -n 1 || true)
[ -n "$mirror" ] || { echo "aarch64.sh: no Debian archive found in the apt sources" >&2; exit 2; }
if [ ! -x "$R/bin/sh" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  nice debootstrap --variant=minbase --include=ca-certificates trixie "$R" "$mirror" >/dev/null
fi
cp /etc/resolv.conf "$R/etc/resolv.conf"
# debootstrap's minbase root has no /etc/hosts: without one `localhost` (the
# TLS test's server name) does not resolve.
[ -f "$R/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
# Local CA certificates of this machine (if any), so that cargo reaches crates.io from inside.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$R/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
fi
for d in proc dev dev/shm; do
  mount --bind "/$d" "$R/$d"
done
E="env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8"
tools=(rustc cargo gcc aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 pkg-config
  redis-server redis-cli openssl)
missing=0
for t in "${tools[@]}"; do chroot "$R" sh -c "command -v $t" >/dev/null || missing=1; done
if [ "$missing" = 1 ]; then
  echo "== installing the root's packages (once)"
  nice chroot "$R" $E sh -c 'update-ca-certificates >/dev/null && dpkg --add-architecture arm64 && apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends rustc cargo gcc libc6-dev libstd-rust-dev:arm64 \
      gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user pkg-config \
      redis-server redis-tools openssl >/dev/null'
fi
mkdir -p "$R/root/.cargo"
printf '[target.%s]\nlinker = "aarch64-linux-gnu-gcc"\n' "$TRIPLE" >"$R/root/.cargo/config.toml"

# The crate, copied without its target directory and .git (tar keeps the
# files' times, so that unchanged sources are not rebuilt).
rm -rf "$R/root/ratekeeper" && mkdir -p "$R/root/ratekeeper"
tar --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$R/root/ratekeeper"

# in_root SCRIPT: runs a bash script in the root, in the crate's copy.
in_root() {
  nice chroot "$R" $E CARGO_TARGET_DIR=/root/rk-target CARGO_TERM_COLOR=never CI="${CI:-}" \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU" RATEKEEPER_TEST_RUNNER="$QEMU" \
    bash -c "set -euo pipefail; cd /root/ratekeeper; $1"
}
in_root 'rustc -vV | sed -n 1,2p; qemu-aarch64 --version | sed -n 1p'
if [ "${RK_ARM64_KEEP_LOCK:-0}" != 1 ]; then
  in_root 'rm -f Cargo.lock && CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo generate-lockfile -q'
fi

if [ $# -gt 0 ]; then
  in_root "cargo test --target $TRIPLE $(printf '%q ' "$@")"
  exit
fi

step() { printf '\n=== aarch64: %s ===\n' "$*"; }

step "unit and integration tests, default features + cli (qemu, CPU max)"
# `cargo build` first: it also makes the static library the C tests link
# (a `cargo build --lib` of its own would rebuild a third of the
# dependencies, whose features differ without the dev-dependencies).
in_root "cargo build --release --target $TRIPLE --features cli --lib --tests"
in_root "cargo test --release --target $TRIPLE --features cli --lib --tests"

for cpu in neoverse-n1 cortex-a53; do
  step "unit tests on CPU $cpu"
  in_root "QEMU_CPU=$cpu cargo test --release --target $TRIPLE --features cli --lib"
done

step "C tests, plain builds"
in_root "RK_C_LIB=/root/rk-target/$TRIPLE/release/libratekeeper.a RK_C_RUNNER='$QEMU' \
  RK_C_PLAIN_ONLY=1 CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ tests/c/run.sh"

step "one shared file, x86_64 and aarch64 in turn"
cargo build -q --features cli --bin ratekeeper
x86=${CARGO_TARGET_DIR:-$REPO/target}/debug/ratekeeper
arm="chroot $R $QEMU /root/rk-target/$TRIPLE/release/ratekeeper"
file=/dev/shm/rk-aarch64-step-$$.rk
trap 'rm -f "$file"' EXIT
# expect WANT OUTPUT: OUTPUT starts with WANT.
expect() { [[ $2 == "$1"* ]] || { echo "aarch64.sh: expected '$1...', got '$2'" >&2; exit 1; }; }
expect "api	3/hour" "$($x86 add "$file" api 3/hour)"
expect "allowed limit=3 remaining=2 " "$($x86 check "$file" api user:1)"
expect "allowed limit=3 remaining=1 " "$($arm check "$file" api user:1)"
expect "jobs	concurrency 2" "$($arm add "$file" jobs 'concurrency 2')"
expect "allowed limit=3 remaining=0 " "$($x86 check "$file" api user:1)"
expect "denied limit=3 remaining=0 " "$($arm check "$file" api user:1 || true)"
expect "api	3/hour	capacity=" "$($x86 policies "$file")"
[[ $($x86 policies "$file") == *"jobs	concurrency 2	capacity="* ]] || { echo "x86_64 does not list jobs" >&2; exit 1; }
a=$($arm stats --json "$file")
b=$($x86 stats --json "$file")
echo "$b"
[ "$a" = "$b" ] || { echo "aarch64.sh: the two architectures read different stats:" >&2; echo "$a" >&2; exit 1; }
expect '{"policy":"api","limits":"3/hour","allowed":3,"denied":1,' "$b"
echo "x86_64 and aarch64 share one file: same counts, same key, same directory"

step "all green"
exit
}
