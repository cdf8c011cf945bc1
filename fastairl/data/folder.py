"""The reference-style loader: ImageFolder + PIL + torchvision transforms in DataLoader
workers. It is the working fallback and the baseline every benchmark compares against,
so it follows the reference's way of doing things on purpose (CPU augmentation, fp32).
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms as T

from . import ops as op_table
from .base import LoaderSpec
from .ops import PILGaussianBlur, PILSolarize  # noqa: F401 (re-exported: their old home)
from .recipes import MEAN, STD, ViewRecipe, eval_resize_size, get_recipe
from .sampler import ResumableDistributedSampler

log = logging.getLogger(__name__)
_capped_logged = False


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as torch's DataLoader counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def cap_workers(requested: int) -> int:
    """More worker processes than CPUs only adds switching (and torch's "might freeze"
    warning): cap them at the CPU count, saying so once per process."""
    global _capped_logged
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    if not _capped_logged:
        log.info("folder loader: %d workers requested, %d CPUs usable: using %d worker processes",
                 requested, cpus, cpus)
        _capped_logged = True
    return cpus


def view_transform(v: ViewRecipe, size: int) -> T.Compose:
    """torchvision transforms of one view, in the reference's order: the crop, then the
    transform of each op of :data:`fastairl.data.ops.OPS` in the order the ops act (the
    order the batched path applies them in too), then ToTensor and Normalize."""
    ops: list = [T.RandomResizedCrop(size, scale=v.crop_scale, ratio=v.crop_ratio)]
    ops += [t for t in (op.pil(v) for op in op_table.in_order(op_table.OPS, v)) if t is not None]
    ops += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(ops)


def eval_transform(size: int) -> T.Compose:
    return T.Compose([T.Resize(eval_resize_size(size)), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])


class MultiView:
    """Apply one transform per view to the same decoded image."""

    def __init__(self, transforms: list):
        self.transforms = transforms

    def __call__(self, img):
        return [t(img) for t in self.transforms]


def image_folder(split_dir: Path, transform=None) -> datasets.ImageFolder:
    """ImageFolder with one-line errors for the mistakes users make."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"data folder {split_dir} does not exist (expected an ImageNet-style "
                                f"folder with train/ and val/ class folders)")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>.JPEG)")
    for c in classes:
        cdir = split_dir / c
        if not any(p.suffix.lower() in datasets.folder.IMG_EXTENSIONS for p in cdir.rglob("*") if p.is_file()):
            raise FileNotFoundError(f"class folder {cdir} has no images; remove it or add images")
    return datasets.ImageFolder(str(split_dir), transform=transform)


class BadDataError(RuntimeError):
    """Too many unreadable images: the data needs fixing before training on."""


MAX_TRIES = 64  # consecutive unreadable images a sample may skip before the folder counts as broken


def _sample_seed(seed: int, epoch: int, index: int, attempt: int) -> int:
    # splitmix-style mixing: distinct, well-spread seeds for every (seed, epoch, index, try)
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + attempt) % 2**64
    x ^= x >> 31
    return x % 2**63


