"""The eval window is written once (fastairl.data.crop.eval_window) and every backend's
old, separate version of it gives exactly the same numbers and pixels (issue #15)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastairl.data.crop import eval_window
from fastairl.data.recipes import eval_resize_size

SIZES = (32, 64, 96, 112, 128, 160, 192, 224)
SIDES = list(range(1, 64)) + list(range(64, 1200, 31)) + [1999, 2000, 2001, 4096]


def _old_ffcv_eval_box(height: int, width: int, size: int, resize: int):
    """ffcv_loader.eval_box as it was before the move (numba source, run as Python)."""
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


def _old_dali_eval_geometry(height: int, width: int, size: int):
    """dali_loader.eval_geometry as it was before the move."""
    short = eval_resize_size(size)
    if height <= width:
        rh, rw = short, int(short * width / height)
    else:
        rh, rw = int(short * height / width), short
    return rh, rw, int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))


def _old_nvjpeg_eval_view(im: torch.Tensor, size: int) -> torch.Tensor:
    """nvjpeg_loader's eval view as it was before the move: torchvision's Resize + CenterCrop."""
    return TF.center_crop(TF.resize(im, [eval_resize_size(size)], antialias=True), [size, size])


def test_window_matches_torchvision_resize_and_center_crop_numbers():
    # torchvision's own output-size rule and crop offset, on the same sizes.
    from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size
    for h, w in itertools.product(SIDES[::3], SIDES[::3]):
        for size in (64, 224):
            short = eval_resize_size(size)
            rh, rw, top, left = eval_window(h, w, size, short)
            assert [rh, rw] == list(_compute_resized_output_size((h, w), [short])), (h, w, size)
            assert (top, left) == (int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0)))


def test_dali_eval_geometry_is_unchanged():
    from fastairl.data.dali_loader import eval_geometry
    n = 0
    for h, w in itertools.product(SIDES, SIDES):
        for size in SIZES:
            assert eval_geometry(h, w, size) == _old_dali_eval_geometry(h, w, size), (h, w, size)
            n += 1
    assert n > 20_000


def test_ffcv_eval_box_is_unchanged():
    pytest.importorskip("numba")
    from fastairl.data.ffcv_kernels import eval_box
    for h, w in itertools.product(SIDES, SIDES):
        for size in SIZES:
            for resize in (eval_resize_size(size), size, size + 1, 2 * size + 3):
                new = eval_box(h, w, size, resize)
                old = _old_ffcv_eval_box(h, w, size, resize)
                assert new == old, (h, w, size, resize, new, old)  # bit-identical floats


def test_nvjpeg_eval_view_is_unchanged():
    from fastairl.data.nvjpeg_loader import _eval_view
    g = torch.Generator().manual_seed(0)
    shapes = [(17, 300), (300, 17), (64, 64), (65, 64), (64, 65), (100, 333), (333, 100), (241, 379),
              (480, 640), (640, 480), (73, 73), (1, 90), (90, 1), (225, 224), (224, 225)]
    for (h, w), size in itertools.product(shapes, (16, 32, 57, 64)):
        im = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        new = _eval_view(im, size)
        old = _old_nvjpeg_eval_view(im, size)
        assert new.shape == (3, size, size)
        assert torch.equal(new, old), (h, w, size)
