"""The FFCV backend: read ``.beton`` files, decode each JPEG once, cut every view from it.

Why a custom decoder: ffcv's stock ``RandomResizedCropRGBImageDecoder`` decodes a JPEG
for *one* crop, and ffcv lets one field feed only one pipeline, so a two-view recipe
would either decode every image twice or need two loaders. Decoding dominates the CPU
cost, so :class:`MultiViewCropDecoder` decodes once and emits every view of the recipe
from that decode, as one ``(V, S, S, 3)`` uint8 array per sample that
:class:`FFCVLoader` splits into the views of the batch contract
(:mod:`fastairl.data.base`).

What happens per batch and per sample:

1. the loader's thread draws one crop window and one flip per view and sample for the
   whole batch (:meth:`FFCVLoader.crop_params`, vectorised numpy, well under a
   millisecond per batch) with torchvision's ``RandomResizedCrop.get_params`` rule
   (area fraction ~ U(scale), log-uniform aspect ratio, 10 tries, centred fallback;
   :func:`fastairl.data.crop.sample_crops`) from a generator seeded by (seed, epoch,
   rank, batch number), and writes them into the decoder's parameter buffer; inside
   ffcv's numba-compiled, thread-parallel pipeline, per sample:
2. one JPEG decode through libjpeg-turbo (ffcv's ``imdecode``). When *every* window is
   at least 2x (4x, 8x) the output size in both directions, the JPEG is decoded at
   1/2 (1/4, 1/8) scale in the DCT domain, which is cheaper and is itself a proper
   low-pass downscale; otherwise at full size. (ffcv 1.0.2's region decode goes
   through a lossless ``tjTransform`` that entropy-decodes the whole image and
   re-encodes the region: measured on ~460x400 photos it costs 1.7x a full decode for a
   region of 90 % per side and only breaks even near 50 % per side, while the union of
   two random windows is usually larger, so it is not used.)
3. each window resized to ``S x S`` with the same filter as torchvision's
   ``resized_crop(..., antialias=True)`` (PIL's separable triangle filter whose support
   widens with the downscale factor), flipped horizontally if drawn so, at no extra
   cost. The kernel (:func:`resize_box`) works in fixed point and agrees with
   torchvision's float result to one level.

Validation uses the same operation in centre mode: the window that torchvision's
``Resize(round(S*256/224))`` + ``CenterCrop(S)`` would keep, resized with the same
filter (identical to resizing the whole image and cropping).

Because the windows depend on (seed, epoch, rank, batch number) only, a run resumed in
the middle of an epoch gets the very crops it would have got, two runs with the same
seed get the same views, the preview tool can report every window, and the nvjpeg and
dali backends (same rule, same seeding) draw the same windows for the same batch of
image sizes. (Drawing inside the numba threads would give each thread its own
unseedable stream.) The sample *order* comes from ffcv's traversal orders, seeded with
``spec.seed`` and the epoch: a full random permutation by default (see :class:`FFCVLoader`).
"""
from __future__ import annotations

import math
import logging
import os
import queue
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numba as nb
import numpy as np
import torch

from fastairl.data.base import LoaderSpec
from fastairl.data.beton import JPEG_MODE, BetonError, BetonReader, read_classes_json
from fastairl.data.crop import batch_crops
from fastairl.data.recipes import eval_resize_size, get_recipe

log = logging.getLogger(__name__)

# ffcv's compiler sets torch's thread count to 1 when imported (and to the worker count
# when a loader is built); the training process's own torch threads must not change.
_TORCH_THREADS = torch.get_num_threads()
try:  # ffcv is a compiled extension with system library dependencies; fail late, clearly.
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.libffcv import imdecode as _ffcv_imdecode
    from ffcv.loader import Loader as _FFCVBaseLoader
    from ffcv.loader import OrderOption
    from ffcv.loader.epoch_iterator import EpochIterator
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State
    from ffcv.transforms import ToDevice, ToTensor
    _FFCV_IMPORT_ERROR: Exception | None = None
except (ImportError, OSError) as _e:  # OSError: libturbojpeg / libopencv missing at load time
    _FFCV_IMPORT_ERROR = _e
    SimpleRGBImageDecoder = object  # type: ignore[assignment,misc]
    EpochIterator = object  # type: ignore[assignment,misc]
torch.set_num_threads(_TORCH_THREADS)

