"""Each augmentation op after the crop, declared once: the table :data:`OPS`.

Why one table: what the batched path and the reference-style folder path know about an
op (the recipe fields it reads, its parameter keys, how they are drawn, how the drawn
rows become a plan and go through its kernel, and the torchvision/PIL transform of the
folder pipeline) belongs together. ``GPUAugment`` (draw, parameter check, plan, apply)
and ``folder.view_transform`` iterate this table, so adding an op is one entry here plus
its recipe field in ``recipes.py`` (a new kernel goes to ``augment_ops.py``) and, for the
preview, one entry in ``fastairl/preview/ops.py``.

Order is table order twice, so moving an entry changes the views: the draw is one
uniform tensor of ``sum(columns)`` per sample whose columns are given to the ops in turn,
and the ops run in turn, except an op whose ``first`` holds for the view, which runs
before all others (grayscale before jitter). The crop is not an op here: every loader
draws it at decode time (``crop.py``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from fastairl.data.augment_ops import _blend_pass, _gray3, _solarize, gaussian_blur, shift_hue
from fastairl.data.augment_plan import _on_rows, _select, flags, jitter_plan
from fastairl.data.recipes import ViewRecipe

__all__ = ["AugmentOp", "OPS", "PARAM_KEYS", "BLUR_TRUNCATE", "PILGaussianBlur", "PILSolarize",
           "draw", "in_order", "Plan"]

#: Gaussian blur window half-width in units of the largest sigma of the recipe. At 3 sigma
#: the dropped tails change a real photo by about 0.04/255 (mean absolute) at sigma 2,
#: a tenth of how far PIL's box-blur approximation itself is from a Gaussian.
BLUR_TRUNCATE = 3.0

Params = Mapping[str, torch.Tensor]


def _no_check(i: int, v: ViewRecipe) -> None:
    return None


def _never(v: ViewRecipe) -> bool:
    return False


@dataclass(frozen=True)
class AugmentOp:
    """One op of the recipe after the crop: everything both pipelines need of it."""

    name: str
    #: ViewRecipe fields the op reads; ``prob`` is its probability (checked to lie in [0, 1])
    fields: tuple[str, ...]
    prob: str
    #: parameter key -> shape of one row (``()`` for a per-sample scalar)
    keys: Mapping[str, tuple[int, ...]]
    #: uniforms drawn per sample
    columns: int
    #: (view, uniforms (B, columns), flip_done) -> {key: (B, *shape) tensor}
    draw: Callable[[ViewRecipe, torch.Tensor, bool], dict[str, torch.Tensor]]
    #: (params, view, flip_done, device) -> the op's plan for a batch; None: nothing to do
    plan: Callable[[Params, ViewRecipe, bool, torch.device], Any]
    #: (x, plan, start, stop, view) -> x with the op applied to the rows start:stop of the batch
    apply: Callable[[torch.Tensor, Any, int, int, ViewRecipe], torch.Tensor]
    #: view -> its transform in the folder pipeline (imports torchvision when called); None: off
    pil: Callable[[ViewRecipe], Any]
    #: (view index, view) -> raises ValueError for a bad setting other than the probability
    check: Callable[[int, ViewRecipe], None] = _no_check
    #: whether the op runs before every other op for this view
    first: Callable[[ViewRecipe], bool] = _never


# -------------------------------------------------------------------- PIL twins (folder pipeline)
# PIL and torchvision are imported when a twin is built or called: the batched path reads
# this table too and needs neither.

class PILGaussianBlur:
    """The reference's blur: PIL GaussianBlur with radius = sigma ~ U(lo, hi)."""

    def __init__(self, sigma: tuple[float, float]):
        self.sigma = sigma

    def __call__(self, img):
        from PIL import ImageFilter
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class PILSolarize:
    def __init__(self, threshold: int):
        self.threshold = threshold

    def __call__(self, img):
        from PIL import ImageOps
        return ImageOps.solarize(img, self.threshold)


def _random_apply(t, p: float):
    from torchvision import transforms as T
    return T.RandomApply([t], p=p)


def _on_flagged(x: torch.Tensor, rows: list[bool], start: int, stop: int, fn) -> torch.Tensor:
    """``fn`` on the rows of ``start:stop`` whose flag is set (an on/off op's apply)."""
    return _on_rows(x, _select(rows, start, stop, x.device), fn)


# -------------------------------------------------------------------- colour jitter

def jitter_ranges(v: ViewRecipe) -> tuple[tuple[float, float], ...]:
    """(low, high) of brightness, contrast, saturation factors and of the hue shift."""
    b, c, s, h = v.jitter if v.jitter is not None else (0.0, 0.0, 0.0, 0.0)
    return ((max(0.0, 1.0 - b), 1.0 + b), (max(0.0, 1.0 - c), 1.0 + c),
            (max(0.0, 1.0 - s), 1.0 + s), (-h, h))


