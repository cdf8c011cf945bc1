"""The op table (``fastairl.data.ops.OPS``) is what both augmentation pipelines read.

The draw layout and the folder pipeline's order are pinned, every recipe field belongs to
the crop or to one op, and an op declared in a test-local copy of the table (an invert)
is drawn, checked, applied by ``GPUAugment`` and built by ``folder.view_transform``
without any other module changing.
"""
from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from PIL import ImageOps
from torchvision import transforms as T

from fastairl.data import ops
from fastairl.data.augment import PARAM_KEYS, GPUAugment
from fastairl.data.augment_plan import _on_rows, _select, flags
from fastairl.data.folder import PILGaussianBlur, PILSolarize, view_transform
from fastairl.data.recipes import RECIPES, ViewRecipe, get_recipe

CROP_FIELDS = ("crop_scale", "crop_ratio")


@pytest.mark.parametrize("flip_done", [False, True])
@pytest.mark.parametrize("name", list(RECIPES))
def test_the_draw_is_one_uniform_tensor_split_in_table_order(name, flip_done):
    aug = GPUAugment(get_recipe(name), flip_done=flip_done)
    for vi, v in enumerate(aug.recipe):
        p = aug.sample_params(vi, 64, generator=torch.Generator().manual_seed(vi + 1))
        u = torch.rand(64, 14, generator=torch.Generator().manual_seed(vi + 1))
        (b0, b1), (c0, c1), (s0, s1), (h0, h1) = ops.jitter_ranges(v)
        on = v.jitter is not None and any(j > 0 for j in v.jitter)
        want = {"jitter": (u[:, 0] < v.jitter_p) if on else torch.zeros(64, dtype=torch.bool),
                "brightness": b0 + (b1 - b0) * u[:, 1], "contrast": c0 + (c1 - c0) * u[:, 2],
                "saturation": s0 + (s1 - s0) * u[:, 3], "hue": h0 + (h1 - h0) * u[:, 4],
                "order": u[:, 5:9].argsort(dim=1), "gray": u[:, 9] < v.gray_p, "blur": u[:, 10] < v.blur_p,
                "sigma": v.blur_sigma[0] + (v.blur_sigma[1] - v.blur_sigma[0]) * u[:, 11],
                "solarize": u[:, 12] < v.solarize_p, "flip": u[:, 13] < (0.0 if flip_done else v.flip_p)}
        assert list(p) == list(want) == list(PARAM_KEYS)
        for k in want:
            assert torch.equal(p[k], want[k]), k


def test_every_recipe_field_belongs_to_the_crop_or_to_one_op():
    named = [f for op in ops.OPS for f in op.fields]
    assert len(named) == len(set(named))
    assert set(named) | set(CROP_FIELDS) == {f.name for f in dataclasses.fields(ViewRecipe)}
    assert all(op.prob in op.fields for op in ops.OPS)
    assert PARAM_KEYS == tuple(k for op in ops.OPS for k in op.keys)
    assert sum(op.columns for op in ops.OPS) == 14


@pytest.mark.parametrize("gray_first", [False, True])
def test_view_transform_is_crop_then_the_ops_in_the_reference_order(gray_first):
    v = ViewRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                   gray_before_jitter=gray_first, blur_p=0.5, solarize_p=0.2)
    ts = view_transform(v, 32).transforms
    inner = [t.transforms[0] if isinstance(t, T.RandomApply) else t for t in ts]
    colour = [T.RandomGrayscale, T.ColorJitter] if gray_first else [T.ColorJitter, T.RandomGrayscale]
    want = [T.RandomResizedCrop, *colour, PILGaussianBlur, PILSolarize, T.RandomHorizontalFlip,
            T.ToTensor, T.Normalize]
    assert [type(t) for t in inner] == want
    assert [t.p for t in ts if isinstance(t, T.RandomApply)] == [0.8, 0.5, 0.2]
    plain = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=1.0, flip_p=0.0)
    assert [type(t) for t in view_transform(plain, 32).transforms] == [T.RandomResizedCrop, T.ColorJitter,
                                                                       T.ToTensor, T.Normalize]