__all__ = [
    "BetonError", "FFCVLoader", "PARAM_COLUMNS", "MultiViewCropDecoder", "build_ffcv_loader",
    "check_beton", "decode_jpeg", "eval_box", "has_ffcv_files", "read_classes",
    "require_ffcv", "resize_box", "resized_crop",
]

#: Field names written by :func:`fastairl.data.ffcv_writer.write_ffcv`, in file order.
IMAGE_FIELD = "image"
LABEL_FIELD = "label"

_REWRITE_HINT = "re-run data_prep/write_ffcv.py (with --overwrite) to rebuild it"


def require_ffcv() -> None:
    """Raise a one-line, actionable ImportError if ffcv cannot be imported here."""
    if _FFCV_IMPORT_ERROR is not None:
        raise ImportError(
            f"ffcv is not importable ({type(_FFCV_IMPORT_ERROR).__name__}: {_FFCV_IMPORT_ERROR}); "
            "run `make venv` (it installs the system packages pkg-config libopencv-dev "
            "libturbojpeg0-dev with apt and then ffcv==1.0.2), or use the `folder` data backend"
        ) from _FFCV_IMPORT_ERROR


# --------------------------------------------------------------------------------------
# numba kernels: the antialiased bilinear crop+resize
# --------------------------------------------------------------------------------------

#: Fixed-point precision of the vertical-pass weights (they sum to 2**_WB_V).
_WB_V = 14
#: Precision of the horizontal-pass weights; 12 bits keep a weighted sum of uint8 values
#: below 2**20, so the three channels of a pixel fit in one int64 at 21-bit spacing and
#: one multiply-add serves all three.
_WB_H = 12
_LANE = 21


@nb.njit(cache=True, nogil=True, fastmath=True)
def _filter_taps(start: float, length: float, out_size: int, lo: int, hi: int, bits: int,
                 first: np.ndarray, count: np.ndarray, weights: np.ndarray) -> None:
    """Integer taps of the antialiased bilinear filter for one axis.

    Output pixel ``o`` covers source coordinate ``start + (o + 0.5) * length / out_size``;
    its taps are the source pixels within the filter support (1, widened to the
    downscale factor when shrinking), clamped to ``[lo, hi)``; weights are the triangle
    filter, normalised and rounded so that they sum to exactly ``2**bits``.
    """
    scale = length / out_size
    if scale >= 1.0:
        support = scale
        inv = 1.0 / scale
    else:
        support = 1.0
        inv = 1.0
    one = 1 << bits
    tmp = np.empty(weights.shape[1], np.float64)
    for o in range(out_size):
        centre = start + scale * (o + 0.5)
        a = max(int(math.floor(centre - support + 0.5)), lo)
        b = min(int(math.floor(centre + support + 0.5)), hi)
        n = b - a
        if n < 1:  # degenerate window (cannot happen for windows inside the image)
            a = min(max(int(math.floor(centre)), lo), hi - 1)
            n = 1
        total = 0.0
        best = 0
        for k in range(n):
            v = 1.0 - abs((k + a - centre + 0.5) * inv)
            if v < 0.0:
                v = 0.0
            tmp[k] = v
            total += v
            if v > tmp[best]:
                best = k
        if total <= 0.0:
            for k in range(n):
                tmp[k] = 1.0
            total = float(n)
        acc = 0
        for k in range(n):
            q = int(math.floor(tmp[k] / total * one + 0.5))
            weights[o, k] = q
            acc += q
        weights[o, best] += one - acc  # rounding residue goes to the largest tap
        first[o] = a
        count[o] = n


