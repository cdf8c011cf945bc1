"""What the ``nvjpeg`` and ``dali`` backends share: the sample list, the batch plan, bad samples.

Why one module: both backends hand compressed images to a GPU decoder, and both promise
the same things about *which* images land in *which* batch:

* the sample list and labels of an ImageNet-style folder (torchvision ``ImageFolder``
  order) or of a packed ffcv file (``<root>/<split>.beton`` plus its ``classes.json``);
* sharding and mid-epoch resume through :class:`~fastairl.data.sampler.ResumableDistributedSampler`,
  so a run resumed with ``set_epoch(epoch, start_batch)`` sees the very batches it
  stopped at, whatever the backend;
* crop windows and flips drawn from a generator seeded by (seed, epoch, rank, batch
  number) only, so a resumed run replays them and the two backends draw the same
  windows for the same batch (the tests compare them);
* an image nothing can decode is replaced by the next decodable sample (deterministic,
  so every rank agrees), logged once, counted, and too many of them stop the run.

Written once here, those promises cannot drift apart between the backends. How the bytes
are read and decoded stays in each backend: the source classes below hold the sample
list only, and each backend subclasses them with its own ``read`` / ``fetch``.
"""
from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from .base import LoaderSpec
from .beton import BetonReader, class_names
from .crop import batch_crops
from .recipes import get_recipe
from .sampler import ResumableDistributedSampler

__all__ = ["FolderSamples", "BetonSamples", "JpegLoaderBase"]

T = TypeVar("T")


class FolderSamples:
    """An ImageNet-style split folder, in torchvision ImageFolder's sample order and labels."""

    kind = "folder"

    def __init__(self, split_dir: Path) -> None:
        from .folder import image_folder  # one-line errors for missing/empty folders
        ds = image_folder(split_dir)
        self.where = str(split_dir)
        self.paths = [p for p, _ in ds.samples]
        self.labels = np.asarray([t for _, t in ds.samples], dtype=np.int64)
        self.classes = list(ds.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, i: int) -> str:
        """How log lines and errors name sample ``i``: its file."""
        return self.paths[i]


class BetonSamples:
    """A packed ffcv file with an int label field; class names from the ``classes.json`` beside it.

    ``owner`` ("nvjpeg loader", ...) and ``logger`` are the backend's, so its warnings
    carry the backend's name and reach the backend's logger.
    """

    kind = "beton"

    def __init__(self, path: Path, owner: str, logger: logging.Logger) -> None:
        self.reader = BetonReader(path)
        self.where = str(path)
        if self.reader.labels is None:
            raise ValueError(f"{path} has no int label field (fields: {self.reader.field_types}); "
                             f"pack it with data_prep/write_ffcv.py")
        self.labels = np.asarray(self.reader.labels, dtype=np.int64)
        self.classes = class_names(path, self.labels, owner, logger)

    def __len__(self) -> int:
        return len(self.reader)

    def describe(self, i: int) -> str:
        """How log lines and errors name sample ``i``: the file and the index."""
        return f"{self.where} sample {i}"


