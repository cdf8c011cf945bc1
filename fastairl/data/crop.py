"""Random-resized-crop sampling and the crop+resize kernel, shared by every decode backend.

The reference crops with torchvision's ``RandomResizedCrop``. Backends that decode on
the CPU in numba/numpy (ffcv) or hand crop windows to a GPU decoder (DALI, nvJPEG) need
the same *distribution* of crop windows without a torch RNG call per image, so the rule
is written here once, against a :class:`numpy.random.Generator`:

1. up to ``CROP_TRIES`` times: draw an area fraction ``s ~ U(scale)`` and an aspect ratio
   ``r = exp(U(log ratio))``; the window is ``w = round(sqrt(s*A*r))``,
   ``h = round(sqrt(s*A/r))``; accept it if it fits, with its top-left corner uniform
   over the valid positions;
2. if no try fits, fall back to the largest centred window whose aspect ratio is
   clamped into ``ratio`` (the whole image when its own ratio is already inside).

:func:`sample_crop` draws one window, :func:`sample_crops` draws one per image for a
whole batch with array operations (same distribution, different stream), and
:func:`crop_resize` cuts and resizes windows on torch tensors exactly as torchvision's
``resized_crop`` does (bilinear, antialiased), so a GPU decode backend can produce the
reference's pixels. :func:`eval_window` is the validation crop (torchvision's
``Resize`` + ``CenterCrop``), written once for the ffcv, dali and nvjpeg backends.
"""
from __future__ import annotations

import math
import platform
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from fastairl.data.recipes import CROP_TRIES

__all__ = ["sample_crop", "sample_crops", "batch_crops", "crop_resize", "eval_window"]

Box = tuple[int, int, int, int]


def _check_ranges(scale: Sequence[float], ratio: Sequence[float]) -> tuple[float, float, float, float]:
    """Validate the user-facing ranges once; a bad recipe should fail loudly, not crop oddly."""
    if len(scale) != 2 or len(ratio) != 2:
        raise ValueError(f"crop scale and ratio must be (min, max) pairs, got scale={scale!r} ratio={ratio!r}")
    s0, s1 = float(scale[0]), float(scale[1])
    r0, r1 = float(ratio[0]), float(ratio[1])
    if not (0.0 <= s0 <= s1 and s1 > 0.0):
        raise ValueError(f"crop scale {tuple(scale)!r} must satisfy 0 <= min <= max and max > 0 "
                         "(area fractions, e.g. (0.08, 1.0))")
    if not (0.0 < r0 <= r1):
        raise ValueError(f"crop ratio {tuple(ratio)!r} must satisfy 0 < min <= max (width/height, e.g. (3/4, 4/3))")
    return s0, s1, r0, r1


def _fallback(height: int, width: int, r0: float, r1: float) -> Box:
    """Centred window with the image's aspect ratio clamped into [r0, r1]."""
    in_ratio = width / height
    if in_ratio < r0:
        w, h = width, int(round(width / r0))
    elif in_ratio > r1:
        h, w = height, int(round(height * r1))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def sample_crop(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                rng: np.random.Generator) -> Box:
    """One random-resized-crop window ``(top, left, h, w)`` for an image of ``height x width``.

    Follows torchvision's ``RandomResizedCrop.get_params`` rule (see the module docstring)
    but draws from ``rng`` so that numpy-side decoders need no torch RNG.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    s0, s1, r0, r1 = _check_ranges(scale, ratio)
    area = height * width
    log_r0, log_r1 = math.log(r0), math.log(r1)
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(s0, s1)
        aspect = math.exp(rng.uniform(log_r0, log_r1))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return _fallback(height, width, r0, r1)


def sample_crops(heights: Sequence[int] | np.ndarray, widths: Sequence[int] | np.ndarray,
                 scale: Sequence[float], ratio: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Windows for a batch: an ``(N, 4)`` int64 array of ``(top, left, h, w)`` rows.

    All ``CROP_TRIES`` candidate windows of every image are drawn at once and the first
    fitting one is kept, which is the same distribution as :func:`sample_crop` (the tries
    are independent and the first success wins) without a Python loop per image.
    """
    hs = np.asarray(heights, dtype=np.int64).reshape(-1)
    ws = np.asarray(widths, dtype=np.int64).reshape(-1)
    if hs.shape != ws.shape:
        raise ValueError(f"heights and widths must have the same length, got {hs.shape[0]} and {ws.shape[0]}")
    if hs.size and (hs.min() <= 0 or ws.min() <= 0):
        raise ValueError("image sizes must be positive; got a zero or negative height/width")
    s0, s1, r0, r1 = _check_ranges(scale, ratio)
    n = hs.shape[0]
    out = np.empty((n, 4), dtype=np.int64)
    if n == 0:
        return out
    area = (hs * ws).astype(np.float64)[:, None]
    target = area * rng.uniform(s0, s1, size=(n, CROP_TRIES))
    aspect = np.exp(rng.uniform(math.log(r0), math.log(r1), size=(n, CROP_TRIES)))
    # np.rint rounds half to even, like Python's round() used by the reference rule.
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= ws[:, None]) & (h > 0) & (h <= hs[:, None])
    ok = fits.any(axis=1)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    ch, cw = h[rows, first], w[rows, first]
    # Uniform integer offsets in [0, H - h]; rows that fell back get overwritten below.
    top = rng.integers(0, np.where(ok, hs - ch, 0) + 1)
    left = rng.integers(0, np.where(ok, ws - cw, 0) + 1)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = top, left, ch, cw
    for i in np.flatnonzero(~ok):
        out[i] = _fallback(int(hs[i]), int(ws[i]), r0, r1)
    return out


