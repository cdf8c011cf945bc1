"""The old path of :mod:`fastairl.eval.knn`: ``import fastairl.knn`` and ``python -m fastairl.knn``
keep working and reach the one module (not a copy)."""
import os
import sys

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastairl.eval.knn as _impl  # noqa: E402

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
