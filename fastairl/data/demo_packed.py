"""The demo dataset packed into FFCV files, cached beside the image folder.

Why a module of its own: packing needs the ffcv writer, and the writer resolves
``--data demo`` through the demo generator; keeping this step here lets both depend on
the generator without depending on each other.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from fastairl.data.cache import DONE_NAME, cache_dir, folder_lock
from fastairl.data.demo import mark_packed

log = logging.getLogger(__name__)


def ensure_demo_packed(demo_root: Path) -> Path:
    """The demo dataset packed for ffcv, in the cache folder ``make demo`` uses (built once).

    ``--data demo`` names an image folder; the ffcv backend reads ``.beton`` files. The
    packed copy lives at ``<cache>/<demo folder>-ffcv`` (``data_prep/demo.py`` writes the
    same folder with the same settings), is written into a temporary sibling and renamed
    into place under the demo's file lock, so concurrent runs and interrupted ones never
    see a half-written file.
    """
    from fastairl.data.ffcv_writer import write_ffcv  # needs ffcv: imported on use

    packed = cache_dir() / f"{demo_root.name}-ffcv"

    def ready() -> bool:
        return all((packed / f).is_file() for f in ("train.beton", "val.beton", "classes.json", DONE_NAME))

    if ready():
        return packed
    if all((packed / f).is_file() for f in ("train.beton", "val.beton", "classes.json")):
        mark_packed(demo_root, packed)  # packed by an earlier version without the marker
        return packed
    with folder_lock(packed):
        if ready():
            return packed
        log.warning("--data demo with the ffcv loader: packing the demo dataset into %s (one-off, cached)", packed)
        tmp = packed.parent / f"{packed.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_ffcv(demo_root, tmp, max_side=256, quality=90, workers=2, progress=False)  # marks it too
            if packed.exists():  # an incomplete folder from an interrupted writer
                shutil.rmtree(packed)
            tmp.rename(packed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return packed



__all__ = ["ensure_demo_packed"]