def _draw_jitter(v, u, flip_done):
    do_jitter = v.jitter is not None and any(j > 0 for j in v.jitter)
    (b0, b1), (c0, c1), (s0, s1), (h0, h1) = jitter_ranges(v)
    return {
        "jitter": (u[:, 0] < v.jitter_p) if do_jitter else torch.zeros(u.shape[0], dtype=torch.bool, device=u.device),
        "brightness": b0 + (b1 - b0) * u[:, 1],
        "contrast": c0 + (c1 - c0) * u[:, 2],
        "saturation": s0 + (s1 - s0) * u[:, 3],
        "hue": h0 + (h1 - h0) * u[:, 4],
        # argsort of i.i.d. uniforms is a uniformly random permutation per row.
        "order": u[:, 5:9].argsort(dim=1),
    }


def _check_jitter(i, v):
    if v.jitter is not None:
        if len(v.jitter) != 4 or min(v.jitter) < 0:
            raise ValueError(f"view {i}: jitter={v.jitter} must be 4 non-negative strengths (b, c, s, h)")
        if v.jitter[3] > 0.5:
            raise ValueError(f"view {i}: hue jitter {v.jitter[3]} exceeds 0.5 (a half turn)")


def _plan_jitter(params, v, flip_done, device):
    if v.jitter is None or v.jitter_p <= 0 or not any(j > 0 for j in v.jitter):
        return None
    return jitter_plan(params, v, device)


def _apply_jitter(x, plan, start, stop, v):
    positions, hue_shift = plan
    dev = x.device
    for coef, blend, need_gray, hue in positions:
        if coef is not None and any(blend[start:stop]):
            c = coef[:, start:stop]
            x = _blend_pass(x, c[0], c[1], c[2], need_gray=any(need_gray[start:stop]))
        if hue_shift is not None:
            x = _on_rows(x, _select(hue, start, stop, dev), shift_hue, hue_shift[start:stop])
    return x


def _pil_jitter(v):
    if v.jitter is None or v.jitter_p <= 0:
        return None
    from torchvision import transforms as T
    b, c, s, h = v.jitter
    jitter = T.ColorJitter(b, c, s, h)
    return _random_apply(jitter, v.jitter_p) if v.jitter_p < 1.0 else jitter


JITTER = AugmentOp(
    "jitter", fields=("jitter_p", "jitter"), prob="jitter_p",
    keys={"jitter": (), "brightness": (), "contrast": (), "saturation": (), "hue": (), "order": (4,)},
    columns=9, draw=_draw_jitter, plan=_plan_jitter, apply=_apply_jitter, pil=_pil_jitter, check=_check_jitter)


# -------------------------------------------------------------------- grayscale

def _pil_gray(v):
    if v.gray_p <= 0:
        return None
    from torchvision import transforms as T
    return T.RandomGrayscale(p=v.gray_p)


def _draw_gray(v, u, flip_done):
    return {"gray": u[:, 0] < v.gray_p}


def _plan_gray(params, v, flip_done, device):
    return flags(params, "gray", v.gray_p > 0) or None


def _apply_gray(x, rows, start, stop, v):
    return _on_flagged(x, rows, start, stop, _gray3)


def _gray_first(v):
    return v.gray_before_jitter


GRAY = AugmentOp(
    "gray", fields=("gray_p", "gray_before_jitter"), prob="gray_p", keys={"gray": ()}, columns=1,
    draw=_draw_gray, plan=_plan_gray, apply=_apply_gray, pil=_pil_gray, first=_gray_first)


# -------------------------------------------------------------------- Gaussian blur

def _draw_blur(v, u, flip_done):
    sig0, sig1 = v.blur_sigma
    return {"blur": u[:, 0] < v.blur_p, "sigma": sig0 + (sig1 - sig0) * u[:, 1]}


def _check_blur(i, v):
    if v.blur_p > 0 and not 0.0 < v.blur_sigma[0] <= v.blur_sigma[1]:
        raise ValueError(f"view {i}: blur_sigma={v.blur_sigma} must satisfy 0 < min <= max")


def _plan_blur(params, v, flip_done, device):
    rows = flags(params, "blur", v.blur_p > 0)
    if not rows:
        return None
    return rows, params["sigma"].to(device, torch.float32, non_blocking=True)


def _apply_blur(x, plan, start, stop, v):
    rows, sigma = plan
    radius = max(1, math.ceil(BLUR_TRUNCATE * v.blur_sigma[1]))
    return _on_rows(x, _select(rows, start, stop, x.device), lambda t, sg: gaussian_blur(t, sg, radius),
                    sigma[start:stop])


def _pil_blur(v):
    return _random_apply(PILGaussianBlur(v.blur_sigma), v.blur_p) if v.blur_p > 0 else None


