"""What a preview produces and how it is kept: options, result, the dump file, pixel measures.

The dump (``torch.save``, loadable with ``weights_only=True``) holds ``views`` (one
``(N, 3, S, S)`` float32 tensor per view, normalised, exactly the model's input),
``params`` (one dict per view, see :data:`~fastairl.preview.ops.PARAM_DOC`), ``labels``,
``indices`` (dataset indices), ``epochs`` (the epoch each pair came from), ``measures``
(per-view brightness and saturation) and ``meta`` (the settings, the recipe, where each
parameter came from).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fastairl.runtime.atomic_io import atomic_write
from fastairl.data.augment import to_grayscale
from fastairl.data.recipes import MEAN, STD

#: Identifies the dump layout; bumped if the layout changes.
DUMP_FORMAT = "fastairl.preview/1"

_MEAN = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)


class PreviewError(Exception):
    """A problem the user can fix (a flag, a path, a dataset too small); one line, exit code 2."""


@dataclass
class PreviewOptions:
    """What to preview. ``None`` fields take the experiment's value (as the trainer would)."""

    exp: str | None = None
    recipe: str | None = None
    data: str = "demo"
    loader: str | None = None
    pairs: int = 16
    batch_size: int = 32
    workers: int | None = None
    seed: int | None = None
    epoch: int = 0
    image_size: int | None = None
    device: str = "auto"
    ckpt: str | None = None     # a fastairl checkpoint: its stored config stands in for --exp
    keep_views: bool = True     # keep every view (for --dump); False keeps only the first `rows`
    rows: int = 16              # pairs whose views and source images are kept for the grid


@dataclass
class PreviewResult:
    """The produced pairs: views as the trainer's model receives them, and what made them."""

    views: list[torch.Tensor]                 # per view (N or rows, 3, S, S) float32, normalised, CPU
    params: list[dict[str, torch.Tensor]]     # per view, keys of PARAM_DOC, N rows
    measures: list[dict[str, torch.Tensor]]   # per view: brightness, saturation (N,)
    labels: torch.Tensor                      # (N,) int64
    indices: torch.Tensor                     # (N,) int64 dataset indices (-1 where not reported)
    epochs: torch.Tensor                      # (N,) int64
    sources: list[np.ndarray | None]          # first `rows` source images, (H, W, 3) uint8
    meta: dict = field(default_factory=dict)

    @property
    def num_pairs(self) -> int:
        return int(self.labels.shape[0])

    def as_dump(self) -> dict:
        """The dump layout (plain containers of tensors, loadable with ``weights_only=True``)."""
        return {"format": DUMP_FORMAT, "views": self.views, "params": self.params, "measures": self.measures,
                "labels": self.labels, "indices": self.indices, "epochs": self.epochs, "meta": self.meta}


@dataclass
class Batch:
    """One loader batch as the preview keeps it, whichever backend made it."""

    views: list[torch.Tensor]            # normalised float, CPU
    params: list[dict[str, torch.Tensor]]
    labels: torch.Tensor
    indices: torch.Tensor
    sources: list[Callable[[], np.ndarray | None]]  # lazy source images, one per pair


def denormalize(views: torch.Tensor) -> torch.Tensor:
    """Normalised ``(N, 3, H, W)`` views back to ``[0, 1]`` RGB (clamped), float32 on the CPU."""
    x = views.detach().to("cpu", torch.float32)
    return (x * _STD + _MEAN).clamp_(0.0, 1.0)


def to_uint8_hwc(x01: torch.Tensor) -> np.ndarray:
    """One ``(3, H, W)`` image in ``[0, 1]`` -> ``(H, W, 3)`` uint8 for PIL."""
    return (x01 * 255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def measures(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view brightness (mean luma) and saturation (mean HSV saturation), on ``[0, 1]`` RGB.

    Computed after denormalisation, so they read like the image a person sees, and the
    same way for every loader.
    """
    x = denormalize(views)
    luma = to_grayscale(x).mean(dim=(1, 2, 3))
    mx = x.amax(dim=1)
    mn = x.amin(dim=1)
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-12), torch.zeros_like(mx)).mean(dim=(1, 2))
    return {"brightness": luma, "saturation": sat}


def cat_params(parts: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


def save_dump(res: PreviewResult, path: str | os.PathLike) -> Path:
    """``torch.save`` the dump layout (see the module docstring) to ``path``, atomically."""
    if not res.views or res.views[0].shape[0] != res.num_pairs:
        raise ValueError("this result kept only the grid's rows; collect with keep_views=True to dump it")
    path = Path(path)
    atomic_write(path, lambda f: torch.save(res.as_dump(), f))  # the mode of training outputs
    return path


def load_dump(path: str | os.PathLike) -> dict:
    """Reload a dump (``weights_only``: a dump holds tensors and plain containers only)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != DUMP_FORMAT:
        raise ValueError(f"{path} is not a fastairl.preview dump ({DUMP_FORMAT})")
    return data
