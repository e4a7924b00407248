"""Builds ratekeeper's Python package: first the Rust library (``cargo build
--release --lib`` of the repository two levels up, honouring CARGO_TARGET_DIR
and CARGO_BUILD_JOBS), then two extension modules:

- ``ratekeeper._ffi``: cffi, API mode, cdef from ``include/ratekeeper.h``,
  with ``libratekeeper.a`` linked in statically (one self-contained module,
  no rpath, nothing to find at run time);
- ``ratekeeper._speedups``: the hot path (check/peek/refund/check_many) in
  plain C; it links nothing and calls the functions of ``_ffi`` through
  their addresses.

Environment:
- ``RATEKEEPER_SOURCE_DIR``: the Rust repository (default: ``../..``).
- ``RATEKEEPER_STATIC_LIB``: a prebuilt ``libratekeeper.a`` (skips cargo);
  the header is then ``$RATEKEEPER_SOURCE_DIR/include/ratekeeper.h``.
- ``CARGO``: the cargo to run (default: ``cargo`` on PATH).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_ffi  # noqa: E402


def source_dir() -> Path:
    root = Path(os.environ.get("RATEKEEPER_SOURCE_DIR", HERE.parent.parent)).resolve()
    if not (root / "Cargo.toml").is_file() or not (root / "include" / "ratekeeper.h").is_file():
        raise SystemExit(
            f"ratekeeper: no Rust sources at {root} (expected Cargo.toml and include/ratekeeper.h). "
            "Install from the repository (pip install ./bindings/python) or set RATEKEEPER_SOURCE_DIR."
        )
    return root


def package_version() -> str:
    text = (HERE / "ratekeeper" / "_version.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def crate_version(root: Path) -> str:
    text = (root / "Cargo.toml").read_text(encoding="utf-8")
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)


def cargo_build(root: Path) -> Path:
    """Runs cargo and returns the path of libratekeeper.a."""
    prebuilt = os.environ.get("RATEKEEPER_STATIC_LIB")
    if prebuilt:
        return Path(prebuilt).resolve()
    cargo = os.environ.get("CARGO", "cargo")
    manifest = str(root / "Cargo.toml")
    try:
        meta = subprocess.run(
            [cargo, "metadata", "--format-version", "1", "--no-deps", "--manifest-path", manifest],
            check=True, capture_output=True, text=True,
        )
    except FileNotFoundError:
        raise SystemExit("ratekeeper: cargo was not found on PATH; install a Rust toolchain (rustup)")
    target_dir = Path(json.loads(meta.stdout)["target_directory"])
    cmd = [cargo, "build", "--release", "--lib", "--manifest-path", manifest]
    print("ratekeeper: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=root)
    lib = target_dir / "release" / "libratekeeper.a"
    if not lib.is_file():
        raise SystemExit(f"ratekeeper: cargo did not produce {lib}")
    return lib


def header_features(header: str) -> list:
    """Macros telling _speedups.c what this header has that older ones lack
    (the C ABI only grows)."""
    features = []
    decision = re.search(r"typedef struct rk_decision \{(.*?)\} rk_decision;", header, re.S)
    if decision and re.search(r"\bbool banned;", decision.group(1)) and re.search(
        r"\bbool shadow_denied;", decision.group(1)
    ):
        features.append("RKPY_DECISION_HAS_FLAGS")
    return features


class BuildExtWithCargo(build_ext):
    """build_ext that builds the Rust library and generates the cffi module's
    C source from the header first (so the cdef is read after cargo, whose
    build script regenerates the header)."""

    def run(self):
        root = source_dir()
        if crate_version(root) != package_version():
            raise SystemExit(
                f"ratekeeper: the crate is version {crate_version(root)} but the Python package is "
                f"{package_version()}: bump bindings/python/ratekeeper/_version.py together with Cargo.toml"
            )
        static_lib = cargo_build(root)
        header = root / "include" / "ratekeeper.h"
        ffibuilder = build_ffi.make_ffibuilder(header, static_lib)
        gen_dir = Path(self.build_temp) / "cffi-gen"
        gen_dir.mkdir(parents=True, exist_ok=True)
        c_file = gen_dir / "_ffi.c"
        ffibuilder.emit_c_code(str(c_file))
        _, _, _, kwds = ffibuilder._assigned_source  # what set_source recorded
        features = header_features(header.read_text(encoding="utf-8"))
        for ext in self.extensions:
            ext.include_dirs.append(str(header.parent))
            if ext.name == "ratekeeper._speedups":
                ext.define_macros.extend((name, "1") for name in features)
            if ext.name == "ratekeeper._ffi":
                ext.sources = [str(c_file)]
                ext.extra_objects = list(kwds.get("extra_objects", []))
                ext.libraries = list(kwds.get("libraries", []))
                ext.extra_link_args = list(kwds.get("extra_link_args", []))
        super().run()


setup(
    ext_modules=[
        # The source is generated by BuildExtWithCargo.run().
        Extension("ratekeeper._ffi", sources=["build/cffi-gen/_ffi.c"]),
        Extension(
            "ratekeeper._speedups",
            sources=["src/_speedups.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-missing-field-initializers"],
        ),
    ],
    cmdclass={"build_ext": BuildExtWithCargo},
)
