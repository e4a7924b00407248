"""The cffi cdef comes from the committed header (its preprocessor lines
evaluated for C11), and the ABI version is checked at import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(PKG_DIR, "..", "..", "include", "ratekeeper.h")
pytest.importorskip("cffi")


def _load_build_ffi():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_ffi", os.path.join(PKG_DIR, "build_ffi.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_ffi = _load_build_ffi()


def test_conditionals_are_evaluated_for_c11_and_dropped():
    cdef = build_ffi.header_to_cdef(textwrap.dedent("""\
        #ifndef GUARD_H
        #define GUARD_H
        #include <stdint.h>
        #define MAX_THINGS 256
        #define NOT_A_NUMBER "text"
        enum colour
        #if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
          : uint32_t
        #endif // comment
         { RED = 0, };
        #ifndef __cplusplus
        #if __STDC_VERSION__ >= 202311L
        typedef enum colour colour;
        #else
        typedef uint32_t colour;
        #endif
        #endif
        #ifdef __cplusplus
        extern "C" {
        #endif
        colour paint(void);
        #endif
        """))
    lines = [line.strip() for line in cdef.splitlines() if line.strip()]
    assert lines == ["#define MAX_THINGS 256", "enum colour", "{ RED = 0, };", "typedef uint32_t colour;",
                     "colour paint(void);"]


def test_unbalanced_or_unknown_directives_are_errors():
    with pytest.raises(ValueError, match="unbalanced"):
        build_ffi.header_to_cdef("#if 1\nint x;\n")
    with pytest.raises(ValueError, match="unsupported"):
        build_ffi.header_to_cdef("#line 3\n")


def test_the_module_exposes_every_function_of_the_committed_header():
    from ratekeeper._native import lib

    with open(HEADER) as f:
        header = f.read()
    declared = set(re.findall(r"^[a-z_ ]+\**\s*\**(rk_\w+)\(", header, re.M))
    assert {"rk_check", "rk_engine_new", "rk_last_error", "rk_release_holder"} <= declared
    assert all(hasattr(lib, name) for name in declared), declared - {n for n in declared if hasattr(lib, n)}
    assert lib.RK_MAX_POLICIES == 256 and lib.RK_ERR_PARSE == 4


def test_an_abi_mismatch_fails_the_import_with_a_clear_message():
    code = textwrap.dedent("""\
        import importlib
        import ratekeeper._native
        import ratekeeper._version as v
        v.__version__ = "9.9.9"  # as if the compiled module came from another build
        try:
            importlib.reload(ratekeeper._native)
        except ImportError as e:
            print("ImportError:", e)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    assert "ImportError: ratekeeper: ABI mismatch" in out and "9.9.9" in out


def test_the_package_is_typed():
    import ratekeeper

    root = os.path.dirname(ratekeeper.__file__)
    assert os.path.exists(os.path.join(root, "py.typed"))
    assert os.path.exists(os.path.join(root, "_speedups.pyi"))


@pytest.mark.parametrize("variant", ["RATEKEEPER_NO_SPEEDUPS"])
def test_the_other_code_paths_pass_the_engine_and_flask_tests(variant):
    """The cffi-only code paths (used where _speedups is missing) run the
    same engine and Flask tests."""
    if os.environ.get("RATEKEEPER_NO_SPEEDUPS"):
        pytest.skip("already a variant run")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **{variant: "1"})
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_engine.py", "test_flask.py",
         "test_abuse.py", "test_flask_abuse.py"],
        cwd=here, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
