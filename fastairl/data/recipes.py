"""Augmentation recipes of the reference, as data.

Every backend (the reference-style ``folder`` path, ffcv, dali, nvjpeg) and the batched
augmentation module read these objects; no recipe number is written anywhere else.

A *recipe* is a tuple of :class:`ViewRecipe`, one per view. Two-view methods use two
entries (identical for symmetric recipes); the supervised recipe has one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: ImageNet normalisation used everywhere (RGB, 0..1 scale).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: torchvision RandomResizedCrop defaults: log-uniform aspect ratio in (3/4, 4/3), 10 tries.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10

#: Eval transform: resize short side to 256/224 of the training size, centre crop.
EVAL_RESIZE_FRACTION = 256.0 / 224.0


@dataclass(frozen=True)
class ViewRecipe:
    """What happens to one view after decode, in the reference's order.

    Order: random-resized crop -> [grayscale if ``gray_before_jitter``] -> colour jitter
    (with probability ``jitter_p``, its four parts in a random order per image) ->
    [grayscale] -> Gaussian blur (``blur_p``, sigma ~ U(blur_sigma)) -> solarize
    (``solarize_p``) -> horizontal flip (``flip_p``) -> normalise.
    Flip commutes with every pixel-wise op and with the (isotropic) blur, so backends may
    apply it at crop time.
    """

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float] = CROP_RATIO
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    jitter_p: float = 0.0
    gray_p: float = 0.0
    gray_before_jitter: bool = False
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: int = 128  # pixels >= threshold are inverted (uint8 scale)
    flip_p: float = 0.5

    @property
    def has_colour_ops(self) -> bool:
        return bool(self.jitter and self.jitter_p > 0) or self.gray_p > 0 or self.blur_p > 0 or self.solarize_p > 0


_MOCO_BASIC = ViewRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0,
                         gray_p=0.2, gray_before_jitter=True)
_MOCO_PLUS = ViewRecipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                        gray_p=0.2, blur_p=0.5)
_BYOL_1 = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                     gray_p=0.2, blur_p=1.0, solarize_p=0.0)
_BYOL_2 = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                     gray_p=0.2, blur_p=0.1, solarize_p=0.2)
_BYOL_SYM = ViewRecipe(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                       gray_p=0.2, blur_p=0.5, solarize_p=0.2)
_SUPERVISED = ViewRecipe(crop_scale=(0.08, 1.0))

RECIPES: dict[str, tuple[ViewRecipe, ...]] = {
    "moco_basic": (_MOCO_BASIC, _MOCO_BASIC),
    "moco_plus": (_MOCO_PLUS, _MOCO_PLUS),
    "byol_asym": (_BYOL_1, _BYOL_2),
    "byol_sym": (_BYOL_SYM, _BYOL_SYM),
    "supervised": (_SUPERVISED,),
}


def get_recipe(name: str) -> tuple[ViewRecipe, ...]:
    """The views of recipe ``name``; a clear error for an unknown name."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown augmentation recipe {name!r}; choose one of {sorted(RECIPES)}") from None


def eval_resize_size(image_size: int) -> int:
    """Short-side size before the centre crop (256 for 224, scaled for other sizes)."""
    return int(round(image_size * EVAL_RESIZE_FRACTION))