def batch_crops(views: Sequence, seed: int, epoch: int, rank: int, batch_no: int,
                heights: Sequence[int] | np.ndarray, widths: Sequence[int] | np.ndarray
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view, the crop windows ``(N, 4)`` (top, left, h, w) and flips ``(N,)`` of one batch.

    ``views`` are the recipe's :class:`~fastairl.data.recipes.ViewRecipe` entries (their
    ``crop_scale``, ``crop_ratio`` and ``flip_p``). Drawn with :func:`sample_crops` from a
    generator seeded by (seed, epoch, rank, batch number) only, so a run resumed at
    that batch draws the same windows, and every backend that crops outside torch
    (ffcv, dali, nvjpeg) draws the same windows for the same batch of image sizes.
    """
    rng = np.random.default_rng([int(seed) % 2**63, int(epoch), int(rank), int(batch_no)])
    hs = np.asarray(heights, dtype=np.int64)
    ws = np.asarray(widths, dtype=np.int64)
    out = []
    for v in views:
        boxes = sample_crops(hs, ws, v.crop_scale, v.crop_ratio, rng)
        flips = rng.random(hs.shape[0]) < v.flip_p
        out.append((boxes, flips))
    return out


def eval_window(height: int, width: int, size: int, resize: int) -> tuple[int, int, int, int]:
    """``(resized_h, resized_w, top, left)`` of torchvision's ``Resize(resize)`` + ``CenterCrop(size)``.

    ``Resize`` scales the short side to ``resize`` and truncates the long one
    (``int(resize * long / short)``); ``CenterCrop`` then starts at
    ``round((resized - size) / 2)`` (half to even, as Python's ``round``). The one
    definition of the eval window: the ffcv backend compiles it with numba
    (:func:`fastairl.data.ffcv_kernels.eval_box`, which maps it back to source pixels),
    the dali backend hands these numbers to ``fn.resize`` / ``fn.slice``, the nvjpeg
    backend resizes to ``(resized_h, resized_w)`` and slices. Plain scalar arithmetic
    only, so that numba can compile it.
    """
    if height <= width:
        rh = resize
        rw = int(resize * width / height)
    else:
        rw = resize
        rh = int(resize * height / width)
    top = int(np.rint((rh - size) / 2.0))
    left = int(np.rint((rw - size) / 2.0))
    return rh, rw, top, left


def _native_uint8_resize(device: torch.device) -> bool:
    """Whether torchvision resizes uint8 directly (CPU with a vector unit) or via float32.

    torchvision's tensor ``resize`` interpolates uint8 images natively on CPUs with
    AVX2/AVX512 or on arm64 and otherwise converts to float32, interpolates, rounds and
    converts back; the two differ by a level at a few pixels, so we take the same branch
    to give the same pixels.
    """
    if device.type != "cpu":
        return False
    if torch.compiler.is_compiling():
        return True
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64"))


def _resize(img: torch.Tensor, out_hw: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of an ``(N, C, h, w)`` tensor, dtype preserved."""
    if tuple(img.shape[-2:]) == out_hw:
        return img
    dtype = img.dtype
    if dtype in (torch.float32, torch.float64) or (dtype == torch.uint8 and _native_uint8_resize(img.device)):
        return F.interpolate(img, size=out_hw, mode="bilinear", align_corners=False, antialias=antialias)
    y = F.interpolate(img.float(), size=out_hw, mode="bilinear", align_corners=False, antialias=antialias)
    if not dtype.is_floating_point:
        y = y.round_()
    return y.to(dtype)


def _as_boxes(box: Union[Sequence[int], np.ndarray, torch.Tensor]) -> np.ndarray:
    b = box.detach().cpu().numpy() if isinstance(box, torch.Tensor) else np.asarray(box)
    if b.shape[-1:] != (4,) or b.ndim not in (1, 2):
        raise ValueError(f"box must be (top, left, h, w) or an (N, 4) array of them, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.integer):
        if not np.all(b == np.round(b)):
            raise ValueError(f"box coordinates must be whole pixels, got {b.tolist()}")
    return b.astype(np.int64).reshape(-1, 4)


def _check_box(b: np.ndarray, height: int, width: int) -> None:
    top, left, h, w = (int(v) for v in b)
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"crop box (top={top}, left={left}, h={h}, w={w}) does not lie inside the "
                         f"{height}x{width} image; boxes from sample_crop/sample_crops always do")


def crop_resize(img: Union[torch.Tensor, Sequence[torch.Tensor]],
                box: Union[Sequence[int], np.ndarray, torch.Tensor],
                size: Union[int, Sequence[int]], antialias: bool = True) -> torch.Tensor:
    """Cut ``box`` out of ``img`` and resize it to ``size``, as torchvision's ``resized_crop``.

    ``img`` is a ``(C, H, W)`` image, a ``(B, C, H, W)`` batch, or a list of ``(C, H, W)``
    images of different sizes (what a GPU decoder returns). ``box`` is one
    ``(top, left, h, w)`` (applied to every image) or an ``(N, 4)`` array with one row per
    image. ``size`` is an int for a square output (as ``RandomResizedCrop(size)``, *not*
    the short-side meaning of ``resize``) or ``(height, width)``. The dtype is kept; uint8
    results are rounded like torchvision's. Windows of different sizes need one
    ``interpolate`` call each, so a per-image box costs a call per image; a shared box is
    one call for the batch.
    """
    if isinstance(size, int):
        out_hw = (size, size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        out_hw = (int(size[0]), int(size[1]))
    if out_hw[0] <= 0 or out_hw[1] <= 0:
        raise ValueError(f"output size must be positive, got {out_hw}")
    boxes = _as_boxes(box)

    if isinstance(img, torch.Tensor) and img.dim() == 3:
        if boxes.shape[0] != 1:
            raise ValueError(f"a single (C, H, W) image takes one box, got {boxes.shape[0]}")
        _check_box(boxes[0], img.shape[-2], img.shape[-1])
        t, l, h, w = (int(v) for v in boxes[0])
        return _resize(img[None, :, t:t + h, l:l + w], out_hw, antialias)[0]

    if isinstance(img, torch.Tensor):
        if img.dim() != 4:
            raise ValueError(f"img must be (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}")
        images: Sequence[torch.Tensor] = img
        n = img.shape[0]
        if boxes.shape[0] == 1:
            _check_box(boxes[0], img.shape[-2], img.shape[-1])
            t, l, h, w = (int(v) for v in boxes[0])
            return _resize(img[:, :, t:t + h, l:l + w], out_hw, antialias)
    else:
        images = list(img)
        n = len(images)
        if n == 0:
            raise ValueError("crop_resize got an empty list of images")
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3:
                raise ValueError(f"image {i} of the list must be a (C, H, W) tensor")
        if boxes.shape[0] == 1:
            boxes = np.repeat(boxes, n, axis=0)
    if boxes.shape[0] != n:
        raise ValueError(f"got {boxes.shape[0]} boxes for {n} images; pass one box or one per image")
    first = images[0]
    out = torch.empty((n, first.shape[-3], *out_hw), dtype=first.dtype, device=first.device)
    for i in range(n):
        im = images[i]
        _check_box(boxes[i], im.shape[-2], im.shape[-1])
        t, l, h, w = (int(v) for v in boxes[i])
        out[i] = _resize(im[None, :, t:t + h, l:l + w], out_hw, antialias)[0]
    return out
