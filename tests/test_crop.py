"""The crop sampler draws torchvision's RandomResizedCrop distribution and crop_resize
gives torchvision's resized_crop pixels, on real photographs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from fastairl.data.crop import crop_resize, sample_crop, sample_crops
from fastairl.data.recipes import CROP_RATIO

skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the test photographs")

N_DRAWS = 3000
# (height, width): landscape, portrait, square, and two very wide/tall images where most
# or all of the ten tries fail and the clamped centre-crop fallback decides.
SIZES = [(375, 500), (500, 333), (224, 224), (100, 1000), (1000, 90)]


def _photos() -> list[np.ndarray]:
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]


def _torchvision_boxes(h: int, w: int, scale, ratio, n: int) -> np.ndarray:
    torch.manual_seed(1234)
    img = torch.empty(3, h, w, dtype=torch.uint8)
    return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


def _fallback_box(h: int, w: int, ratio) -> tuple[int, int, int, int]:
    """The centre crop the rule falls back to, computed from its definition."""
    r = w / h
    if r < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif r > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        ch, cw = h, w
    return ((h - ch) // 2, (w - cw) // 2, ch, cw)


def _compare(ours: np.ndarray, ref: np.ndarray, h: int, w: int, ratio) -> None:
    """KS on each box coordinate, area fraction and aspect ratio; same fallback rate."""
    stats = {
        "top": (ours[:, 0], ref[:, 0]), "left": (ours[:, 1], ref[:, 1]),
        "h": (ours[:, 2], ref[:, 2]), "w": (ours[:, 3], ref[:, 3]),
        "area": (ours[:, 2] * ours[:, 3] / (h * w), ref[:, 2] * ref[:, 3] / (h * w)),
        "ratio": (ours[:, 3] / ours[:, 2], ref[:, 3] / ref[:, 2]),
    }
    for name, (a, b) in stats.items():
        if np.all(a == a[0]) and np.all(b == b[0]):
            assert a[0] == b[0], f"{h}x{w} {name}: constant {a[0]} vs torchvision {b[0]}"
            continue
        p = ks_2samp(a, b).pvalue
        assert p > 1e-3, f"{h}x{w} {name}: KS p={p:.2e}"
    fb = np.array(_fallback_box(h, w, ratio))
    f_ours = np.mean(np.all(ours == fb, axis=1))
    f_ref = np.mean(np.all(ref == fb, axis=1))
    sd = np.sqrt(max(f_ref * (1 - f_ref), 1.0 / len(ref)) * 2 / len(ref))
    assert abs(f_ours - f_ref) <= 4 * sd + 1e-12, f"{h}x{w}: fallback rate {f_ours:.3f} vs {f_ref:.3f}"


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
@pytest.mark.parametrize("hw", SIZES)
def test_sample_crop_matches_torchvision_distribution(hw, scale):
    h, w = hw
    rng = np.random.default_rng(7)
    ours = np.array([sample_crop(h, w, scale, CROP_RATIO, rng) for _ in range(N_DRAWS)])
    ref = _torchvision_boxes(h, w, scale, CROP_RATIO, N_DRAWS)
    assert np.all((ours[:, 0] >= 0) & (ours[:, 1] >= 0) & (ours[:, 2] > 0) & (ours[:, 3] > 0))
    assert np.all((ours[:, 0] + ours[:, 2] <= h) & (ours[:, 1] + ours[:, 3] <= w))
    _compare(ours, ref, h, w, CROP_RATIO)


@pytest.mark.parametrize("hw", SIZES)
def test_sample_crops_vectorised_matches_torchvision_distribution(hw):
    h, w = hw
    scale = (0.08, 1.0)
    rng = np.random.default_rng(11)
    ours = sample_crops(np.full(N_DRAWS, h), np.full(N_DRAWS, w), scale, CROP_RATIO, rng)
    assert ours.shape == (N_DRAWS, 4) and ours.dtype == np.int64
    assert np.all((ours[:, 0] >= 0) & (ours[:, 1] >= 0) & (ours[:, 0] + ours[:, 2] <= h)
                  & (ours[:, 1] + ours[:, 3] <= w) & (ours[:, 2] > 0) & (ours[:, 3] > 0))
    ref = _torchvision_boxes(h, w, scale, CROP_RATIO, N_DRAWS)
    _compare(ours, ref, h, w, CROP_RATIO)


def test_sample_crops_mixed_sizes_keep_each_row_inside_its_image():
    rng = np.random.default_rng(3)
    hs = rng.integers(20, 600, size=500)
    ws = rng.integers(20, 600, size=500)
    hs[:50], ws[:50] = rng.integers(20, 100, size=50), 2000  # very wide: every try is too tall
    boxes = sample_crops(hs, ws, (0.08, 1.0), CROP_RATIO, rng)
    assert np.all(boxes[:, 0] + boxes[:, 2] <= hs) and np.all(boxes[:, 1] + boxes[:, 3] <= ws)
    # Fallback rows are exactly the clamped centre crop of their own image.
    fb = np.array([_fallback_box(int(a), int(b), CROP_RATIO) for a, b in zip(hs, ws)])
    # The shortest possible window (scale 0.08, widest ratio) is taller than the image.
    never_fits = np.sqrt(hs * ws * 0.08 / CROP_RATIO[1]) > hs + 1
    assert never_fits[:50].all()
    np.testing.assert_array_equal(boxes[never_fits], fb[never_fits])


def test_always_failing_image_falls_back_to_clamped_centre_crop():
    rng = np.random.default_rng(0)
    # 60x2000 at scale >= 0.08: every try is taller than the image.
    for _ in range(20):
        assert sample_crop(60, 2000, (0.08, 1.0), CROP_RATIO, rng) == (0, 960, 60, 80)
    torch.manual_seed(0)
    assert RandomResizedCrop.get_params(torch.empty(3, 60, 2000), [0.08, 1.0], list(CROP_RATIO)) == (0, 960, 60, 80)


def test_sampler_rejects_bad_ranges():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scale"):
        sample_crop(100, 100, (0.9, 0.1), CROP_RATIO, rng)
    with pytest.raises(ValueError, match="ratio"):
        sample_crops([100], [100], (0.1, 1.0), (0.0, 1.0), rng)
    with pytest.raises(ValueError, match="positive"):
        sample_crop(0, 100, (0.1, 1.0), CROP_RATIO, rng)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()


def test_crop_resize_equals_torchvision_resized_crop():
    rng = np.random.default_rng(5)
    photos = [_chw(p) for p in _photos()]
    for img in photos:
        h, w = img.shape[-2:]
        for size in (64, (48, 80), 600):  # down, anisotropic, up
            box = sample_crop(h, w, (0.08, 1.0), CROP_RATIO, rng)
            out_hw = [size, size] if isinstance(size, int) else list(size)
            ref = TF.resized_crop(img, *box, out_hw, antialias=True)
            ours = crop_resize(img, box, size)
            assert ours.dtype == torch.uint8 and ours.shape == ref.shape
            assert torch.equal(ours, ref), f"max diff {(ours.int() - ref.int()).abs().max()}"
            f = img.float() / 255
            torch.testing.assert_close(crop_resize(f, box, size), TF.resized_crop(f, *box, out_hw), atol=1e-6, rtol=0)
            torch.testing.assert_close(crop_resize(f, box, size, antialias=False),
                                       TF.resized_crop(f, *box, out_hw, antialias=False), atol=1e-6, rtol=0)


def test_crop_resize_batches_and_lists():
    photos = [_chw(p) for p in _photos()]
    rng = np.random.default_rng(9)
    # Different-size images (as a GPU decoder returns them), one box each.
    boxes = sample_crops([p.shape[1] for p in photos], [p.shape[2] for p in photos], (0.2, 1.0), CROP_RATIO, rng)
    out = crop_resize(photos, boxes, 72)
    assert out.shape == (4, 3, 72, 72) and out.dtype == torch.uint8
    for i, p in enumerate(photos):
        assert torch.equal(out[i], TF.resized_crop(p, *boxes[i].tolist(), [72, 72]))
    # One batch of equal-size images: per-image boxes and a shared box.
    batch = torch.stack([TF.center_crop(p, [280, 280]) for p in photos])
    boxes = sample_crops([280] * 4, [280] * 4, (0.08, 1.0), CROP_RATIO, rng)
    out = crop_resize(batch, torch.from_numpy(boxes), 64)
    for i in range(4):
        assert torch.equal(out[i], TF.resized_crop(batch[i], *boxes[i].tolist(), [64, 64]))
    shared = (10, 20, 200, 150)
    assert torch.equal(crop_resize(batch, shared, 64), TF.resized_crop(batch, *shared, [64, 64]))


def test_crop_resize_matches_pil_reference_resize_closely():
    """The reference crops PIL images; torch's antialiased bilinear is within a level of PIL."""
    rng = np.random.default_rng(2)
    for arr in _photos():
        pil = Image.fromarray(arr)
        box = sample_crop(pil.height, pil.width, (0.08, 1.0), CROP_RATIO, rng)
        ref = np.asarray(TF.resized_crop(pil, *box, [96, 96])).astype(np.int32)
        ours = crop_resize(_chw(arr), box, 96).permute(1, 2, 0).numpy().astype(np.int32)
        assert np.abs(ours - ref).max() <= 1


def test_crop_resize_rejects_bad_boxes():
    img = torch.zeros(3, 50, 60, dtype=torch.uint8)
    with pytest.raises(ValueError, match="inside"):
        crop_resize(img, (10, 10, 50, 20), 32)
    with pytest.raises(ValueError, match="box"):
        crop_resize(img, (1, 2, 3), 32)
    with pytest.raises(ValueError, match="boxes"):
        crop_resize(torch.zeros(2, 3, 50, 60, dtype=torch.uint8), np.zeros((3, 4), dtype=int) + 1, 32)
