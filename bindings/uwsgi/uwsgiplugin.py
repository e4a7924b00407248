# Build: uwsgi --build-plugin bindings/uwsgi   (writes ratekeeper_plugin.so
# in the current directory). Needs a uWSGI built with internal routing
# (PCRE) and ratekeeper's C library found by pkg-config (`make install
# PREFIX=...` at the top of the repository, then PKG_CONFIG_PATH). Set
# RATEKEEPER_PKG=ratekeeper-static to link the library into the plugin.
import os
import shlex
import subprocess
import sys

NAME = 'ratekeeper'

# uwsgi --build-plugin passes the flags the running uwsgi was built with.
_core_cflags = os.environ.get('UWSGI_PLUGINS_BUILDER_CFLAGS')
if _core_cflags is not None and '-DUWSGI_ROUTING' not in _core_cflags.split():
    sys.exit(
        "ratekeeper: this uWSGI was built without internal routing (no PCRE when uWSGI itself was compiled), "
        "and the ratekeeper plugin is a routing action. Use Debian's uwsgi-core (apt-get install uwsgi-core), or reinstall uWSGI with the PCRE development package present "
        "(apt-get install libpcre2-dev; pip install --no-cache-dir --force-reinstall uwsgi), then build again."
    )

_pkg = os.environ.get('RATEKEEPER_PKG', 'ratekeeper')


def _pkg_config(*flags):
    try:
        out = subprocess.check_output(['pkg-config'] + list(flags) + [_pkg], stderr=subprocess.STDOUT)
    except OSError:
        sys.exit("ratekeeper: pkg-config is not installed (apt-get install pkg-config)")
    except subprocess.CalledProcessError as e:
        sys.exit(
            "ratekeeper: pkg-config cannot find %s (%s). Install ratekeeper's C library with "
            "`make install PREFIX=$HOME/.local` at the top of the repository and "
            "`export PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig`." % (_pkg, e.output.decode(errors='replace').strip())
        )
    return shlex.split(out.decode())


CFLAGS = _pkg_config('--cflags') + ['-std=gnu11', '-Wall', '-Wextra', '-Wno-unused-parameter']
LDFLAGS = []
LIBS = _pkg_config('--libs', '--static') if _pkg.endswith('-static') else _pkg_config('--libs')
GCC_LIST = ['ratekeeper_uwsgi', 'rk_fields']
