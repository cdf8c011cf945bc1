"""The old path of :mod:`fastairl.transfer.norm_rescale`: ``python -m fastairl.norm_rescale`` and
``import fastairl.norm_rescale`` keep working and reach the one module (not a copy)."""
import sys

from fastairl.transfer import norm_rescale as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
