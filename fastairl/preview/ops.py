"""The preview's side of each augmentation op, one entry per op in :data:`OPS`.

Why one table: what the preview knows about an op (its keys in a dump and what they
hold, their 'not drawn' values, how the folder loader's draw is recorded and read back,
its caption text, the statistics row that checks it against the recipe) belongs
together, so adding an op to the preview is one entry here. The op's draw, plan step,
kernel call and folder-pipeline transform are its entry in ``fastairl.data.ops.OPS``, its
recipe field is in ``fastairl.data.recipes``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from fastairl.data.recipes import ViewRecipe

#: Lines of caption text under every cell (each op's caption names lines below this).
CAPTION_LINES = 5

#: A caption: view ``v`` of pair ``r`` -> {caption line: text}; empty where the op is not in the recipe.
Caption = Callable[[Mapping[str, torch.Tensor], int, int, ViewRecipe, Mapping], dict[int, str]]
#: A hook: (torchvision transform, note(**drawn values)) -> the transform that notes its draw.
Hook = Callable[[Any, Callable[..., None]], Any]


@dataclass(frozen=True)
class OpPreview:
    """What the preview does for one op."""

    name: str
    #: dump key -> (what its tensor holds, its 'not drawn / not reported' column for n views)
    params: Mapping[str, tuple[str, Callable[[int], torch.Tensor]]]
    caption: Caption
    #: folder record (what the hooks noted for one view) -> row r of the params
    read: Callable[[dict[str, torch.Tensor], int, Mapping[str, Any]], None]
    #: the folder pipeline's transform classes this op records (imported when asked: torchvision is slow)
    folder_types: Callable[[], tuple[type, ...]]
    hook: Hook
    #: caption text for each line where none of that line's ops is in the recipe
    absent: Mapping[int, str] = field(default_factory=dict)
    #: (statistics label, the recipe's probability of the op for a view dict); None: not checked
    stat: tuple[str, Callable[[Mapping], float]] | None = None
    #: meta key naming, per view, who drew the op ("drawn inside ..." where nobody reports it)
    source: str | None = None


def reported(op: OpPreview, meta: Mapping, v: int) -> bool:
    """Whether the loader reported view ``v``'s draws of ``op`` (ops without a source always are)."""
    return op.source is None or not str(meta[op.source][v]).startswith("drawn inside")


# -------------------------------------------------------------------- 'not drawn' columns
# float64: Python-float draws stay exact

def _nan(n: int) -> torch.Tensor:
    return torch.full((n,), float("nan"), dtype=torch.float64)


def _off(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.bool)


