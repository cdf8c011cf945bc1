"""The FFCV backend: read ``.beton`` files, decode each JPEG once, cut every view from it.

Why a custom decoder: ffcv's stock ``RandomResizedCropRGBImageDecoder`` decodes a JPEG
for *one* crop, and ffcv lets one field feed only one pipeline, so a two-view recipe
would either decode every image twice or need two loaders. Decoding dominates the CPU
cost, so :class:`MultiViewCropDecoder` decodes once and emits every view of the recipe
from that decode, as one ``(V, S, S, 3)`` uint8 array per sample that
:class:`FFCVLoader` splits into the views of the batch contract
(:mod:`fastairl.data.base`).

What happens per batch and per sample:

1. the loader's thread draws one crop window and one flip per view and sample for the
   whole batch (:meth:`FFCVLoader.crop_params`, vectorised numpy, well under a
   millisecond per batch) with torchvision's ``RandomResizedCrop.get_params`` rule
   (area fraction ~ U(scale), log-uniform aspect ratio, 10 tries, centred fallback;
   :func:`fastairl.data.crop.sample_crops`) from a generator seeded by (seed, epoch,
   rank, batch number), and writes them into the decoder's parameter buffer; inside
   ffcv's numba-compiled, thread-parallel pipeline, per sample:
2. one JPEG decode through libjpeg-turbo (ffcv's ``imdecode``). When *every* window is
   at least 2x (4x, 8x) the output size in both directions, the JPEG is decoded at
   1/2 (1/4, 1/8) scale in the DCT domain, which is cheaper and is itself a proper
   low-pass downscale; otherwise at full size. (ffcv 1.0.2's region decode is not
   used: it costs more than a full decode for the windows a recipe draws; the
   measurement is in ``docs/data-backends.md``.)
3. each window resized to ``S x S`` with the same filter as torchvision's
   ``resized_crop(..., antialias=True)`` (PIL's separable triangle filter whose support
   widens with the downscale factor), flipped horizontally if drawn so, at no extra
   cost. The kernel (:func:`resize_box`) works in fixed point and agrees with
   torchvision's float result to one level.

Validation uses the same operation in centre mode: the window that torchvision's
``Resize(round(S*256/224))`` + ``CenterCrop(S)`` would keep, resized with the same
filter (identical to resizing the whole image and cropping).

Because the windows depend on (seed, epoch, rank, batch number) only, a run resumed in
the middle of an epoch gets the very crops it would have got, two runs with the same
seed get the same views, the preview tool can report every window, and the nvjpeg and
dali backends (same rule, same seeding) draw the same windows for the same batch of
image sizes. (Drawing inside the numba threads would give each thread its own
unseedable stream.) The sample *order* comes from ffcv's traversal orders, seeded with
``spec.seed`` and the epoch: a full random permutation by default (see :class:`FFCVLoader`).
It is the one backend that does not use :class:`~fastairl.data.sampler.ResumableDistributedSampler`:
moving it would change the batches of every ffcv run already made (and their resume), and
ffcv's page-aware ``quasi_random`` order has no counterpart there (``docs/data-backends.md``).

Where the pieces live (split for issue #15, every name still importable from here):
the numba crop+resize kernels and the eval window in :mod:`fastairl.data.ffcv_kernels`,
the ffcv operation :class:`MultiViewCropDecoder` and :func:`decode_jpeg` in
:mod:`fastairl.data.ffcv_decoder`, the ``.beton`` checks in
:mod:`fastairl.data.ffcv_files`; the class names follow the rule of every packed-file
backend (:func:`fastairl.data.beton.class_names`); this module keeps the loader.
"""
from __future__ import annotations

import logging
import os
import queue
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from fastairl.data.base import LoaderSpec
from fastairl.data.beton import BetonError, class_names
from fastairl.data.crop import batch_crops
from fastairl.data.ffcv_decoder import (_BAD_WINDOW, _FFCV_IMPORT_ERROR, PARAM_COLUMNS,  # noqa: F401 (re-exported)
                                        MultiViewCropDecoder, decode_jpeg, require_ffcv)
from fastairl.data.ffcv_files import (_REWRITE_HINT, IMAGE_FIELD, LABEL_FIELD,  # noqa: F401 (re-exported)
                                      _open_checked, check_beton, has_ffcv_files)
