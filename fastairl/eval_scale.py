"""The old path of :mod:`fastairl.eval.scale`: ``import fastairl.eval_scale``
keep working and reach the one module (not a copy)."""
import os
import sys

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastairl.eval.scale as _impl  # noqa: E402
sys.modules[__name__] = _impl
