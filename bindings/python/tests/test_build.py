"""The package's one compiled module, ratekeeper._ratekeeper (PyO3, abi3):
what it exposes, and the version check at import."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import ratekeeper


def test_one_compiled_module_and_no_cffi():
    from ratekeeper import _ratekeeper

    root = os.path.dirname(ratekeeper.__file__)
    compiled = sorted(f for f in os.listdir(root) if f.endswith(".so"))
    assert len(compiled) == 1 and compiled[0].startswith("_ratekeeper.")
    assert compiled[0].endswith(".abi3.so"), compiled  # one wheel for every CPython >= 3.10
    assert "cffi" not in sys.modules and "_cffi_backend" not in sys.modules
    assert ratekeeper.Decision is _ratekeeper.Decision
    assert issubclass(ratekeeper.Policy, _ratekeeper.Checker)


def test_the_module_reports_the_crate_version_and_statuses():
    from ratekeeper import _ratekeeper

    assert _ratekeeper.version() == ratekeeper.__version__ == ratekeeper.library_version()
    assert _ratekeeper.status_str(4).startswith("RK_ERR_PARSE")
    assert _ratekeeper.DENY_RING_ENTRIES == 512 and _ratekeeper.MAX_POLICIES == 256


def test_an_abi_mismatch_fails_the_import_with_a_clear_message():
    code = textwrap.dedent("""\
        import importlib
        import ratekeeper._core
        import ratekeeper._version as v
        v.__version__ = "9.9.9"  # as if the compiled module came from another build
        try:
            importlib.reload(ratekeeper._core)
        except ImportError as e:
            print("ImportError:", e)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    assert "ImportError: ratekeeper: ABI mismatch" in out and "9.9.9" in out


def test_the_package_is_typed():
    root = os.path.dirname(ratekeeper.__file__)
    assert os.path.exists(os.path.join(root, "py.typed"))
    assert os.path.exists(os.path.join(root, "_ratekeeper.pyi"))


def test_the_package_readme_is_the_repository_readme_chapter():
    # bindings/python/README.md (the long description on PyPI) is generated
    # from the repository README's Python chapter: a hand edit of either
    # alone would make them drift.
    script = pathlib.Path(__file__).resolve().parent.parent / "readme.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
