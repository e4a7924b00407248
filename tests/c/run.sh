#!/usr/bin/env bash
# Builds the static library and runs the C tests:
#   1. each test program compiled normally (-Werror, C11 / C++17),
#   2. each again under AddressSanitizer + UndefinedBehaviorSanitizer,
#   3. each normal build under valgrind memcheck (zero errors, no leaks),
#   4. the bindings/c example, built through `make install` + pkg-config
#      (shared and static), its output compared with expected_output.txt.
# Prints "N passed, M failed" last; exits non-zero on any failure.
#
# test_redis needs a redis-server: this script starts one (127.0.0.1, a free
# port, a password, no persistence) and stops it by its PID on exit. Without
# redis-server the test is skipped, except in CI (CI=true), where that is a
# failure (tests/run.sh installs it).
#
# Env: CARGO_TARGET_DIR (default: <repo>/target), CC, CXX, SKIP_VALGRIND=1.
# Cross builds (tests/aarch64.sh): RK_C_LIB=<libratekeeper.a> links that
# library instead of building one, RK_C_RUNNER="qemu-aarch64 -L ..." runs
# each test program through it, RK_C_PLAIN_ONLY=1 runs step 1 only (ASan,
# valgrind and `make install` are native tools).
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CC=${CC:-cc}
CXX=${CXX:-c++}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/rk-ctest.XXXXXX")
REDIS_PID=
PREFIX=
cleanup() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null
        wait "$REDIS_PID" 2>/dev/null
    fi
    rm -rf "$OUT" ${PREFIX:+"$PREFIX"}
}
trap cleanup EXIT

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL $1"; }
# Prints the failures and the counts, and exits with the verdict.
summary() {
    echo
    for f in "${failures[@]+"${failures[@]}"}"; do echo "failed: $f"; done
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

read -r -a RUNNER <<<"${RK_C_RUNNER:-}"
PLAIN_ONLY=${RK_C_PLAIN_ONLY:-0}

if [ -n "${RK_C_LIB:-}" ]; then
    echo "== the library: $RK_C_LIB (RK_C_LIB)"
    LIB=$RK_C_LIB
else
    echo "== building the library (cargo build --release --lib)"
    if ! cargo build --release --lib; then
        echo "cargo build failed"
        echo "0 passed, 1 failed"
        exit 1
    fi
    LIB=$TARGET_DIR/release/libratekeeper.a
fi
[ -f "$LIB" ] || { echo "missing $LIB"; echo "0 passed, 1 failed"; exit 1; }

CFLAGS=(-std=c11 -Wall -Wextra -Wpedantic -Werror -D_POSIX_C_SOURCE=200809L -pthread -g -I"$ROOT/include")
CXXFLAGS=(-std=c++17 -Wall -Wextra -Wpedantic -Werror -pthread -g -I"$ROOT/include")
LIBS=("$LIB" -lpthread -ldl -lm -lrt -lutil)
SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
TESTS=(test_api.c test_threads.c test_shared.c test_redis.c test_cxx.cpp)

# redis_ping <port>: whether a server answers PING there (NOAUTH counts: it is up).
redis_ping() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 line <&3
    exec 3>&-
    [[ $line == +PONG* || $line == -NOAUTH* ]]
}

echo "== redis-server for test_redis"
if command -v redis-server >/dev/null; then
    for _ in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        mkdir -p "$OUT/redis"
        redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$OUT/redis" \
            --requirepass rk-test-password --logfile "$OUT/redis/log" --daemonize no &
        REDIS_PID=$!
        for _ in $(seq 100); do
            kill -0 "$REDIS_PID" 2>/dev/null || break
            redis_ping "$port" 2>/dev/null && break
            sleep 0.05
        done
        if kill -0 "$REDIS_PID" 2>/dev/null && redis_ping "$port" 2>/dev/null; then
            export RK_TEST_REDIS_URL="redis://:rk-test-password@127.0.0.1:$port/0"
            export RK_TEST_REDIS_WRONG_PASSWORD_URL="redis://:not-the-password@127.0.0.1:$port/0"
            echo "redis-server pid $REDIS_PID on 127.0.0.1:$port"
            break
        fi
        kill "$REDIS_PID" 2>/dev/null
        wait "$REDIS_PID" 2>/dev/null
        REDIS_PID=
    done
    [ -n "$REDIS_PID" ] || { cat "$OUT/redis/log" 2>/dev/null; fail "redis-server did not start"; }
elif [ "${CI:-}" = true ]; then
    fail "redis-server is not installed (tests/run.sh installs it with apt-get)"
else
    echo "SKIP test_redis: redis-server is not installed (apt-get install redis-server)"
fi

# compile <source> <output> [extra flags...]
compile() {
    local src=$1 out=$2
    shift 2
    case $src in
        *.cpp) "$CXX" "${CXXFLAGS[@]}" "$@" "tests/c/$src" "${LIBS[@]}" -o "$out" ;;
        *) "$CC" "${CFLAGS[@]}" "$@" "tests/c/$src" "${LIBS[@]}" -o "$out" ;;
    esac
}

echo "== normal builds"
for t in "${TESTS[@]}"; do
    name=${t%.*}
    if compile "$t" "$OUT/$name" -O1 && ${RUNNER[@]+"${RUNNER[@]}"} "$OUT/$name"; then pass "$name"; else fail "$name"; fi
done

if [ "$PLAIN_ONLY" = 1 ]; then
    echo "SKIP ASan+UBSan, valgrind and the pkg-config example: RK_C_PLAIN_ONLY=1"
    summary
fi

echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
for t in "${TESTS[@]}"; do
    name=${t%.*}
    if compile "$t" "$OUT/$name-san" -O1 "${SAN[@]}" &&
        ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=0 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$OUT/$name-san"; then
        pass "$name (asan+ubsan)"
    else
        fail "$name (asan+ubsan)"
    fi
done

echo "== valgrind memcheck"
if [ "${SKIP_VALGRIND:-0}" = 1 ]; then
    echo "SKIP valgrind: SKIP_VALGRIND=1"
elif ! command -v valgrind >/dev/null; then
    echo "SKIP valgrind: not installed (apt-get install valgrind)"
else
    for t in "${TESTS[@]}"; do
        name=${t%.*}
        if valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible \
            "$OUT/$name"; then
            pass "$name (valgrind)"
        else
            fail "$name (valgrind)"
        fi
    done
fi

echo "== bindings/c example via make install + pkg-config"
PREFIX=$(mktemp -d "${TMPDIR:-/tmp}/rk-prefix.XXXXXX")
if make -s install PREFIX="$PREFIX" CARGO_TARGET_DIR="$TARGET_DIR" >"$OUT/install.log" 2>&1; then
    for variant in example example-static; do
        rm -rf "$OUT/ex" && cp -r bindings/c "$OUT/ex" && rm -f "$OUT/ex/example" "$OUT/ex/example-static"
        if PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" make -s -C "$OUT/ex" "$variant" CC="$CC" \
            CFLAGS="-std=c11 -Wall -Wextra -Wpedantic -Werror -O2" &&
            "$OUT/ex/$variant" >"$OUT/$variant.out" &&
            diff -u bindings/c/expected_output.txt "$OUT/$variant.out"; then
            pass "bindings/c $variant"
        else
            fail "bindings/c $variant"
        fi
    done
else
    cat "$OUT/install.log"
    fail "make install"
fi

summary
