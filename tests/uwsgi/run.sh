#!/usr/bin/env bash
# The uWSGI plugin's tests (bindings/uwsgi), as tests/run.sh runs them:
#   1. installs what is missing on a fresh Debian machine: uwsgi-core (a uWSGI
#      built with internal routing: Debian links it with PCRE), its http and
#      python3 plugins, gcc, pkg-config;
#   2. installs ratekeeper's C library into a temporary prefix
#      (`make install PREFIX=...`; reuses the release build of CARGO_TARGET_DIR);
#   3. builds the plugin as users do, `uwsgi --build-plugin bindings/uwsgi`,
#      finding the library through PKG_CONFIG_PATH (the .pc file's rpath
#      points the plugin at the temporary prefix);
#   4. builds and runs the field-formatting unit test under ASan+UBSan;
#   5. runs tests/uwsgi/test_plugin.py (each test starts and stops its own
#      uwsgi --master --processes 4 --http 127.0.0.1:<free port>).
# Safe to re-run; leaves nothing behind (temporary directory, /dev/shm files).
# Another uWSGI: UWSGI=/path/to/uwsgi; one with http and python built in (as
# `pip install uwsgi` makes it) also needs `--core-plugins ''` (arguments
# go to test_plugin.py).
# Prints "N passed, M failed" last; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
UWSGI=${UWSGI:-uwsgi}

need=()
command -v "$UWSGI" >/dev/null || need+=(uwsgi-core)
[ -f /usr/lib/uwsgi/plugins/python3_plugin.so ] || need+=(uwsgi-plugin-python3)
command -v gcc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v ps >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# uwsgi --build-plugin compiles against uwsgi.h, which includes the
# headers of every feature the uWSGI binary was built with: install the
# development package of each one missing (Debian's uwsgi-core 2.0.21 has
# capabilities, UUIDs, SSL, PCRE and zlib; a fresh machine has none of
# their headers).
cflags=$("$UWSGI" --cflags)
has_header() { printf '#define PCRE2_CODE_UNIT_WIDTH 8\n#include <%s>\n' "$1" | gcc -E -x c - >/dev/null 2>&1; }
dev=()
for pair in UWSGI_CAP:sys/capability.h:libcap-dev UWSGI_UUID:uuid/uuid.h:uuid-dev \
            UWSGI_SSL:openssl/ssl.h:libssl-dev UWSGI_PCRE:pcre.h:libpcre3-dev \
            UWSGI_PCRE2:pcre2.h:libpcre2-dev UWSGI_ZLIB:zlib.h:zlib1g-dev; do
  IFS=: read -r flag header package <<<"$pair"
  if grep -q -- "-D$flag\b" <<<"$cflags" && ! has_header "$header"; then
    dev+=("$package")
  fi
done
if [ ${#dev[@]} -gt 0 ]; then
  echo "== apt-get install ${dev[*]} (headers uwsgi.h includes)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${dev[@]}" >/dev/null
fi
if ! grep -q -- -DUWSGI_ROUTING <<<"$cflags"; then
  echo "$UWSGI was built without internal routing (PCRE): the plugin needs it (README \"uWSGI\")" >&2
  exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rk-uwsgi.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== make install PREFIX=$WORK/prefix"
make -s install PREFIX="$WORK/prefix" CARGO_TARGET_DIR="$TARGET_DIR" >"$WORK/install.log" 2>&1 ||
  { cat "$WORK/install.log"; exit 1; }

echo "== $UWSGI --build-plugin bindings/uwsgi ($("$UWSGI" --version))"
(cd "$WORK" && PKG_CONFIG_PATH="$WORK/prefix/lib/pkgconfig" "$UWSGI" --build-plugin "$ROOT/bindings/uwsgi" >build.log 2>&1) ||
  { cat "$WORK/build.log"; exit 1; }
[ -f "$WORK/ratekeeper_plugin.so" ] || { cat "$WORK/build.log"; echo "no ratekeeper_plugin.so" >&2; exit 1; }

echo "== the plugin's sources compile without a warning (-Wall -Wextra -Werror, uWSGI's own flags)"
mkdir -p "$WORK/uwsgi-h" && "$UWSGI" --dot-h >"$WORK/uwsgi-h/uwsgi.h"
# eval: uWSGI's flags carry their own shell quoting (-DUWSGI_VERSION="\"2.0.21-debian\"")
eval cc -fsyntax-only -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
  $("$UWSGI" --cflags) -I"$WORK/uwsgi-h" -I"$WORK/prefix/include" bindings/uwsgi/ratekeeper_uwsgi.c bindings/uwsgi/rk_fields.c

echo "== the plugin's fields and body (tests/uwsgi/test_fields.c, ASan+UBSan)"
cc -std=c11 -Wall -Wextra -Wpedantic -Werror -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -I bindings/uwsgi tests/uwsgi/test_fields.c bindings/uwsgi/rk_fields.c -o "$WORK/test_fields"
"$WORK/test_fields"

echo "== tests/uwsgi/test_plugin.py"
python3 tests/uwsgi/test_plugin.py --uwsgi "$UWSGI" --plugin "$WORK/ratekeeper_plugin.so" "$@"