@nb.njit(cache=True, nogil=True, fastmath=True)
def resize_box(src: np.ndarray, y0: float, x0: float, bh: float, bw: float,
               ylo: int, yhi: int, xlo: int, xhi: int, dst: np.ndarray, flip: bool) -> None:
    """Resize the window ``[y0, y0+bh) x [x0, x0+bw)`` of ``src`` (H, W, 3 uint8) into ``dst``.

    The window may have fractional bounds (windows on a DCT-downscaled decode, or the
    eval window); filter taps are clamped to rows ``[ylo, yhi)`` and columns
    ``[xlo, xhi)``: the window itself for a random crop (as torchvision, which crops
    and then resizes), the whole image for the eval window (as resize-then-crop).
    ``dst`` (S_h, S_w, 3) may be a strided view. ``flip`` mirrors the output
    horizontally.

    Vertical pass first (vectorised over a whole source row span, 14-bit weights,
    rounded to uint8 like torchvision's own uint8 path), then the horizontal pass with
    the three channels packed into one int64 so a tap is one multiply-add.
    """
    oh = dst.shape[0]
    ow = dst.shape[1]
    ky = int(math.ceil(max(bh / oh, 1.0))) * 2 + 3
    kx = int(math.ceil(max(bw / ow, 1.0))) * 2 + 3
    wy = np.empty((oh, ky), np.int32)
    fy = np.empty(oh, np.int64)
    ny = np.empty(oh, np.int64)
    wx = np.zeros((ow, kx), np.int64)  # zero past each pixel's taps: see the fixed-length loop below
    fx = np.empty(ow, np.int64)
    nx = np.empty(ow, np.int64)
    _filter_taps(y0, bh, oh, ylo, yhi, _WB_V, fy, ny, wy)
    _filter_taps(x0, bw, ow, xlo, xhi, _WB_H, fx, nx, wx)
    c0 = fx[0]
    c1 = c0
    for o in range(ow):
        c0 = min(c0, fx[o])
        c1 = max(c1, fx[o] + nx[o])
    npx = c1 - c0
    span = npx * 3
    base = c0 * 3
    taps = 1
    for o in range(ow):
        taps = max(taps, nx[o])
    rows = src.reshape(src.shape[0], src.shape[1] * 3)
    acc = np.empty(span, np.int32)
    packed = np.zeros(npx + taps, np.int64)  # zero tail: every pixel reads `taps` entries
    line = np.empty(ow, np.int64)
    half_v = np.int32(1 << (_WB_V - 1))
    half_h = np.int64(1 << (_WB_H - 1))
    init_h = half_h | (half_h << _LANE) | (half_h << (2 * _LANE))
    lane_mask = np.int64((1 << _LANE) - 1)
    # Loops index slices from 0 (never ``a[base + t]``): numba must otherwise allow for
    # negative indices, and that check alone stops LLVM from vectorising the loop (~20x).
    for oy in range(oh):
        r = fy[oy]
        w0 = wy[oy, 0]
        s0 = rows[r, base:base + span]
        for t in range(span):
            acc[t] = half_v + w0 * np.int32(s0[t])
        for k in range(1, ny[oy]):
            wk = wy[oy, k]
            sk = rows[r + k, base:base + span]
            for t in range(span):
                acc[t] += wk * np.int32(sk[t])
        for p in range(npx):
            packed[p] = (np.int64(acc[3 * p] >> _WB_V)
                         | (np.int64(acc[3 * p + 1] >> _WB_V) << _LANE)
                         | (np.int64(acc[3 * p + 2] >> _WB_V) << (2 * _LANE)))
        for ox in range(ow):  # same trip count for every pixel: no mispredicted loop exits
            a = fx[ox] - c0
            seg = packed[a:a + taps]
            wseg = wx[ox]
            v = init_h
            for k in range(taps):
                v += wseg[k] * seg[k]
            line[ox] = v
        out = dst[oy]
        for ox in range(ow):
            v = line[ow - 1 - ox] if flip else line[ox]
            out[ox, 0] = np.uint8((v & lane_mask) >> _WB_H)
            out[ox, 1] = np.uint8(((v >> _LANE) & lane_mask) >> _WB_H)
            out[ox, 2] = np.uint8(((v >> (2 * _LANE)) & lane_mask) >> _WB_H)


@nb.njit(cache=True, nogil=True)
def eval_box(height: int, width: int, size: int, resize: int) -> tuple[float, float, float, float]:
    """The eval window ``(y0, x0, bh, bw)`` in source pixels.

    It is the region that ``Resize(resize)`` (short side, long side truncated as
    torchvision does) followed by ``CenterCrop(size)`` keeps; resizing it to
    ``size x size`` with taps clamped to the whole image gives the same pixels.
    """
    if height <= width:
        rh = resize
        rw = int(resize * width / height)
    else:
        rw = resize
        rh = int(resize * height / width)
    top = int(np.rint((rh - size) / 2.0))
    left = int(np.rint((rw - size) / 2.0))
    sy = height / rh
    sx = width / rw
    return top * sy, left * sx, size * sy, size * sx


@nb.njit(cache=True, nogil=True)
def _dct_denominator(boxes: np.ndarray, size: int) -> int:
    """Largest d in (8, 4, 2) with every window still >= ``size`` after a 1/d decode, else 1."""
    d = 8
    while d > 1:
        ok = True
        for v in range(boxes.shape[0]):
            if boxes[v, 2] < size * d or boxes[v, 3] < size * d:
                ok = False
        if ok:
            return d
        d //= 2
    return 1


