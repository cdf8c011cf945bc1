"""The antialiased crop+resize kernel of the ``ffcv`` backend (numba, fixed point).

Why its own module: these kernels are pure numpy/numba (no ffcv import), shared by the
ffcv decoder (:mod:`fastairl.data.ffcv_decoder`) and by the tests and the preview tool
through :func:`resized_crop`. The filter is the one of torchvision's
``resized_crop(..., antialias=True)`` (PIL's separable triangle filter whose support
widens with the downscale factor); :func:`resize_box` works in fixed point and agrees
with torchvision's float result to one level. Moved out of ``ffcv_loader.py`` (issue #15);
``fastairl.data.ffcv_loader`` re-exports the public names.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from fastairl.data.crop import eval_window

__all__ = ["eval_box", "resize_box", "resized_crop"]

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


#: :func:`fastairl.data.crop.eval_window` compiled for the decoder's numba loop.
_eval_window = nb.njit(cache=True, nogil=True)(eval_window)


@nb.njit(cache=True, nogil=True)
def eval_box(height: int, width: int, size: int, resize: int) -> tuple[float, float, float, float]:
    """The eval window ``(y0, x0, bh, bw)`` in source pixels.

    It is the region that ``Resize(resize)`` (short side, long side truncated as
    torchvision does) followed by ``CenterCrop(size)`` keeps
    (:func:`fastairl.data.crop.eval_window`); resizing it to ``size x size`` with taps
    clamped to the whole image gives the same pixels.
    """
    rh, rw, top, left = _eval_window(height, width, size, resize)
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
