"""Test against the installed package (with its compiled modules), never the
source tree next to this folder, whatever the working directory."""

import os
import sys

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _PKG_DIR]
for _name in [m for m in sys.modules if m == "ratekeeper" or m.startswith("ratekeeper.")]:
    del sys.modules[_name]