# --------------------------------------------------------------------------------------
# Python-side helpers (tests, diagnostics)
# --------------------------------------------------------------------------------------

def resized_crop(img: np.ndarray, top: float, left: float, height: float, width: float, size: int,
                 flip: bool = False, clamp_to_window: bool = True) -> np.ndarray:
    """``resize_box`` on a ``(H, W, 3)`` uint8 array; returns a new ``(size, size, 3)`` array.

    With ``clamp_to_window`` the filter sees only the window (torchvision's
    ``resized_crop``); without, it may read the pixels around it (resize-then-crop).
    """
    img = np.ascontiguousarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"resized_crop expects an (H, W, 3) uint8 array, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if not (0 <= top and 0 <= left and height > 0 and width > 0
            and top + height <= h + 1e-9 and left + width <= w + 1e-9):
        raise ValueError(f"window (top={top}, left={left}, h={height}, w={width}) is not inside the {h}x{w} image")
    if clamp_to_window:
        ylo, yhi = int(math.floor(top)), min(h, int(math.ceil(top + height)))
        xlo, xhi = int(math.floor(left)), min(w, int(math.ceil(left + width)))
    else:
        ylo, yhi, xlo, xhi = 0, h, 0, w
    out = np.empty((size, size, 3), np.uint8)
    resize_box(img, float(top), float(left), float(height), float(width), ylo, yhi, xlo, xhi, out, bool(flip))
    return out


