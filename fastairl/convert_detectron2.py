"""The old path of :mod:`fastairl.transfer.convert_detectron2`: ``python -m fastairl.convert_detectron2`` and
``import fastairl.convert_detectron2`` keep working and reach the one module (not a copy)."""
import sys

from fastairl.transfer import convert_detectron2 as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