from fastairl.data.ffcv_kernels import eval_box, resize_box, resized_crop  # noqa: F401 (re-exported)
from fastairl.data.recipes import get_recipe

log = logging.getLogger(__name__)

# ffcv's compiler sets torch's thread count to 1 when imported (and to the worker count
# when a loader is built); the training process's own torch threads must not change.
_TORCH_THREADS = torch.get_num_threads()
try:  # ffcv is a compiled extension with system library dependencies; fail late, clearly.
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader as _FFCVBaseLoader
    from ffcv.loader import OrderOption
    from ffcv.loader.epoch_iterator import EpochIterator
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import ToDevice, ToTensor
except (ImportError, OSError):  # the reason is kept in ffcv_decoder._FFCV_IMPORT_ERROR (require_ffcv)
    EpochIterator = object  # type: ignore[assignment,misc]
torch.set_num_threads(_TORCH_THREADS)

__all__ = [
    "BetonError", "FFCVLoader", "PARAM_COLUMNS", "MultiViewCropDecoder", "build_ffcv_loader",
    "check_beton", "decode_jpeg", "eval_box", "has_ffcv_files",
    "require_ffcv", "resize_box", "resized_crop",
]

# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------

class _CheckedEpochIterator(EpochIterator):
    """ffcv's epoch thread, plus two things.

    An exception in the thread reaches the consumer (ffcv's own thread dies silently on
    an error, e.g. a numba compile error, and leaves the training loop blocked on its
    queue forever). And before each batch is decoded, ``planner(b_ix, batch_indices)``
    (if given) fills the random-view decoder's parameter buffer for that batch.
    """

    error: BaseException | None = None

    def __init__(self, loader, order, planner=None) -> None:
        # Set before ffcv's __init__, which starts the thread.
        self._planner = planner
        self._params = None
        super().__init__(loader, order)

    def _param_buffer(self) -> np.ndarray:
        """The (slots, batch, V, 5) int64 buffer :class:`MultiViewCropDecoder` reads windows from."""
        found = [bufs[1] for bufs in self.memory_allocations["operation"].values()
                 if isinstance(bufs, tuple) and len(bufs) == 2 and isinstance(bufs[1], np.ndarray)
                 and bufs[1].dtype == np.int64 and bufs[1].ndim == 4 and bufs[1].shape[-1] == len(PARAM_COLUMNS)]
        if len(found) != 1:
            raise RuntimeError(f"ffcv pipeline has {len(found)} MultiViewCropDecoder parameter buffers, expected 1")
        return found[0]

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        if self._planner is not None:
            if self._params is None:
                self._params = self._param_buffer()
            rows = self._params[batch_slot][:len(batch_indices)]
            rows[...] = self._planner(b_ix, batch_indices)
            result = super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)
            bad = np.flatnonzero(rows[:, 0, 4] == _BAD_WINDOW)
            if bad.size:
                raise RuntimeError(f"crop windows {rows[bad[0]].tolist()} of sample {int(batch_indices[bad[0]])} do "
                                   f"not lie inside the image")
            return result
        return super().run_pipeline(b_ix, batch_indices, batch_slot, cuda_event)

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer thread
            self.error = e
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    pass