def decode_jpeg(data: np.ndarray, height: int, width: int, denominator: int = 1) -> np.ndarray:
    """Decode JPEG bytes with ffcv's libjpeg-turbo call, optionally at 1/denominator scale.

    This is exactly the decode the loader runs (same library, same flags), so tests can
    compare the loader's crops with torchvision applied to the same pixels.
    """
    require_ffcv()
    if denominator not in (1, 2, 4, 8):
        raise ValueError(f"denominator must be 1, 2, 4 or 8, got {denominator}")
    sh = -(-height // denominator)
    sw = -(-width // denominator)
    out = np.empty(sh * sw * 3, np.uint8)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rc = _ffcv_imdecode(data, out, height, width, height, width, 0, 0, 1, denominator, False, False)
    if rc != 0:
        raise ValueError(f"libjpeg-turbo could not decode this JPEG (return code {rc})")
    return out.reshape(sh, sw, 3)


# --------------------------------------------------------------------------------------
# File checks
# --------------------------------------------------------------------------------------

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


def read_classes(root: str | os.PathLike) -> list[str]:
    """Class names in label order from ``<root>/classes.json`` (written by write_ffcv)."""
    classes = read_classes_json(root)
    if classes is None:
        raise FileNotFoundError(f"{Path(root) / 'classes.json'} not found; it is written beside the .beton "
                                f"files by data_prep/write_ffcv.py; {_REWRITE_HINT}")
    return classes


def has_ffcv_files(root: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> bool:
    """Whether ``root`` holds ``classes.json`` and ``<split>.beton`` for every split.

    A cheap existence test for choosing a backend; :class:`FFCVLoader` checks contents.
    """
    r = Path(root)
    return r.is_dir() and (r / "classes.json").is_file() and all((r / f"{s}.beton").is_file() for s in splits)


# --------------------------------------------------------------------------------------
# The ffcv operation
# --------------------------------------------------------------------------------------

#: Columns of the decoder's per-sample, per-view parameter rows: window and flip.
PARAM_COLUMNS = ("top", "left", "height", "width", "flip")
#: What the decoder writes into the flip column of a sample whose windows are invalid.
_BAD_WINDOW = -7


@nb.njit(cache=True, nogil=True)
def _check_windows(params: np.ndarray, height: int, width: int) -> bool:
    """Whether every ``(top, left, h, w, flip)`` row lies inside a ``height x width`` image."""
    for v in range(params.shape[0]):
        t, l, h, w, f = params[v, 0], params[v, 1], params[v, 2], params[v, 3], params[v, 4]
        if t < 0 or l < 0 or h < 1 or w < 1 or t + h > height or l + w > width or f < 0 or f > 1:
            return False
    return True


_IMDECODE_JIT = None


def _imdecode_jit():
    """ffcv's libjpeg-turbo call compiled once per process and shared by every decoder.

    Compiling it per loader (``Compiler.compile`` makes a new numba dispatcher each time)
    gives several dispatchers of one function; when a loader is garbage-collected, numba's
    finalizer then removes overloads another dispatcher already removed and prints a
    ``KeyError`` traceback ("Exception ignored in: <finalize object ...>"), e.g. after every
    kNN evaluation. It is not parallel, so one compiled version serves every thread count.
    """
    global _IMDECODE_JIT
    if _IMDECODE_JIT is None:
        _IMDECODE_JIT = Compiler.compile(_ffcv_imdecode)
    return _IMDECODE_JIT


class MultiViewCropDecoder(SimpleRGBImageDecoder):
    """Decode each JPEG of an ``RGBImageField`` once and emit one resized crop per view.

    It subclasses ffcv's ``SimpleRGBImageDecoder`` because ffcv recognises the first
    operation of a pipeline as the field's decoder only if it is an instance of the
    field's decoder class; everything the base class does is overridden.

    Output per sample: ``(V, size, size, 3)`` uint8. ``num_views=V`` selects random
    views: the windows and flips are *not* drawn here but read from a second buffer the
    decoder declares, ``(V, 5)`` int64 per sample with the columns of
    :data:`PARAM_COLUMNS`, which :class:`FFCVLoader` fills before each batch (see the
    module docstring); a row outside the image stops the loader with an error (used
    with a plain ffcv ``Loader``, nothing fills that buffer and such samples come out
    black: random views need :class:`FFCVLoader`).
    ``num_views=None`` selects the eval view (torchvision's ``Resize(eval_resize)`` +
    ``CenterCrop(size)``, ``eval_resize`` defaulting to
    :func:`~fastairl.data.recipes.eval_resize_size`), which needs no parameters.
    ``dct_scaling=False`` forces full-size decodes.
    """

    def __init__(self, size: int, num_views: int | None, *, eval_resize: int | None = None,
                 dct_scaling: bool = True) -> None:
        require_ffcv()
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"output size must be >= 1, got {size}")
        if num_views is not None and int(num_views) < 1:
            raise ValueError(f"MultiViewCropDecoder needs at least one view (or num_views=None for eval), "
                             f"got {num_views}")
        self.size = int(size)
        self.random = num_views is not None
        self.num_views = int(num_views) if num_views is not None else 1
        self.eval_resize = int(eval_resize) if eval_resize is not None else eval_resize_size(self.size)
        if not self.random and self.eval_resize < self.size:
            raise ValueError(f"eval resize {self.eval_resize} is smaller than the crop {self.size}")
        self.dct_scaling = bool(dct_scaling)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | tuple]:
        shape = (self.num_views, self.size, self.size, 3)
        dtype = np.dtype("<u1")
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
        pixels = AllocationQuery(shape, dtype)
        if not self.random:
            return state, pixels
        return state, (pixels, AllocationQuery((self.num_views, len(PARAM_COLUMNS)), np.dtype("<i8")))

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = _imdecode_jit()
        size = self.size
        n_views = self.num_views
        resize = self.eval_resize
        dct = self.dct_scaling

        def decode_random(batch_indices, destination, metadata, storage_state):
            pixels, params = destination
            for ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[ix]]
                data = mem_read(field["data_ptr"], storage_state)
                height = np.int64(field["height"])
                width = np.int64(field["width"])
                p = params[ix]
                if not _check_windows(p, height, width):
                    # No raise in a parallel loop (numba would run it serially): mark the
                    # row, blank the views; _CheckedEpochIterator turns the mark into an error.
                    p[0, 4] = _BAD_WINDOW
                    pixels[ix] = 0
                    continue
                d = 1
                if dct:
                    d = _dct_denominator(p, size)
                sh = (height + d - 1) // d
                sw = (width + d - 1) // d
                buf = np.empty(sh * sw * 3, np.uint8)
                imdecode_c(data, buf, height, width, height, width, 0, 0, 1, d, False, False)
                img = buf.reshape(sh, sw, 3)
                for v in range(n_views):
                    y0 = p[v, 0] / d
                    x0 = p[v, 1] / d
                    bh = p[v, 2] / d
                    bw = p[v, 3] / d
                    ylo = int(math.floor(y0))
                    yhi = min(sh, int(math.ceil(y0 + bh)))
                    xlo = int(math.floor(x0))
                    xhi = min(sw, int(math.ceil(x0 + bw)))
                    resize_box(img, y0, x0, bh, bw, ylo, yhi, xlo, xhi, pixels[ix, v], p[v, 4] == 1)
            return pixels[:len(batch_indices)]

        def decode_centre(batch_indices, destination, metadata, storage_state):
            for ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[ix]]
                data = mem_read(field["data_ptr"], storage_state)
                height = np.int64(field["height"])
                width = np.int64(field["width"])
                y0, x0, bh, bw = eval_box(height, width, size, resize)
                box = np.empty((1, 4), np.float64)
                box[0, 0] = y0
                box[0, 1] = x0
                box[0, 2] = bh
                box[0, 3] = bw
                d = 1
                if dct:
                    d = _dct_denominator(box, size)
                sh = (height + d - 1) // d
                sw = (width + d - 1) // d
                buf = np.empty(sh * sw * 3, np.uint8)
                imdecode_c(data, buf, height, width, height, width, 0, 0, 1, d, False, False)
                img = buf.reshape(sh, sw, 3)
                resize_box(img, y0 / d, x0 / d, bh / d, bw / d, 0, sh, 0, sw, destination[ix, 0], False)
            return destination[:len(batch_indices)]

        decode = decode_random if self.random else decode_centre
        decode.is_parallel = True
        return decode


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------

