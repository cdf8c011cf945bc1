"""Sources of compressed bytes for the ``dali`` backend, each with the image's size.

Why its own module: the crop windows are drawn in Python before DALI decodes, so every
sample must come with its height and width (the .beton metadata, or the JPEG frame
header of a folder file); formats DALI cannot read are re-encoded as PPM here. Split out
of ``dali_loader.py`` (issue #15); log lines keep the ``fastairl.data.dali_loader``
logger name.

Why not ``fn.readers.file`` for the folder: its sharding is a fixed contiguous block
per rank and its shuffling a bounded in-shard shuffle buffer (or, with
``shuffle_after_epoch``, a permutation from a fixed seed whose epoch counter restarts
at 0 in a resumed run); with ``last_batch_policy=DROP`` the reader also runs on into
the next epoch, so the samples it dropped are missing from the next epoch (the
known drop-last epoch skip). None of that can honour the sampler rule of the ``dali`` loader, and
the crop windows need each image's size before the decode, which the reader
cannot hand to Python. Feeding the folder through the same external source as the
packed file gives exactly one visit per sample per epoch, by construction (tested).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .beton import JPEG_MODE
from .jpeg_bytes import jpeg_header
from .jpeg_source import BetonSamples, FolderSamples

log = logging.getLogger("fastairl.data.dali_loader")

#: Formats DALI's decoder reads itself, as PIL names them; anything else PIL can open is
#: decoded by PIL and fed as PPM.
_DALI_FORMATS = {"JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP", "JPEG2000"}

_warned_pil = False


@dataclass
class _Item:
    data: np.ndarray  # 1-D uint8: an encoded image DALI can decode
    height: int
    width: int


class _Bad:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _ppm(pixels: np.ndarray) -> np.ndarray:
    """Wrap ``(H, W, 3)`` uint8 pixels in a binary PPM header: a lossless image DALI decodes."""
    h, w = pixels.shape[:2]
    head = np.frombuffer(f"P6\n{w} {h}\n255\n".encode("ascii"), dtype=np.uint8)
    return np.concatenate([head, np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1)])


def _identify(data: np.ndarray) -> _Item | _Bad:
    """Size (and, if DALI cannot read the format, a PPM re-encoding) of one encoded image."""
    global _warned_pil
    hdr = jpeg_header(data)
    if hdr is not None and hdr.height > 0 and hdr.width > 0:
        return _Item(data, hdr.height, hdr.width)
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data.tobytes())) as im:
            w, h = im.size
            if im.format in _DALI_FORMATS:
                return _Item(data, h, w)
            if not _warned_pil:
                _warned_pil = True
                log.warning("dali loader: %s images are decoded by PIL on the CPU (DALI cannot read them)", im.format)
            return _Item(_ppm(np.asarray(im.convert("RGB"))), h, w)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return _Bad(f"not a readable image ({type(e).__name__}: {e})")


class _FolderSource(FolderSamples):
    """An ImageNet-style split folder; files are read (by a thread pool) and sized from their headers."""

    needs_reads = True
    max_hw: tuple[int, int] | None = None  # unknown without reading every file

    def fetch(self, i: int) -> _Item | _Bad:
        try:
            data = np.fromfile(self.paths[i], dtype=np.uint8)
        except OSError as e:
            return _Bad(f"cannot read: {e}")
        if data.size == 0:
            return _Bad("empty file")
        return _identify(data)


class _BetonSource(BetonSamples):
    """A packed ffcv file: JPEG samples are zero-copy views of its memory map."""

    needs_reads = False

    def __init__(self, path: Path, owner: str, logger: logging.Logger) -> None:
        super().__init__(path, owner, logger)
        self.max_hw = (int(self.reader.heights.max()), int(self.reader.widths.max()))

    def fetch(self, i: int) -> _Item | _Bad:
        r = self.reader
        h, w = int(r.heights[i]), int(r.widths[i])
        if r.modes[i] == JPEG_MODE:
            return _Item(r.jpeg(i), h, w)  # a view of the map: DALI reads the page cache directly
        return _Item(_ppm(r.raw(i)), h, w)