class JpegLoaderBase:
    """The part of a GPU-decode loader that does not depend on the decoder.

    A subclass sets ``_owner`` (the name its messages start with), ``_failure`` (the error
    raised for a damaged dataset, if not ``RuntimeError``), ``_folder_source`` /
    ``_beton_source`` (its :class:`FolderSamples` / :class:`BetonSamples` subclasses), sets
    ``spec`` and ``device``, then calls :meth:`_setup`. Warnings go to the logger of the
    subclass's module, so they keep the backend's logger name. What it gets: ``source``,
    ``classes``, ``num_classes``, ``num_samples``, ``recipe``, ``sampler``, ``prefetch``,
    ``max_bad``, ``threads``, ``bad_samples`` and the contract methods ``set_epoch``,
    ``__len__``, ``batch_indices`` and ``crop_params``. The subclass owns ``stats`` (its
    counters; ``bad_samples`` and ``replacements`` are kept here).
    """

    output = "uint8"
    flipped = True

    _owner = "jpeg loader"
    _failure: type[Exception] = RuntimeError
    _folder_source: type[FolderSamples] = FolderSamples
    _beton_source: type[BetonSamples] = BetonSamples

    spec: LoaderSpec
    stats: dict[str, int]

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)

    def _setup(self, spec: LoaderSpec, default_prefetch: int) -> dict:
        """Check the spec, open the source, build the sampler; returns a copy of ``spec.extra``."""
        if spec.batch_size <= 0:
            raise ValueError(f"batch size {spec.batch_size} must be positive")
        if spec.image_size <= 0:
            raise ValueError(f"image size {spec.image_size} must be positive")
        self.source = self._open_source(spec)
        self.classes = list(self.source.classes)
        self.num_classes = len(self.classes)
        self.num_samples = len(self.source)
        self.recipe = get_recipe(spec.recipe) if spec.train else ()
        self.sampler = ResumableDistributedSampler(self.num_samples, spec.rank, spec.world_size, spec.batch_size,
                                                   shuffle=spec.train, drop_last=spec.train, seed=spec.seed)
        if spec.train and self.sampler.per_rank == 0:
            raise ValueError(f"{self.source.where} has {self.num_samples} images: too few for a per-process batch "
                             f"of {spec.batch_size} on {spec.world_size} process(es); lower --batch-size")
        extra = dict(spec.extra or {})
        self.prefetch = int(extra.get("prefetch", default_prefetch))
        if self.prefetch < 1:
            raise ValueError(f"{self._owner}: prefetch={self.prefetch} must be at least 1")
        self.max_bad = int(extra.get("max_bad", max(16, self.num_samples // 100)))
        self.threads = max(1, int(spec.workers))
        self._epoch = 0
        self._lock = threading.Lock()
        self.bad_samples: dict[int, str] = {}
        return extra

    def _open_source(self, spec: LoaderSpec) -> FolderSamples | BetonSamples:
        """``spec.extra["source"]``: ``auto`` (the .beton if there is one, else the folder), ``beton`` or ``folder``."""
        root = Path(spec.root)
        want = (spec.extra or {}).get("source", "auto")
        packed = root / f"{spec.split}.beton"
        folder = root / spec.split
        if want not in ("auto", "beton", "folder"):
            raise ValueError(f"{self._owner}: source={want!r} is unknown; use 'auto', 'beton' or 'folder'")
        if want == "beton" or (want == "auto" and packed.is_file()):
            return self._beton_source(packed, self._owner, self._log)
        if want == "folder" or folder.is_dir():
            return self._folder_source(folder)
        raise FileNotFoundError(f"--data {root}: neither {packed} nor the folder {folder} exists; give an "
                                f"ImageNet-style folder (train/, val/) or one packed by data_prep/write_ffcv.py")

    # ------------------------------------------------------------------ contract
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s shard order; skip its first ``start_batch`` batches (resume)."""
        if start_batch < 0:
            raise ValueError(f"start_batch {start_batch} must be >= 0")
        self._epoch = int(epoch)
        self.sampler.set_epoch(self._epoch, int(start_batch))

    def __len__(self) -> int:
        n = len(self.sampler)
        b = self.spec.batch_size
        return n // b if self.spec.train else math.ceil(n / b)

    def batch_indices(self) -> list[list[int]]:
        """Dataset indices of each batch the next pass yields (current epoch, after start_batch).

        Batch ``k`` holds exactly these samples in this order, unless an undecodable
        sample was replaced; useful to audit sharding and resume.
        """
        idx = self.sampler.indices()
        b = self.spec.batch_size
        batches = [idx[k:k + b] for k in range(0, len(idx), b)]
        if self.spec.train:
            batches = [x for x in batches if len(x) == b]
        return batches

    def crop_params(self, epoch: int, batch_no: int, heights: Sequence[int] | np.ndarray,
                    widths: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per view, the crop windows ``(N, 4)`` (top, left, h, w) and flip flags ``(N,)`` of a batch.

        Drawn with torchvision's RandomResizedCrop rule (the view's scale and ratio) from a
        generator seeded by (seed, epoch, rank, batch number) only: a resumed run replays
        the same windows, and every backend built on this class (``nvjpeg``, ``dali``, on
        the GPU or the CPU) draws the same ones for the same batch.
        """
        return batch_crops(self.recipe, self.spec.seed, epoch, self.spec.rank, batch_no, heights, widths)

    # ------------------------------------------------------------------ bad samples
    def _mark_bad(self, i: int, reason: str) -> None:
        """Record sample ``i`` as undecodable (warned once per sample); stop if the dataset looks damaged."""
        with self._lock:
            if i not in self.bad_samples:
                self.bad_samples[i] = reason
                self.stats["bad_samples"] = len(self.bad_samples)
                self._log.warning("%s: cannot decode %s (%s); replacing it with another sample",
                                  self._owner, self.source.describe(i), reason)
            too_many = len(self.bad_samples) > self.max_bad
        if too_many:
            raise self._failure(f"{self._owner}: {len(self.bad_samples)} images in {self.source.where} could not be "
                                f"read or decoded (more than {self.max_bad}); the dataset looks damaged, first one: "
                                f"{self.source.describe(min(self.bad_samples))}")

    def _next_decodable(self, i: int, load: Callable[[int], tuple[T | None, str | None]]) -> tuple[int, T]:
        """The first decodable sample after ``i`` (wrapping around) and what ``load`` made of it.

        Deterministic, so every rank replaces a bad sample by the same one. ``load(j)``
        returns ``(sample, None)``, or ``(None, reason)`` when ``j`` cannot be decoded
        (``j`` is then marked bad and the search goes on).
        """
        n = self.num_samples
        j = i
        for _ in range(n):
            j = (j + 1) % n
            if j in self.bad_samples:
                continue
            got, why = load(j)
            if why is not None:
                self._mark_bad(j, why)
                continue
            with self._lock:
                self.stats["replacements"] += 1
            return j, got
        raise self._failure(f"{self._owner}: no image in {self.source.where} can be decoded")