class FFCVLoader:
    """One rank's loader over ``<spec.root>/<spec.split>.beton`` (see fastairl.data.base).

    Batches are ``([view_0, ..., view_{V-1}], labels)``: each view a fresh uint8 tensor
    ``(B, 3, S, S)`` in **channels_last** memory format on ``spec.device`` (what the
    trainer feeds the network), labels int64 ``(B,)``. Views are already flipped per
    the recipe (``flipped = True``; eval views are never flipped). Crop windows and
    flips are a function of (seed, epoch, rank, batch number), reported by
    :meth:`crop_params` for the samples :meth:`batch_indices` lists. On CUDA the batch is
    copied from ffcv's pinned buffers with ``non_blocking=True`` on ffcv's own streams.

    Training (``spec.train``): last partial batch dropped; by default ffcv's ``RANDOM``
    order, a full permutation per epoch seeded by ``spec.seed`` and the epoch (with
    ``world_size > 1`` ffcv's distributed variant: a torch ``DistributedSampler`` with
    that seed), as the reference's seeded DistributedSampler. ``order="quasi_random"``
    (one process only) is ffcv's page-aware shuffle: it keeps only a few file pages in
    memory at a time, so it suits a file larger than RAM, but it mixes only those pages,
    and on a class-sorted file (ImageFolder order) its batches hold far fewer classes
    (measured on ImageNet: ~185 distinct of 256 instead of ~226), which changes BN
    batches, MoCo negatives and the supervised numbers; use it only with a file written
    shuffled (``data_prep/write_ffcv.py`` does by default). Validation: one centre view, file order, nothing dropped (with
    several ranks, ffcv's sampler pads the last shard with repeats, like torch's).

    ``spec.extra`` keys: ``os_cache`` (default True: memory-map the file and let the OS
    cache it; False reads it into this process), ``batches_ahead`` (default 3),
    ``order`` ("random", the default, or "quasi_random", one process only), ``dct_scaling``
    (default True). ffcv sets torch's CPU thread count to ``spec.workers`` while it runs.
    """

    output = "uint8"
    flipped = True

    def __init__(self, spec: LoaderSpec) -> None:
        require_ffcv()
        self.spec = spec
        extra = dict(spec.extra or {})
        root = Path(spec.root)
        if spec.split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {spec.split!r}")
        if spec.batch_size < 1 or spec.image_size < 1:
            raise ValueError(f"batch_size and image_size must be >= 1, got {spec.batch_size} and {spec.image_size}")
        if spec.world_size < 1 or not 0 <= spec.rank < spec.world_size:
            raise ValueError(f"rank {spec.rank} is not in [0, world_size={spec.world_size})")
        self.path = root / f"{spec.split}.beton"
        reader = _open_checked(self.path)
        self.num_samples = len(reader)
        # Image sizes, for drawing crop windows before a batch is decoded.
        self._heights = reader.heights.astype(np.int32)
        self._widths = reader.widths.astype(np.int32)
        self.classes = class_names(self.path, reader.labels, "ffcv loader", log)
        self.num_classes = len(self.classes)
        del reader

        self.recipe = get_recipe(spec.recipe) if spec.train else ()
        decoder = MultiViewCropDecoder(spec.image_size, len(self.recipe) if spec.train else None,
                                       dct_scaling=bool(extra.get("dct_scaling", True)))
        self.num_views = decoder.num_views

        distributed = spec.world_size > 1
        name = str(extra.get("order", "random")).lower()
        orders = {"quasi_random": OrderOption.QUASI_RANDOM, "random": OrderOption.RANDOM}
        if name not in orders:
            raise ValueError(f"sample order {name!r}; choose one of {sorted(orders)}")
        if distributed:
            self._check_process_group()
            if spec.train and name == "quasi_random":
                raise ValueError(f"sample order quasi_random works with one process only (ffcv has no "
                                 f"distributed quasi-random order); {spec.world_size} processes need "
                                 f"sample_order=random")
            order = OrderOption.RANDOM if spec.train else OrderOption.SEQUENTIAL
        else:
            order = orders[name] if spec.train else OrderOption.SEQUENTIAL

        self.device = torch.device(spec.device)
        tail = [ToDevice(self.device, non_blocking=True)] if self.device.type == "cuda" else []
        pipelines = {IMAGE_FIELD: [decoder, ToTensor(), *tail], LABEL_FIELD: [IntDecoder(), ToTensor(), *tail]}
        workers = max(1, int(spec.workers))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if workers > cpus:  # numba's thread pool refuses more threads than CPUs
            log.warning("ffcv: %d workers requested but this machine has %d CPUs; using %d", workers, cpus, cpus)
            workers = cpus
        threads = torch.get_num_threads()
        try:
            self._loader = _FFCVBaseLoader(
                str(self.path), batch_size=spec.batch_size, num_workers=workers,
                os_cache=bool(extra.get("os_cache", True)), order=order, distributed=distributed,
                seed=int(spec.seed), pipelines=pipelines, drop_last=bool(spec.train),
                batches_ahead=int(extra.get("batches_ahead", 3)))
        except (ValueError, AssertionError, OSError, IndexError, KeyError) as e:
            raise BetonError(f"ffcv cannot open {self.path} ({type(e).__name__}: {e}); {_REWRITE_HINT}") from e
        finally:
            torch.set_num_threads(threads)
        pages = getattr(self._loader.traversal_order, "page_to_samples_array", None)
        self._pristine_pages = pages.copy() if pages is not None else None
        self._full_len = len(self._loader)
        if self._full_len == 0:
            raise ValueError(f"{self.path} has {self.num_samples} images: too few for a per-process batch of "
                             f"{spec.batch_size} on {spec.world_size} process(es); lower the batch size")
        self._epoch = 0
        self._start_batch = 0

    def _check_process_group(self) -> None:
        """ffcv's distributed order asks torch.distributed for rank and world size."""
        spec = self.spec
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"world_size={spec.world_size} needs torch.distributed initialised before the ffcv "
                               "loader is built (ffcv's distributed order reads rank and world size from it); "
                               "call init_process_group first")
        if dist.get_world_size() != spec.world_size or dist.get_rank() != spec.rank:
            raise ValueError(f"LoaderSpec says rank {spec.rank} of {spec.world_size} but torch.distributed says "
                             f"rank {dist.get_rank()} of {dist.get_world_size()}")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s order; skip its first ``start_batch`` batches (exact resume)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch} and {start_batch}")
        self._epoch = int(epoch)
        self._start_batch = int(start_batch)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices this rank reads in ``epoch`` (default: the epoch set), in order.

        For the epoch set by :meth:`set_epoch`, the ``start_batch`` batches it skips are
        left out.

        A pure function of (seed, epoch, rank): ffcv's QUASI_RANDOM order shuffles its
        page table in place, so each call would otherwise depend on the calls before it
        (and a resumed run would not see the order it trained on); the pristine table
        is restored before every draw.
        """
        e = self._epoch if epoch is None else int(epoch)
        order_obj = self._loader.traversal_order
        if self._pristine_pages is not None:
            np.copyto(order_obj.page_to_samples_array, self._pristine_pages)
        order = np.asarray(order_obj.sample_order(e))
        bs = self.spec.batch_size
        skip = self._start_batch if e == self._epoch else 0
        return order[:self._full_len * bs][skip * bs:]

    def batch_indices(self) -> list[np.ndarray]:
        """Dataset indices of each batch the next pass yields (the epoch set, after ``start_batch``)."""
        order = self.epoch_indices()
        b = self.spec.batch_size
        return [order[k:k + b] for k in range(0, len(order), b)]

    def crop_params(self, epoch: int, batch_no: int, heights: Sequence[int] | np.ndarray,
                    widths: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per view, the crop windows ``(N, 4)`` (top, left, h, w) and flips ``(N,)`` of a batch.

        The windows the decoder cuts from batch ``batch_no`` of ``epoch`` (counted from the
        start of the epoch) for images of these sizes (as stored in the .beton):
        :func:`fastairl.data.crop.batch_crops` seeded by (seed, epoch, rank, batch number),
        the rule and seeding the nvjpeg and dali backends use too.
        """
        return batch_crops(self.recipe, self.spec.seed, epoch, self.spec.rank, batch_no, heights, widths)

    def _planner(self, epoch: int, start_batch: int):
        """What fills the decoder's parameter buffer for each batch of this pass."""
        def plan(b_ix: int, indices: np.ndarray) -> np.ndarray:
            idx = np.asarray(indices, dtype=np.int64)
            crops = self.crop_params(epoch, start_batch + b_ix, self._heights[idx], self._widths[idx])
            out = np.empty((len(idx), len(crops), len(PARAM_COLUMNS)), np.int64)
            for v, (boxes, flips) in enumerate(crops):
                out[:, v, :4] = boxes
                out[:, v, 4] = flips
            return out
        return plan

    def __len__(self) -> int:
        return max(self._full_len - self._start_batch, 0)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        loader = self._loader
        selected = self.epoch_indices()
        if len(selected) == 0:
            return
        Compiler.set_num_threads(loader.num_workers)
        if loader.code is None:
            loader.generate_code()
        planner = self._planner(self._epoch, self._start_batch) if self.spec.train else None
        it = _CheckedEpochIterator(loader, selected, planner)
        try:
            for images, labels in it:
                views = [images[:, v].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
                         for v in range(self.num_views)]
                yield views, labels.reshape(-1).to(torch.int64, copy=True)
        finally:
            it.close()
        if it.error is not None:
            raise RuntimeError(f"ffcv's loading thread failed while reading {self.path}: "
                               f"{type(it.error).__name__}: {it.error}") from it.error


def build_ffcv_loader(spec: LoaderSpec) -> FFCVLoader:
    """The ffcv backend for :mod:`fastairl.data`'s loader registry."""
    return FFCVLoader(spec)
