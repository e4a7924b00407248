#!/usr/bin/env bash
# CI smoke run of the fuzzers: builds every target of this cargo-fuzz
# workspace, runs each for ${FUZZ_SECONDS:-20} seconds, prints the
# executions per target and "N passed, M failed" last. A crash leaves its
# input under fuzz/artifacts/<target>/ (reproduce with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`) and fails the run.
#
# Needs cargo-fuzz (installed here if missing) and, on a stable toolchain,
# RUSTC_BOOTSTRAP=1 (set here) for the sanitizer flags.
set -uo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2 || exit 1
fi

echo "== building the fuzz targets"
if ! cargo fuzz build; then
    echo "0 passed, 1 failed"
    exit 1
fi

passed=0
failed=0
for target in $(cargo fuzz list); do
    log=$(mktemp)
    mkdir -p "corpus/$target"
    echo "== $target (${SECONDS_PER_TARGET} s)"
    if cargo fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        echo "PASS $target: ${execs:-?} executions in ${SECONDS_PER_TARGET} s"
        passed=$((passed + 1))
    else
        tail -n 60 "$log"
        echo "FAIL $target (see fuzz/artifacts/$target/)"
        failed=$((failed + 1))
    fi
    rm -f "$log"
done
# The shm_file target keeps its template in /dev/shm/rk-fuzz-shm-<pid>/
# (or $TMPDIR) for its whole run; libFuzzer exits without running
# destructors, so remove the directories of fuzzers no longer running.
for d in /dev/shm/rk-fuzz-shm-* "${TMPDIR:-/tmp}"/rk-fuzz-shm-*; do
    [ -d "$d" ] || continue
    kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
