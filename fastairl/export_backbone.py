"""The old path of :mod:`fastairl.transfer.export_backbone`: ``python -m fastairl.export_backbone`` and
``import fastairl.export_backbone`` keep working and reach the one module (not a copy)."""
import sys

from fastairl.transfer import export_backbone as _impl

if __name__ == "__main__":
    sys.exit(_impl.main())
sys.modules[__name__] = _impl
