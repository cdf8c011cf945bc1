"""File checks of the ``ffcv`` backend: is this a complete fastairl ``.beton`` with its classes?

Why its own module: ffcv itself trusts a file's header, so these checks run before ffcv
ever maps a file; they need no ffcv import and are used by the loader, the CLI checks and
the tests. Moved out of ``ffcv_loader.py`` (issue #15); ``fastairl.data.ffcv_loader``
re-exports every name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fastairl.data.beton import JPEG_MODE, BetonError, BetonReader

__all__ = ["BetonError", "IMAGE_FIELD", "LABEL_FIELD", "check_beton", "has_ffcv_files"]

#: Field names written by :func:`fastairl.data.ffcv_writer.write_ffcv`, in file order.
IMAGE_FIELD = "image"
LABEL_FIELD = "label"

_REWRITE_HINT = "re-run data_prep/write_ffcv.py (with --overwrite) to rebuild it"


def check_beton(path: str | os.PathLike) -> int:
    """Check that ``path`` is a complete fastairl .beton; return its number of samples."""
    return len(_open_checked(path))


def _open_checked(path: str | os.PathLike) -> BetonReader:
    """A :class:`BetonReader` on ``path`` after the checks :func:`check_beton` promises.

    ffcv itself trusts the header: a truncated file would be memory-mapped past its end
    and crash the process (SIGBUS) mid-epoch. :class:`fastairl.data.beton.BetonReader`
    checks header, field table, allocation table and every sample pointer; on top, the
    two fields must be the ``image``/``label`` pair fastairl writes, with JPEG payloads.
    """
    try:
        reader = BetonReader(path, image_field=IMAGE_FIELD, label_field=LABEL_FIELD)
    except BetonError as e:
        msg = str(e)
        raise BetonError(msg if "write_ffcv" in msg else f"{msg}; {_REWRITE_HINT}") from None
    if reader.field_names != [IMAGE_FIELD, LABEL_FIELD]:
        raise BetonError(f"{path} has fields {reader.field_names}; fastairl writes exactly "
                         f"['{IMAGE_FIELD}', '{LABEL_FIELD}']; {_REWRITE_HINT}")
    if (reader.modes != JPEG_MODE).any():
        raise BetonError(f"{path} stores some images as raw pixels; fastairl reads JPEG-mode files as "
                         f"written by data_prep/write_ffcv.py; {_REWRITE_HINT}")
    return reader


def has_ffcv_files(root: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> bool:
    """Whether ``root`` holds ``classes.json`` and ``<split>.beton`` for every split.

    A cheap existence test for choosing a backend; :class:`FFCVLoader` checks contents.
    """
    r = Path(root)
    return r.is_dir() and (r / "classes.json").is_file() and all((r / f"{s}.beton").is_file() for s in splits)