class _CheckedEpochIterator(EpochIterator):
    """ffcv's epoch thread, plus two things.

    An exception in the thread reaches the consumer (ffcv's own thread dies silently on
    an error, e.g. a numba compile error, and leaves the training loop blocked on its
    queue forever). And before each batch is decoded, ``planner(b_ix, batch_indices)``
    (if given) fills the random-view decoder's parameter buffer for that batch.
    """

    error: BaseException | None = None

    def __init__(self, loader, order, planner=None) -> None:
        # Set before ffcv's __init__, which starts the thread.
        self._planner = planner
        self._params = None
        super().__init__(loader, order)

    def _param_buffer(self) -> np.ndarray:
        """The (slots, batch, V, 5) int64 buffer :class:`MultiViewCropDecoder` reads windows from."""
        found = [bufs[1] for bufs in self.memory_allocations["operation"].values()
                 if isinstance(bufs, tuple) and len(bufs) == 2 and isinstance(bufs[1], np.ndarray)
                 and bufs[1].dtype == np.int64 and bufs[1].ndim == 4 and bufs[1].shape[-1] == len(PARAM_COLUMNS)]
        if len(found) != 1:
            raise RuntimeError(f"ffcv pipeline has {len(found)} MultiViewCropDecoder parameter buffers, expected 1")
        return found[0]

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        if self._planner is not None:
            if self._params is None:
                self._params = self._param_buffer()
            rows = self._params[batch_slot][:len(batch_indices)]
            rows[...] = self._planner(b_ix, batch_indices)
            result = super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)
            bad = np.flatnonzero(rows[:, 0, 4] == _BAD_WINDOW)
            if bad.size:
                raise RuntimeError(f"crop windows {rows[bad[0]].tolist()} of sample {int(batch_indices[bad[0]])} do "
                                   f"not lie inside the image")
            return result
        return super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer thread
            self.error = e
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    pass