def test_the_batched_path_pickles():
    aug = GPUAugment(get_recipe("byol_asym"))
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    again = pickle.loads(pickle.dumps(aug))
    a = aug([x, x], generator=torch.Generator().manual_seed(2))
    b = again([x, x], generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(u, w) for u, w in zip(a, b))


# ------------------------------------------------------------------ an op added in one place

@dataclasses.dataclass(frozen=True)
class InvertView(ViewRecipe):
    """A recipe with the extra op's field."""

    invert_p: float = 0.0


class PILInvert:
    def __call__(self, img):
        return ImageOps.invert(img)


def _draw_invert(v, u, flip_done):
    return {"invert": u[:, 0] < v.invert_p}


def _plan_invert(params, v, flip_done, device):
    return flags(params, "invert", v.invert_p > 0) or None


def _apply_invert(x, rows, start, stop, v):
    return _on_rows(x, _select(rows, start, stop, x.device), lambda t: 1.0 - t)


def _pil_invert(v):
    return T.RandomApply([PILInvert()], p=v.invert_p) if v.invert_p > 0 else None


INVERT = ops.AugmentOp("invert", fields=("invert_p",), prob="invert_p", keys={"invert": ()}, columns=1,
                       draw=_draw_invert, plan=_plan_invert, apply=_apply_invert, pil=_pil_invert)


@pytest.fixture
def with_invert(monkeypatch):
    monkeypatch.setattr(ops, "OPS", ops.OPS + (INVERT,))


def test_an_op_declared_in_the_table_is_drawn_checked_applied_and_built(with_invert):
    v = InvertView(crop_scale=(0.08, 1.0), gray_p=0.5, flip_p=0.0, invert_p=0.3)
    aug = GPUAugment([v])
    # drawn: its key, with the recipe's probability, from its own column after the others
    p = aug.sample_params(0, 20000, generator=torch.Generator().manual_seed(0))
    assert list(p) == list(PARAM_KEYS) + ["invert"]
    assert abs(p["invert"].float().mean().item() - 0.3) < 0.02
    u = torch.rand(20000, 15, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p["invert"], u[:, 14] < 0.3) and torch.equal(p["gray"], u[:, 9] < 0.5)
    # applied, after the other ops, on exactly the chosen rows
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    p = aug.sample_params(0, 6, generator=torch.Generator().manual_seed(1))
    p["gray"] = torch.tensor([True, False, True, False, False, True])
    p["invert"] = torch.tensor([True, True, False, False, True, False])
    base = aug.apply(x, {**p, "invert": torch.zeros(6, dtype=torch.bool)}, v, normalize=False)
    out = aug.apply(x, p, v, normalize=False)
    assert torch.equal(out[p["invert"]], 1.0 - base[p["invert"]])
    assert torch.equal(out[~p["invert"]], base[~p["invert"]])
    assert aug([x], generator=torch.Generator().manual_seed(1))[0].shape == x.shape
    # checked: its parameters must be there, its probability must be one
    with pytest.raises(ValueError, match="lack \\['invert'\\]"):
        aug.apply(x, {k: t for k, t in p.items() if k != "invert"}, v)
    with pytest.raises(ValueError, match="invert_p=1.5 is not a probability"):
        GPUAugment([dataclasses.replace(v, invert_p=1.5)])
    # built into the folder pipeline, after the flip, before the tensor conversion
    ts = view_transform(dataclasses.replace(v, flip_p=0.5), 16).transforms
    assert isinstance(ts[-3], T.RandomApply) and isinstance(ts[-3].transforms[0], PILInvert)
    assert ts[-3].p == 0.3 and isinstance(ts[-4], T.RandomHorizontalFlip)


def test_the_table_is_read_when_a_module_is_built(monkeypatch):
    before = GPUAugment(get_recipe("moco_plus"))
    monkeypatch.setattr(ops, "OPS", ops.OPS + (INVERT,))
    assert "invert" not in before.sample_params(0, 2)
    assert before.ops == ops.OPS[:-1]
