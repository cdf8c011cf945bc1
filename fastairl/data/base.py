"""The batch contract every loader backend honours.

A loader is an iterable over batches for one rank. Each batch is ``(views, labels)``:

* ``views``: a list with one tensor per view of the recipe, all on the training device.
  If ``loader.output == "uint8"`` each is a ``uint8`` tensor of shape ``(B, 3, H, W)``
  holding the decoded, cropped (and, if ``loader.flipped``, flipped) RGB view; the
  trainer then runs :class:`fastairl.data.augment.GPUAugment` on it. If
  ``loader.output == "normalized"`` (the reference-style ``folder`` path, which
  augments on the CPU with PIL) each is already a normalised float tensor.
* ``labels``: ``int64`` tensor ``(B,)`` on the training device.

``len(loader)`` is the number of batches per epoch on this rank (the last partial batch is
dropped for training), and ``loader.set_epoch(e, start_batch)`` must be called before
iterating epoch ``e`` so that every rank draws a new, disjoint shard order; ``start_batch``
> 0 (a resume inside the epoch) skips that many batches without reading them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass
class LoaderSpec:
    """What the trainer asks of a backend (one rank's view of the job)."""

    root: str                 # dataset folder (ImageNet-style folder, or folder holding .beton files)
    split: str                # "train" or "val"
    recipe: str               # name in fastairl.data.recipes.RECIPES; "eval" for val transforms
    image_size: int
    batch_size: int           # per rank
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    train: bool = True        # shuffle + drop_last when True; ordered, keep last batch when False
    extra: dict | None = None # backend-specific options (e.g. ffcv os_cache)


class Loader(Protocol):
    output: str               # "uint8" or "normalized"
    flipped: bool             # uint8 views already horizontally flipped per the recipe's flip_p
    num_classes: int
    classes: list[str]

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...
