"""Loads the compiled modules and checks that they match this package.

``_ffi`` is the cffi API-mode module built from ``include/ratekeeper.h``
(the library is linked into it statically); ``_speedups`` is the optional C
hot path. Importing ratekeeper fails with a clear ImportError when the
library's ``rk_version()`` differs from the package version (a stale or
mixed build), and falls back to cffi-only code paths when ``_speedups`` is
missing or ``RATEKEEPER_NO_SPEEDUPS=1`` is set.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ._version import __version__

try:
    from ._ffi import ffi, lib
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "ratekeeper: the compiled module ratekeeper._ffi is missing or cannot be loaded "
        f"({e}). Reinstall with `pip install ./bindings/python` (needs cargo and a C compiler)."
    ) from e

LIBRARY_VERSION: str = ffi.string(lib.rk_version()).decode("ascii", "replace")
if LIBRARY_VERSION != __version__:
    raise ImportError(
        f"ratekeeper: ABI mismatch: the Python package is version {__version__} but the "
        f"linked libratekeeper reports {LIBRARY_VERSION}; rebuild the package "
        "(pip install --force-reinstall ./bindings/python)"
    )

speedups: Optional[Any]
if os.environ.get("RATEKEEPER_NO_SPEEDUPS", "") not in ("", "0"):
    speedups = None
else:
    try:
        from . import _speedups as speedups
    except ImportError:  # pragma: no cover - a build without the C hot path
        speedups = None


def address(name: str) -> int:
    """The address of the library function ``name``, as an int."""
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


def last_error() -> str:
    """rk_last_error() of the calling thread."""
    return ffi.string(lib.rk_last_error()).decode("utf-8", "replace")