def _minus_one(width: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.full((n, width), -1, dtype=torch.int64)


# -------------------------------------------------------------------- folder-loader hooks

class Observed:
    """Runs a random on/off transform and reports whether it acted.

    torchvision's RandomGrayscale and RandomHorizontalFlip return the very input object
    when they do nothing and a new image when they act, so identity tells which.
    """

    def __init__(self, t, note: Callable[[bool], None]) -> None:
        self.t, self.note = t, note

    def __call__(self, img):
        out = self.t(img)
        self.note(out is not img)
        return out


def _observe(key: str) -> Hook:
    return lambda t, note: Observed(t, lambda done: note(**{key: done}))


def _hook_crop(t, note):
    draw = type(t).get_params

    def get_params(img, scale, ratio):
        box = draw(img, scale, ratio)
        w, h = img.size
        note(box=tuple(int(b) for b in box), src_hw=(int(h), int(w)))
        return box

    t.get_params = get_params  # instance attribute: shadows the static method for this object only
    return t


def _hook_jitter(t, note):
    draw = type(t).get_params

    def get_params(brightness, contrast, saturation, hue):
        fn_idx, b, c, s, h = draw(brightness, contrast, saturation, hue)
        note(jitter=True, order=[int(k) for k in fn_idx], brightness=b, contrast=c, saturation=s, hue=h)
        return fn_idx, b, c, s, h

    t.get_params = get_params
    return t


def _hook_blur(t, note):
    def blur(img):
        state = random.getstate()
        sigma = random.uniform(*t.sigma)  # the value the blur draws next
        random.setstate(state)
        note(blur=True, sigma=sigma)
        return t(img)
    return blur


def _hook_solarize(t, note):
    def solarize(img):
        note(solarize=True)
        return t(img)
    return solarize


def _tv(name: str) -> Callable[[], tuple[type, ...]]:
    def types():
        from torchvision import transforms as T
        return (getattr(T, name),)
    return types


def _fastairl(name: str) -> Callable[[], tuple[type, ...]]:
    def types():
        from fastairl.data import folder
        return (getattr(folder, name),)
    return types


# -------------------------------------------------------------------- reading a folder record back

def _read_crop(p, r, rec):
    if "box" in rec:
        _, _, h, w = rec["box"]
        H, W = rec["src_hw"]
        p["box"][r] = torch.tensor(rec["box"])
        p["src_hw"][r] = torch.tensor(rec["src_hw"])
        p["scale"][r] = (h * w) / float(H * W)


def _read_flag(key: str):
    def read(p, r, rec):
        p[key][r] = bool(rec.get(key, False))
    return read


def _read_jitter(p, r, rec):
    if rec.get("jitter"):
        p["jitter"][r] = True
        p["order"][r] = torch.tensor(rec["order"])
        for k in JITTER_FACTORS:
            if rec[k] is not None:
                p[k][r] = float(rec[k])


def _read_blur(p, r, rec):
    p["blur"][r] = bool(rec.get("blur", False))
    if rec.get("blur"):
        p["sigma"][r] = float(rec["sigma"])


# -------------------------------------------------------------------- captions and expected shares

#: Colour-jitter factors in torchvision's numbering (the ``order`` key holds these numbers).
JITTER_FACTORS = ("brightness", "contrast", "saturation", "hue")


def _yes(x: torch.Tensor) -> str:
    return "yes" if bool(x) else "no"


def _caption_crop(p, r, v, view, meta):
    box = [int(b) for b in p["box"][r]]
    if box[0] >= 0:
        return {0: f"view {v + 1}: crop t{box[0]} l{box[1]} {box[2]}x{box[3]}", 1: f"scale {float(p['scale'][r]):.3f}"}
    return {0: f"view {v + 1}: crop drawn inside {meta['loader']}"}


def _caption_flip(p, r, v, view, meta):
    return {1: f"flip {_yes(p['flip'][r]) if reported(FLIP, meta, v) else 'inside ' + str(meta['loader'])}"}


def _jitter_in_recipe(view: ViewRecipe) -> bool:
    return view.jitter_p > 0 and any(s > 0 for s in (view.jitter or (0.0, 0.0, 0.0, 0.0)))


def _caption_jitter(p, r, v, view, meta):
    if not _jitter_in_recipe(view):
        return {}
    if not bool(p["jitter"][r]):
        return {2: "jitter no"}
    parts = []
    for k in [int(o) for o in p["order"][r]]:
        if k < 0 or view.jitter[k] <= 0:
            continue
        name = JITTER_FACTORS[k]
        val = float(p[name][r])
        parts.append(f"h{val:+.3f}" if k == 3 else f"{name[0]}{val:.2f}")
    return {2: "jitter " + " ".join(parts)}


def _caption_gray(p, r, v, view, meta):
    if view.gray_p <= 0:
        return {}
    return {3: f"gray {_yes(p['gray'][r])}" + (" (before jitter)" if view.gray_before_jitter else "")}


def _caption_blur(p, r, v, view, meta):
    if view.blur_p <= 0:
        return {}
    return {4: f"blur sigma {float(p['sigma'][r]):.2f}" if bool(p["blur"][r]) else "blur no"}


def _caption_solarize(p, r, v, view, meta):
    return {3: f"solarize {_yes(p['solarize'][r])}"} if view.solarize_p > 0 else {}


def _p(recipe_field: str) -> Callable[[Mapping], float]:
    return lambda view: float(view[recipe_field])


def _jitter_p(view: Mapping) -> float:
    strengths = view.get("jitter") or (0.0, 0.0, 0.0, 0.0)
    return float(view["jitter_p"]) if any(float(s) > 0 for s in strengths) else 0.0


# -------------------------------------------------------------------- the table

CROP = OpPreview(
    "crop", {"box": ("(N, 4) int64 crop window (top, left, height, width) in source pixels; -1 where not reported",
                     _minus_one(4)),
             "src_hw": ("(N, 2) int64 source image (height, width); -1 where not reported", _minus_one(2)),
             "scale": ("(N,) float64 crop area / image area; NaN where not reported", _nan)},
    _caption_crop, _read_crop, _tv("RandomResizedCrop"), _hook_crop)
FLIP = OpPreview(
    "flip", {"flip": ("(N,) bool horizontal flip (meta['flip_source'] says whether it is known)", _off)},
    _caption_flip, _read_flag("flip"), _tv("RandomHorizontalFlip"), _observe("flip"),
    stat=("flip", _p("flip_p")), source="flip_source")
JITTER = OpPreview(
    "jitter", {"jitter": ("(N,) bool colour jitter applied", _off),
               "brightness": ("(N,) float64 factor (NaN where the loader drew none)", _nan),
               "contrast": ("(N,) float64 factor (NaN where the loader drew none)", _nan),
               "saturation": ("(N,) float64 factor (NaN where the loader drew none)", _nan),
               "hue": ("(N,) float64 hue shift in turns (NaN where the loader drew none)", _nan),
               "order": ("(N, 4) int64 jitter order, 0=brightness 1=contrast 2=saturation 3=hue; -1 where none drawn",
                         _minus_one(4))},
    _caption_jitter, _read_jitter, _tv("ColorJitter"), _hook_jitter,
    absent={2: "jitter - (not in recipe)"}, stat=("jitter", _jitter_p))
GRAY = OpPreview(
    "gray", {"gray": ("(N,) bool grayscale applied", _off)},
    _caption_gray, _read_flag("gray"), _tv("RandomGrayscale"), _observe("gray"),
    absent={3: "gray -"}, stat=("grayscale", _p("gray_p")))
BLUR = OpPreview(
    "blur", {"blur": ("(N,) bool Gaussian blur applied", _off),
             "sigma": ("(N,) float64 blur sigma in pixels (NaN where the loader drew none)", _nan)},
    _caption_blur, _read_blur, _fastairl("PILGaussianBlur"), _hook_blur,
    absent={4: "blur - (not in recipe)"}, stat=("blur", _p("blur_p")))
SOLARIZE = OpPreview(
    "solarize", {"solarize": ("(N,) bool solarize applied", _off)},
    _caption_solarize, _read_flag("solarize"), _fastairl("PILSolarize"), _hook_solarize,
    absent={3: "solarize -"}, stat=("solarize", _p("solarize_p")))

#: Every op, in the order of the dump's keys, of a caption line's parts and of the statistics rows.
OPS = (CROP, FLIP, JITTER, GRAY, BLUR, SOLARIZE)

#: Keys of each per-view parameter dict in a dump (all tensors with N rows).
PARAM_DOC = {key: doc for op in OPS for key, (doc, _) in op.params.items()}


def empty_params(n: int) -> dict[str, torch.Tensor]:
    """Parameter dict for ``n`` views with every value 'not drawn / not reported'."""
    return {key: empty(n) for op in OPS for key, (_, empty) in op.params.items()}


def folder_params(records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The folder loader's recorded draws (one record per view) as a parameter dict."""
    p = empty_params(len(records))
    for r, rec in enumerate(records):
        for op in OPS:
            op.read(p, r, rec)
    return p


def folder_hook(t, note: Callable[..., None]):
    """``t`` (one op of the folder pipeline) wrapped by its op's hook; an error for an unknown op."""
    for op in OPS:
        if isinstance(t, op.folder_types()):
            return op.hook(t, note)
    raise RuntimeError(f"fastairl.preview cannot report the parameters of {t!r} in the folder loader's "
                       f"pipeline; give its op an entry in fastairl/preview/ops.py")


def view_caption(p: Mapping[str, torch.Tensor], r: int, v: int, view: ViewRecipe, meta: Mapping) -> list[str]:
    """The caption lines of view ``v`` of pair ``r``: what was drawn for it, in recipe order.

    A line joins the parts of its ops that are in the recipe; where none is, it says
    which ops are absent.
    """
    present: dict[int, list[str]] = {}
    absent: dict[int, list[str]] = {}
    for op in OPS:
        for line, text in op.caption(p, r, v, view, meta).items():
            present.setdefault(line, []).append(text)
        for line, text in op.absent.items():
            absent.setdefault(line, []).append(text)
    return ["  ".join(present.get(k) or absent.get(k, [])) for k in range(CAPTION_LINES)]