class FFCVLoader:
    """One rank's loader over ``<spec.root>/<spec.split>.beton`` (see fastairl.data.base).

    Batches are ``([view_0, ..., view_{V-1}], labels)``: each view a fresh uint8 tensor
    ``(B, 3, S, S)`` in **channels_last** memory format on ``spec.device`` (what the
    trainer feeds the network), labels int64 ``(B,)``. Views are already flipped per
    the recipe (``flipped = True``; eval views are never flipped). Crop windows and
    flips are a function of (seed, epoch, rank, batch number), reported by
    :meth:`crop_params` for the samples :meth:`batch_indices` lists. On CUDA the batch is
    copied from ffcv's pinned buffers with ``non_blocking=True`` on ffcv's own streams.

    Training (``spec.train``): last partial batch dropped; by default ffcv's ``RANDOM``
    order, a full permutation per epoch seeded by ``spec.seed`` and the epoch (with
    ``world_size > 1`` ffcv's distributed variant: a torch ``DistributedSampler`` with
    that seed), as the reference's seeded DistributedSampler. ``order="quasi_random"``
    (one process only) is ffcv's page-aware shuffle: it keeps only a few file pages in
    memory at a time, so it suits a file larger than RAM, but it mixes only those pages,
    and on a class-sorted file (ImageFolder order) its batches hold far fewer classes
    (measured on ImageNet: ~185 distinct of 256 instead of ~226), which changes BN
    batches, MoCo negatives and the supervised numbers; use it only with a file written
    shuffled (``data_prep/write_ffcv.py`` does by default). Validation: one centre view, file order, nothing dropped (with
    several ranks, ffcv's sampler pads the last shard with repeats, like torch's).

    ``spec.extra`` keys: ``os_cache`` (default True: memory-map the file and let the OS
    cache it; False reads it into this process), ``batches_ahead`` (default 3),
    ``order`` ("random", the default, or "quasi_random", one process only), ``dct_scaling``
    (default True). ffcv sets torch's CPU thread count to ``spec.workers`` while it runs.
    """

    output = "uint8"
    flipped = True

    def __init__(self, spec: LoaderSpec) -> None:
        require_ffcv()
        self.spec = spec
        extra = dict(spec.extra or {})
        root = Path(spec.root)
        if spec.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {spec.split!r}")
        if spec.batch_size < 1 or spec.image_size < 1:
            raise ValueError(f"batch_size and image_size must be >= 1, got {spec.batch_size} and {spec.image_size}")
        if spec.world_size < 1 or not 0 <= spec.rank < spec.world_size:
            raise ValueError(f"rank {spec.rank} is not in [0, world_size={spec.world_size})")
        self.path = root / f"{spec.split}.beton"
        self.classes = read_classes(root)
        self.num_classes = len(self.classes)
        reader = _open_checked(self.path)
        self.num_samples = len(reader)
        # Image sizes, for drawing crop windows before a batch is decoded.
        self._heights = reader.heights.astype(np.int32)
        self._widths = reader.widths.astype(np.int32)
        if int(reader.labels.min()) < 0 or int(reader.labels.max()) >= self.num_classes:
            raise BetonError(f"{self.path} has labels in [{int(reader.labels.min())}, {int(reader.labels.max())}] "
                             f"but {root / 'classes.json'} names {self.num_classes} classes; the two files do not "
                             f"belong together; {_REWRITE_HINT}")
        del reader

        self.recipe = get_recipe(spec.recipe) if spec.train else ()
        decoder = MultiViewCropDecoder(spec.image_size, len(self.recipe) if spec.train else None,
                                       dct_scaling=bool(extra.get("dct_scaling", True)))
        self.num_views = decoder.num_views

        distributed = spec.world_size > 1
        name = str(extra.get("order", "random")).lower()
        orders = {"quasi_random": OrderOption.QUASI_RANDOM, "random": OrderOption.RANDOM}
        if name not in orders:
            raise ValueError(f"sample order {name!r}; choose one of {sorted(orders)}")
        if distributed:
            self._check_process_group()
            if spec.train and name == "quasi_random":
                raise ValueError(f"sample order quasi_random works with one process only (ffcv has no "
                                 f"distributed quasi-random order); {spec.world_size} processes need "
                                 f"sample_order=random")
            order = OrderOption.RANDOM if spec.train else OrderOption.SEQUENTIAL
        else:
            order = orders[name] if spec.train else OrderOption.SEQUENTIAL

        self.device = torch.device(spec.device)
        tail = [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else []
        pipelines = {IMAGE_FIELD: [decoder, ToTensor(), *tail], LABEL_FIELD: [IntDecoder(), ToTensor(), *tail]}
        workers = max(1, int(spec.workers))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if workers > cpus:  # numba's thread pool refuses more threads than CPUs
            log.warning("ffcv: %d workers requested but this machine has %d CPUs; using %d", workers, cpus, cpus)
            workers = cpus
        threads = torch.get_num_threads()
        try:
            self._loader = _FFCVBaseLoader(
                str(self.path), batch_size=spec.batch_size, num_workers=workers,
                os_cache=bool(extra.get("os_cache", True)), order=order, distributed=distributed,
                seed=int(spec.seed), pipelines=pipelines, drop_last=bool(spec.train),
                batches_ahead=int(extra.get("batches_ahead", 3)))
        except (ValueError, AssertionError, OSError, IndexError, KeyError) as e:
            raise BetonError(f"ffcv cannot open {self.path} ({type(e).__name__}: {e}); {_REWRITE_HINT}") from e
        finally:
            torch.set_num_threads(threads)
        pages = getattr(self._loader.traversal_order, "page_to_samples_array", None)
        self._pristine_pages = pages.copy() if pages is not None else None
        self._full_len = len(self._loader)
        if self._full_len == 0:
            raise ValueError(f"{self.path} has {self.num_samples} images: too few for a per-process batch of "
                             f"{spec.batch_size} on {spec.world_size} process(es); lower the batch size")
        self._epoch = 0
        self._start_batch = 0

    def _check_process_group(self) -> None:
        """ffcv's distributed order asks torch.distributed for rank and world size."""
        spec = self.spec
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"world_size={spec.world_size} needs torch.distributed initialised before the ffcv "
                               "loader is built (ffcv's distributed order reads rank and world size from it); "
                               "call init_process_group first")
        if dist.get_world_size() != spec.world_size or dist.get_rank() != spec.rank:
            raise ValueError(f"LoaderSpec says rank {spec.rank} of {spec.world_size} but torch.distributed says "
                             f"rank {dist.get_rank()} of {dist.get_world_size()}")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s order; skip its first ``start_batch`` batches (exact resume)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch} and {start_batch}")
        self._epoch = int(epoch)
        self._start_batch = int(start_batch)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices this rank reads in ``epoch`` (default: the epoch set), in order.

        For the epoch set by :meth:`set_epoch`, the ``start_batch`` batches it skips are
        left out.

        A pure function of (seed, epoch, rank): ffcv's QUASI_RANDOM order shuffles its
        page table in place, so each call would otherwise depend on the calls before it
        (and a resumed run would not see the order it trained on); the pristine table
        is restored before every draw.
        """
        e = self._epoch if epoch is None else int(epoch)
        order_obj = self._loader.traversal_order
        if self._pristine_pages is not None:
            np.copyto(order_obj.page_to_samples_array, self._pristine_pages)
        order = np.asarray(order_obj.sample_order(e))
        bs = self.spec.batch_size
        skip = self._start_batch if e == self._epoch else 0
        return order[:self._full_len * bs][skip * bs:]

    def batch_indices(self) -> list[np.ndarray]:
        """Dataset indices of each batch the next pass yields (the epoch set, after ``start_batch``)."""
        order = self.epoch_indices()
        b = self.spec.batch_size
        return [order[k:k + b] for k in range(0, len(order), b)]

    def crop_params(self, epoch: int, batch_no: int, heights: Sequence[int] | np.ndarray,
                    widths: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per view, the crop windows ``(N, 4)`` (top, left, h, w) and flips ``(N,)`` of a batch.

        The windows the decoder cuts from batch ``batch_no`` of ``epoch`` (counted from the
        start of the epoch) for images of these sizes (as stored in the .beton):
        :func:`fastairl.data.crop.batch_crops` seeded by (seed, epoch, rank, batch number),
        the rule and seeding the nvjpeg and dali backends use too.
        """
        return batch_crops(self.recipe, self.spec.seed, epoch, self.spec.rank, batch_no, heights, widths)

    def _planner(self, epoch: int, start_batch: int):
        """What fills the decoder's parameter buffer for each batch of this pass."""
        def plan(b_ix: int, indices: np.ndarray) -> np.ndarray:
            idx = np.asarray(indices, dtype=np.int64)
            crops = self.crop_params(epoch, start_batch + b_ix, self._heights[idx], self._widths[idx])
            out = np.empty((len(idx), len(crops), len(PARAM_COLUMNS)), np.int64)
            for v, (boxes, flips) in enumerate(crops):
                out[:, v, :4] = boxes
                out[:, v, 4] = flips
            return out
        return plan

    def __len__(self) -> int:
        return max(self._full_len - self._start_batch, 0)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        loader = self._loader
        selected = self.epoch_indices()
        if len(selected) == 0:
            return
        Compiler.set_num_threads(loader.num_workers)
        if loader.code is None:
            loader.generate_code()
        planner = self._planner(self._epoch, self._start_batch) if self.spec.train else None
        it = _CheckedEpochIterator(loader, selected, planner)
        try:
            for images, labels in it:
                views = [images[:, v].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
                         for v in range(self.num_views)]
                yield views, labels.reshape(-1).to(torch.int64, copy=True)
        finally:
            it.close()
        if it.error is not None:
            raise RuntimeError(f"ffcv's loading thread failed while reading {self.path}: "
                               f"{type(it.error).__name__}: {it.error}") from it.error


def build_ffcv_loader(spec: LoaderSpec) -> FFCVLoader:
    """The ffcv backend for :mod:`fastairl.data`'s loader registry."""
    return FFCVLoader(spec)
