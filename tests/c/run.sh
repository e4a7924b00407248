#!/usr/bin/env bash
# Builds the static library and runs the C tests:
#   1. each test program compiled normally (-Werror, C11 / C++17),
#   2. each again under AddressSanitizer + UndefinedBehaviorSanitizer,
#   3. each normal build under valgrind memcheck (zero errors, no leaks),
#   4. the bindings/c example, built through `make install` + pkg-config
#      (shared and static), its output compared with expected_output.txt.
# Prints "N passed, M failed" last; exits non-zero on any failure.
#
# Env: CARGO_TARGET_DIR (default: <repo>/target), CC, CXX, SKIP_VALGRIND=1.
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CC=${CC:-cc}
CXX=${CXX:-c++}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/rk-ctest.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL $1"; }

echo "== building the library (cargo build --release --lib)"
if ! cargo build --release --lib; then
    echo "cargo build failed"
    echo "0 passed, 1 failed"
    exit 1
fi
LIB=$TARGET_DIR/release/libratekeeper.a
[ -f "$LIB" ] || { echo "missing $LIB"; echo "0 passed, 1 failed"; exit 1; }

CFLAGS=(-std=c11 -Wall -Wextra -Wpedantic -Werror -D_POSIX_C_SOURCE=200809L -pthread -g -I"$ROOT/include")
CXXFLAGS=(-std=c++17 -Wall -Wextra -Wpedantic -Werror -pthread -g -I"$ROOT/include")
LIBS=("$LIB" -lpthread -ldl -lm -lrt -lutil)
SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
TESTS=(test_api.c test_threads.c test_shared.c test_cxx.cpp)

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
    if compile "$t" "$OUT/$name" -O1 && "$OUT/$name"; then pass "$name"; else fail "$name"; fi
done

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
trap 'rm -rf "$OUT" "$PREFIX"' EXIT
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

echo
for f in "${failures[@]+"${failures[@]}"}"; do echo "failed: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