class SeededSamples(Dataset):
    """ImageFolder samples whose augmentation randomness depends on (seed, epoch, index)
    only, not on which worker draws them or in which order: a run resumed mid-epoch (or
    with another worker count) sees exactly the same views. An unreadable image is
    replaced by the next readable one and reported (its index) with the sample."""

    def __init__(self, base: datasets.ImageFolder, seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        if torch.utils.data.get_worker_info() is not None:
            return self._get(index)
        # in the main process (workers=0): leave the caller's RNG streams untouched
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            try:
                return self._get(index)
            finally:
                random.setstate(state)

    def _get(self, index: int):
        """``(views, label, bad, first, failed)``: ``bad`` unreadable images were skipped,
        ``first``..``first + bad - 1`` (mod n), before a readable one. When every try fails
        the sample comes back ``failed`` with blank views of the right shape, and the main
        process raises: an exception raised here would reach the user from a DataLoader
        worker wrapped in torch's traceback, not as the one line ``workers=0`` gives."""
        n = len(self.base)
        tries = min(MAX_TRIES, n)
        for attempt in range(tries):
            j = (index + attempt) % n
            path, label = self.base.samples[j]
            s = _sample_seed(self.seed, self.epoch, j, attempt)
            random.seed(s)
            torch.default_generator.manual_seed(s)  # CPU transforms only; cheaper than torch.manual_seed
            try:
                img = self.base.loader(path)
                views = self.base.transform(img) if self.base.transform is not None else img
                return views, label, attempt, index, False
            except (OSError, ValueError, SyntaxError):  # PIL: unreadable, truncated, foreign file
                continue
        blank = Image.new("RGB", (64, 64))
        views = self.base.transform(blank) if self.base.transform is not None else blank
        return views, -1, tries, index, True


class FolderLoader:
    output = "normalized"
    flipped = True

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        split_dir = Path(spec.root) / spec.split
        if spec.train:
            tf = MultiView([view_transform(v, spec.image_size) for v in get_recipe(spec.recipe)])
        else:
            tf = MultiView([eval_transform(spec.image_size)])
        self.image_folder = image_folder(split_dir, tf)
        self.dataset = SeededSamples(self.image_folder, spec.seed * 7919 + spec.rank)
        self.classes = list(self.image_folder.classes)
        self.num_classes = len(self.classes)
        self.sampler = ResumableDistributedSampler(len(self.dataset), spec.rank, spec.world_size, spec.batch_size,
                                                   shuffle=spec.train, drop_last=spec.train, seed=spec.seed)
        if spec.train and self.sampler.per_rank == 0:
            raise ValueError(f"{split_dir} has {len(self.dataset)} images: too few for a per-process batch "
                             f"of {spec.batch_size} on {spec.world_size} process(es); lower --batch-size")
        self.device = torch.device(spec.device)
        self._epoch = 0
        self.max_bad_share = float((spec.extra or {}).get("max_bad_share", 0.01))
        self.bad_indices: set[int] = set()
        self._make_loader()

    def _make_loader(self):
        spec = self.spec
        from ..runtime.stop_signals import worker_ignores_sigint
        workers = cap_workers(spec.workers)
        self.loader = DataLoader(
            self.dataset, batch_size=spec.batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=spec.train,
            persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=worker_ignores_sigint if workers > 0 else None,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self._epoch = epoch
        self.sampler.set_epoch(epoch, start_batch)
        self.dataset.epoch = epoch  # workers get a fresh copy of the dataset per epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        nb = self.device.type == "cuda"
        for views, labels, bad, first, failed in self.loader:
            if bool(bad.any()):
                hit = bad > 0
                self._note_bad(list(zip(first[hit].tolist(), bad[hit].tolist())), bool(failed.any()))
            yield [v.to(self.device, non_blocking=nb) for v in views], labels.to(self.device, non_blocking=nb)

    def _note_bad(self, runs: list[tuple[int, int]], failed: bool = False) -> None:
        """Record the skipped images (``runs``: first index, count) and stop the run, naming
        them, once they are more than ``max_bad_share`` of the split or a sample found no
        readable image at all. Runs in the main process, so every worker count gives the
        same line for the same data."""
        n = len(self.dataset)
        for first, count in runs:
            for k in range(count):
                j = (first + k) % n
                if j not in self.bad_indices:
                    self.bad_indices.add(j)
                    log.warning("unreadable image #%d skipped and replaced: %s", j, self.image_folder.samples[j][0])
        if failed or len(self.bad_indices) > self.max_bad_share * n:
            raise BadDataError(self.bad_data_message(failed))

    def bad_data_message(self, failed: bool = False) -> str:
        n, k = len(self.dataset), len(self.bad_indices)
        paths = [self.image_folder.samples[j][0] for j in sorted(self.bad_indices)]
        names = ", ".join(paths[:3]) + (f" and {k - 3} more (listed above)" if k > 3 else "")
        where = Path(self.spec.root) / self.spec.split
        if failed:
            why = f"{min(MAX_TRIES, n)} in a row could not be read, the folder looks damaged"
        else:
            why = f"more than --set max_bad_share={self.max_bad_share:g}"
        return (f"{k} unreadable images in {where} ({k / n:.2%} of {n}; {why}): {names}; fix or remove them"
                + ("" if failed else ", or raise --set max_bad_share=..."))
