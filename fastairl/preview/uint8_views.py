"""Batches of a uint8 backend (``ffcv``, ``nvjpeg``, ``dali``, a third-party one) as the model sees them.

Why through :class:`~fastairl.data.augment.GPUAugment`: the trainer finishes these views
on the device, so the preview configures it as the trainer does and draws the colour ops
with ``sample_params`` before ``apply`` (the captions are the parameters that made the
pixels). Crop windows and flips are drawn inside the loader from (seed, epoch, rank,
batch); a loader with ``crop_params(epoch, batch_no, heights, widths)`` reports them,
for one without the captions say ``crop: drawn inside <backend>``.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch

from fastairl.data.augment import PARAM_KEYS, GPUAugment
from fastairl.data.recipes import ViewRecipe
from fastairl.preview.ops import empty_params
from fastairl.preview.result import Batch
from fastairl.preview.sources import SourceImages

log = logging.getLogger("fastairl.preview")


def uint8_batches(loader, recipe: Sequence[ViewRecipe], spec, start_epoch: int, images: SourceImages,
                  meta: dict, name: str) -> Iterator[tuple[int, Batch]]:
    """Batches of a uint8 backend through GPUAugment, with crop parameters where the loader reports them."""
    flipped = bool(getattr(loader, "flipped", False))
    aug = GPUAugment(recipe, out_dtype=torch.float32, channels_last=False, flip_done=flipped)
    gen = torch.Generator().manual_seed(int(spec.seed))
    has_crops = callable(getattr(loader, "crop_params", None)) and images.available
    inside = f"drawn inside {name} (not reported)"
    meta["crop_source"] = [f"{name}.crop_params" if has_crops else inside] * len(recipe)
    if flipped:
        meta["flip_source"] = [f"{name}.crop_params" if has_crops else inside] * len(recipe)
    else:
        meta["flip_source"] = ["GPUAugment.sample_params"] * len(recipe)
    meta["colour_source"] = ["GPUAugment.sample_params + apply (as the trainer)"] * len(recipe)
    if not has_crops:
        log.warning("the %s loader draws its crop windows%s itself and does not report them: captions say "
                    "'crop: drawn inside %s'", name, " and flips" if flipped else "", name)
    b = spec.batch_size
    epoch = start_epoch
    while True:
        loader.set_epoch(epoch)
        order = batch_order(loader, epoch, b)
        it = iter(loader)
        try:
            for k, (views, labels) in enumerate(it):
                n = int(labels.shape[0])
                ids = order[k] if order is not None and k < len(order) else [-1] * n
                crops = None
                if has_crops and min(ids) >= 0:
                    hw = [images.size(i) for i in ids]
                    crops = loader.crop_params(epoch, k, [h for h, _ in hw], [w for _, w in hw])
                out_views, params = [], []
                for v, rv in enumerate(recipe):
                    colour = aug.sample_params(v, n, generator=gen)
                    x = aug.apply(views[v], colour, rv).detach().to("cpu", torch.float32).contiguous()
                    p = empty_params(n)
                    for key in PARAM_KEYS:
                        if key != "flip":
                            p[key] = colour[key].detach().cpu().to(p[key].dtype)
                    if not flipped:
                        p["flip"] = colour["flip"].detach().cpu().bool()
                    if crops is not None:
                        boxes, flips = crops[v]
                        bx = torch.as_tensor(np.asarray(boxes), dtype=torch.int64)
                        hw_t = torch.tensor(hw, dtype=torch.int64)
                        p["box"], p["src_hw"] = bx, hw_t
                        p["scale"] = (bx[:, 2] * bx[:, 3]).double() / (hw_t[:, 0] * hw_t[:, 1]).double()
                        if flipped:
                            p["flip"] = torch.as_tensor(np.asarray(flips), dtype=torch.bool)
                    out_views.append(x)
                    params.append(p)
                srcs = [(lambda i=i: images.image(i) if i >= 0 and images.available else None) for i in ids]
                yield epoch, Batch(out_views, params, labels.detach().cpu(),
                                   torch.as_tensor(ids, dtype=torch.int64), srcs)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        replaced = getattr(loader, "stats", {}).get("replacements", 0) if isinstance(
            getattr(loader, "stats", None), dict) else 0
        if replaced:
            log.warning("the %s loader replaced %d undecodable image(s); their rows show the replacement's "
                        "pixels under the original index", name, replaced)
        epoch += 1


def batch_order(loader, epoch: int, batch_size: int) -> list[list[int]] | None:
    """Dataset indices of each batch of the epoch just set, from whichever hook the loader has."""
    if callable(getattr(loader, "batch_indices", None)):
        return [list(map(int, x)) for x in loader.batch_indices()]
    if callable(getattr(loader, "epoch_indices", None)):
        flat = [int(i) for i in np.asarray(loader.epoch_indices(epoch)).reshape(-1)]
        return [flat[k:k + batch_size] for k in range(0, len(flat) - batch_size + 1, batch_size)]
    return None