BLUR = AugmentOp(
    "blur", fields=("blur_p", "blur_sigma"), prob="blur_p", keys={"blur": (), "sigma": ()}, columns=2,
    draw=_draw_blur, plan=_plan_blur, apply=_apply_blur, pil=_pil_blur, check=_check_blur)


# -------------------------------------------------------------------- solarize

def _check_solarize(i, v):
    if not 0 <= v.solarize_threshold <= 255:
        raise ValueError(f"view {i}: solarize_threshold={v.solarize_threshold} must be in 0..255")


def _draw_solarize(v, u, flip_done):
    return {"solarize": u[:, 0] < v.solarize_p}


def _plan_solarize(params, v, flip_done, device):
    return flags(params, "solarize", v.solarize_p > 0) or None


def _apply_solarize(x, rows, start, stop, v):
    thr = v.solarize_threshold / 255.0
    return _on_flagged(x, rows, start, stop, lambda t: _solarize(t, thr))


def _pil_solarize(v):
    return _random_apply(PILSolarize(v.solarize_threshold), v.solarize_p) if v.solarize_p > 0 else None


SOLARIZE = AugmentOp(
    "solarize", fields=("solarize_p", "solarize_threshold"), prob="solarize_p", keys={"solarize": ()}, columns=1,
    draw=_draw_solarize, plan=_plan_solarize, apply=_apply_solarize, pil=_pil_solarize, check=_check_solarize)


# -------------------------------------------------------------------- horizontal flip

# flip_done: the loader flipped at crop time, so nothing is drawn or applied here.
def _draw_flip(v, u, flip_done):
    return {"flip": (u[:, 0] < (0.0 if flip_done else v.flip_p))}


def _plan_flip(params, v, flip_done, device):
    return flags(params, "flip", v.flip_p > 0 and not flip_done) or None


def _flip_h(t):
    return t.flip(-1)


def _apply_flip(x, rows, start, stop, v):
    return _on_flagged(x, rows, start, stop, _flip_h)


def _pil_flip(v):
    if v.flip_p <= 0:
        return None
    from torchvision import transforms as T
    return T.RandomHorizontalFlip(p=v.flip_p)


FLIP = AugmentOp(
    "flip", fields=("flip_p",), prob="flip_p", keys={"flip": ()}, columns=1,
    draw=_draw_flip, plan=_plan_flip, apply=_apply_flip, pil=_pil_flip)


#: Every op after the crop, in draw order and (``first`` aside) application order.
OPS: tuple[AugmentOp, ...] = (JITTER, GRAY, BLUR, SOLARIZE, FLIP)

#: The keys of a parameter dict of :data:`OPS` (``GPUAugment.sample_params``).
PARAM_KEYS = tuple(k for op in OPS for k in op.keys)


# -------------------------------------------------------------------- iterating the table

def draw(ops: Sequence[AugmentOp], v: ViewRecipe, batch: int, generator: Optional[torch.Generator],
         device: torch.device, flip_done: bool) -> dict[str, torch.Tensor]:
    """Every op's parameters for ``batch`` samples of view ``v``, from one uniform draw."""
    u = torch.rand(batch, sum(op.columns for op in ops), generator=generator, device=device)
    out: dict[str, torch.Tensor] = {}
    col = 0
    for op in ops:
        out.update(op.draw(v, u[:, col:col + op.columns], flip_done))
        col += op.columns
    return out


def in_order(ops: Sequence[AugmentOp], v: ViewRecipe) -> list[AugmentOp]:
    """The ops in the order they act on view ``v``: those ``first`` for it, then the rest."""
    return [op for op in ops if op.first(v)] + [op for op in ops if not op.first(v)]


class Plan:
    """What :meth:`GPUAugment.apply` decides from the parameters, once per view batch.

    Each op's plan turns its row choices into host-side flags (and the jitter into fused
    blend coefficients on the device), so that working through the batch (in one piece on
    CUDA, in cache-sized chunks on the CPU) costs no per-chunk bookkeeping on small
    tensors and no device synchronisation.
    """

    def __init__(self, ops: Sequence[AugmentOp], params: Params, v: ViewRecipe, flip_done: bool,
                 device: torch.device) -> None:
        self.steps: list[tuple[AugmentOp, Any]] = []
        for op in in_order(ops, v):
            state = op.plan(params, v, flip_done, device)
            if state is not None:
                self.steps.append((op, state))

    def apply(self, x: torch.Tensor, start: int, v: ViewRecipe) -> torch.Tensor:
        """Every planned op on ``x``, the rows ``start:start + len(x)`` of the batch."""
        stop = start + x.shape[0]
        for op, state in self.steps:
            x = op.apply(x, state, start, stop, v)
        return x
