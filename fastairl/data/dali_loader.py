"""The ``dali`` backend: NVIDIA DALI decodes every image once (nvJPEG on the GPU) and cuts the views.

Why it exists: on a GPU node the CPU cores, not the GPUs, cap the reference's data path;
16 cores cannot decode JPEGs for 8 H100s. DALI runs the decode on the GPU (``mixed``
operators: nvJPEG, and the hardware JPEG decoder of A100/H100-class GPUs where present),
with its own C++ thread pool for the host-side stages, so Python and the GIL stay out of
the per-pixel work.

What one batch goes through
---------------------------
1. **Compressed bytes in, through an external source.** The sample order is the one of
   :class:`~fastairl.data.sampler.ResumableDistributedSampler` (a permutation seeded by
   ``seed + epoch``, a strided slice per rank, the partial last batch dropped for
   training), so every backend shards the same way and a run resumed with
   ``set_epoch(epoch, start_batch)`` continues with the very batches it stopped at.

   * **Packed file** (``<root>/<split>.beton``, written by ``data_prep/write_ffcv.py``):
     each JPEG is a read-only view of the file's memory map
     (:class:`~fastairl.data.beton.BetonReader`), fed with ``no_copy=True``: no unpacking,
     no copy to disk, and not even a copy in Python; DALI's decoder threads read the
     bytes straight from the page cache. Raw-pixel samples (ffcv's ``raw`` write mode)
     are wrapped in a 15-byte PPM header, which DALI decodes losslessly.
   * **ImageNet-style folder** (``<root>/<split>/<class>/<image>``): the sample list and
     labels of torchvision's ``ImageFolder``; a thread pool reads the files of the next
     batches ahead of the pipeline.

   Why not ``fn.readers.file`` for the folder: its sharding, shuffling and drop-last
   epoch handling cannot honour the sampler rule above, and the crop windows need each
   image's size before the decode (:mod:`fastairl.data.dali_sources` says more).

   One batched external-source callback per batch, in the training process: DALI's
   ``parallel=True`` worker processes only add a shared-memory copy and an inter-process
   hand-off to work of a few microseconds per sample (a map view, or a file read in a
   thread that releases the GIL), and measured slower (``docs/data-backends.md``).

2. **Decode once**: ``fn.decoders.image`` (``mixed`` on a GPU, ``cpu`` in CPU mode), RGB,
   EXIF orientation ignored like PIL/ImageFolder. Formats DALI cannot read (GIF, say)
   are decoded by PIL and fed as PPM; images nothing can decode are replaced by the
   next decodable sample, logged once and counted in :attr:`DaliLoader.stats`.
3. **One random-resized crop per view, from the same decoded image**: the windows are
   drawn in Python with torchvision's ``RandomResizedCrop`` rule
   (:func:`fastairl.data.crop.sample_crops`; the view's scale/ratio, log-uniform aspect
   ratio, 10 tries, centred fallback) from the image sizes (the .beton metadata, or the
   JPEG frame header of a folder file), seeded by (seed, epoch, rank, batch number) like
   the ``nvjpeg`` backend, so both draw the same windows for the same batch. DALI's own
   ``fn.random_resized_crop`` draws from the same distribution but from DALI's
   generator, whose draws a resumed run cannot replay, so it is not used. Each window is
   cut with ``fn.slice`` and resized to ``image_size`` with ``fn.resize`` (linear,
   antialiased: the filter of torchvision's ``resized_crop(..., antialias=True)``), then
   flipped with ``fn.flip`` per the view's ``flip_p``. DALI clamps the filter at the
   window edge where torchvision renormalises it, so the outermost pixel ring differs by
   a few levels (the measured agreement is in ``docs/data-backends.md``).
4. **Validation**: resize the short side to ``eval_resize_size(image_size)`` (the long
   side truncated as torchvision does), centre crop, never flipped.
5. The uint8 views ``(B, 3, S, S)`` (channels-last strides: DALI's HWC images seen
   channel-first, which is the layout the trainer works in) are handed to torch without
   a copy through DLPack, bound to the consumer's CUDA stream (as DALI's own PyTorch
   iterator does with its default executor: each tensor holds DALI's buffer until it is
   freed), and the trainer runs the same :class:`~fastairl.data.augment.GPUAugment` as
   for every other uint8 backend.

CPU mode
--------
With ``spec.device == "cpu"`` (``--device cpu``, CI) the same graph runs with
``device_id=None`` and CPU operators; every step above is exercised by the tests.

Where the pieces live (split for issue #15): the byte sources in
:mod:`fastairl.data.dali_sources`; the DALI graph, the probe, DALI's memory pools and
their knobs (``spec.extra["prefetch"]``, ``["device_pool_mb"]``, ``["pinned_pool_mb"]``,
``["hw_decoder_load"]``, DALI's environment variables) in :mod:`fastairl.data.dali_pipeline`;
this module keeps the availability checks, the eval geometry and the loader.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .base import LoaderSpec
from .crop import eval_window
from .dali_pipeline import _DALI_IMPORT_ERROR, _dali_backend, _dali_reason, _DaliPipelineMixin, _LoaderFailure
from .dali_sources import _Bad, _BetonSource, _FolderSource, _Item
from .jpeg_source import JpegLoaderBase
from .recipes import eval_resize_size
from .registry import get as _backend
from .registry import missing_message

log = logging.getLogger(__name__)

__all__ = ["DaliLoader", "DaliUnavailableError", "build_dali_loader", "dali_available", "dali_problem",
           "eval_geometry", "require_dali", "INSTALL_HINT"]

#: What to run when DALI is missing (the registry's entry, matching requirements.txt / make venv).
INSTALL_HINT = _backend("dali").install
#: Batches in flight inside DALI (override with ``spec.extra["prefetch"]``).
DEFAULT_PREFETCH = 2

_warned_cpu = False


class DaliUnavailableError(ValueError):
    """``--loader dali`` cannot run here (DALI missing, or no GPU for a CUDA run); the message says why."""


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports in this environment."""
    return _DALI_IMPORT_ERROR is None


def require_dali(device: torch.device | str = "cpu") -> None:
    """Raise :class:`DaliUnavailableError` naming exactly what is missing for ``device``."""
    device = torch.device(device)
    if _DALI_IMPORT_ERROR is not None:
        raise DaliUnavailableError(missing_message("dali", device, _DALI_IMPORT_ERROR))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DaliUnavailableError(
                f"--loader dali --device {device}: DALI is installed but torch sees no CUDA GPU; run on a GPU "
                f"node, or use --device cpu for DALI's CPU mode")
        if _dali_backend.GetCUDADeviceCount() < 1:
            raise DaliUnavailableError(
                f"--loader dali --device {device}: torch sees a GPU but DALI does not; nvidia-dali-cuda130 needs "
                f"an NVIDIA driver for CUDA 13; update the driver or use --loader nvjpeg")
    elif device.type != "cpu":
        raise DaliUnavailableError(f"--loader dali: device {str(device)!r} is not supported; use cuda or cpu")


def dali_problem(device: torch.device | str = "cuda") -> str | None:
    """Why ``--loader dali`` cannot run on ``device`` here, or None if it can.

    For ``--loader auto``: on a GPU it prefers DALI and logs this reason when it falls back.
    """
    try:
        require_dali(device)
    except DaliUnavailableError as e:
        return str(e)
    return None


def eval_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(resized_h, resized_w, top, left)`` of torchvision's eval transform for one image.

    :func:`fastairl.data.crop.eval_window` with ``Resize(eval_resize_size(size))``. Giving
    DALI these exact numbers (rather than its ``resize_shorter``, which rounds) keeps the
    val crops on torchvision's pixel grid.
    """
    return eval_window(height, width, size, eval_resize_size(size))


# --------------------------------------------------------------------------------------
# Feeding one epoch
# --------------------------------------------------------------------------------------

@dataclass
class _Fed:
    """One batch handed to DALI, kept until its outputs come back (``no_copy`` inputs stay alive)."""

    pos: int                   # index in the epoch plan
    ids: np.ndarray            # dataset indices actually fed (after replacements)
    keep: list = field(default_factory=list)


class _EpochFeed:
    """The batches of one pass, and the reads already in flight for the upcoming ones."""

    def __init__(self, batches: list[list[int]], epoch: int, first: int) -> None:
        self.batches = batches
        self.epoch = epoch
        self.first = first          # batch number (within the epoch) of batches[0]
        self.pos = 0                # next batch to feed
        self.stopped = False
        self.reads: dict[int, list[Future]] = {}


class DaliLoader(_DaliPipelineMixin, JpegLoaderBase):
    """One rank's loader: DALI decode (once per image) + a random-resized crop per view + flip.

    Honours :mod:`fastairl.data.base`: iterate for ``(views, labels)``, each view a uint8
    ``(B, 3, S, S)`` tensor on ``spec.device`` (channels-last strides), labels int64;
    ``output == "uint8"``; ``flipped`` is True (flips drawn here with each view's
    ``flip_p``; val views are never flipped). Call ``set_epoch(epoch, start_batch)``
    before each pass. ``stats`` counts ``bad_samples`` (indices nothing could decode,
    each replaced by the next decodable sample), ``replacements`` and
    ``pipeline_restarts`` (DALI failures recovered by finding and replacing the image).
    """

    _owner = "dali loader"
    _failure = _LoaderFailure
    _folder_source = _FolderSource
    _beton_source = _BetonSource

    def __init__(self, spec: LoaderSpec) -> None:
        global _warned_cpu
        device = torch.device(spec.device)
        require_dali(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.spec = spec
        self.device = device
        self._extra = self._setup(spec, DEFAULT_PREFETCH)
        self._pool = (ThreadPoolExecutor(self.threads, thread_name_prefix="dali-read") if self.source.needs_reads
                      else None)
        self.stats = {"bad_samples": 0, "replacements": 0, "pipeline_restarts": 0}
        self._feed_state: _EpochFeed | None = None
        self._inflight: deque[_Fed] = deque()
        self._consumed: _Fed | None = None
        self._token = 0
        self._probe_pipe = None
        self._probe_input: list[np.ndarray] = []
        self._mem_base = self._device_used()
        self._mem_peak = 0
        self._pipe = self._build_pipeline()
        if device.type == "cpu" and not _warned_cpu:
            _warned_cpu = True
            log.warning("dali loader: no CUDA device, running DALI IN CPU MODE (%d threads): the CPU twin of the "
                        "GPU path, far slower than nvJPEG on a GPU", self.threads)
        log.info("dali loader: %d %s images from %s (%s), %d batches/epoch on rank %d, decode on %s",
                 self.num_samples, spec.split, self.source.where, self.source.kind, len(self), spec.rank,
                 "the GPU (nvJPEG)" if device.type == "cuda" else "the CPU")

    # ------------------------------------------------------------------ contract
    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        self._drain()
        batches = self.batch_indices()
        if not batches:
            return
        self._token += 1
        token = self._token
        feed = _EpochFeed(batches, self._epoch, self.sampler.start_batch)
        self._feed_state = feed
        cuda = self.device.type == "cuda"
        done = 0
        try:
            while done < len(batches):
                if token != self._token:
                    raise RuntimeError("dali loader: a newer pass over this loader started; finish or drop one "
                                       "iterator before starting the next")
                stream = torch.cuda.current_stream(self.device) if cuda else None
                try:
                    outs = self._pipe.run(stream) if cuda else self._pipe.run()
                except StopIteration:
                    raise RuntimeError(f"dali loader: the pipeline ended after {done} of {len(batches)} batches")
                except _LoaderFailure:
                    raise
                except RuntimeError as e:
                    self._recover(e, feed)
                    continue
                rec = self._inflight.popleft()
                # no_copy inputs may be freed once their outputs are out; keep the batch one more
                # step anyway, so no asynchronous host->device copy can outlive its source bytes.
                self._consumed = rec
                views = [self._to_torch(o) for o in outs]
                labels = torch.from_numpy(self.source.labels[rec.ids])
                if cuda:
                    labels = labels.pin_memory().to(self.device, non_blocking=True)
                    self._sample_memory()
                done += 1
                yield views, labels
            self._end_pass()
        finally:
            if self._feed_state is feed and not feed.stopped and done < len(batches):
                feed.stopped = True  # abandoned mid-pass: the next pass drains what is in flight

    def close(self) -> None:
        """Stop feeding, drop the pipelines and hand DALI's free pool memory back."""
        self._drain()
        self._pipe = None
        self._probe_pipe = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.release_memory()

    # ------------------------------------------------------------------ internals
    def _end_pass(self) -> None:
        """After the last batch: let the pipeline see the end of the pass and re-arm it."""
        feed = self._feed_state
        if feed is not None:
            feed.stopped = True
        try:
            while True:
                self._pipe.run()  # normally raises StopIteration at once: nothing is left in flight
                if self._inflight:
                    self._inflight.popleft()
        except StopIteration:
            pass
        self._inflight.clear()
        self._pipe.reset()
        self._feed_state = None

    def _drain(self) -> None:
        """Finish a pass that was abandoned mid-way (decode what is in flight, discard it)."""
        feed = self._feed_state
        if feed is None or self._pipe is None:
            return
        feed.stopped = True
        try:
            self._end_pass()
        except RuntimeError:  # a failure inside discarded batches: start from a fresh pipeline
            self._inflight.clear()
            self._feed_state = None
            self._pipe = self._build_pipeline()

    # the external source -------------------------------------------------------------
    def _feed(self):
        """DALI's external-source callback: the next batch of the current pass, or StopIteration."""
        feed = self._feed_state
        if feed is None or feed.stopped or feed.pos >= len(feed.batches):
            raise StopIteration
        k = feed.pos
        feed.pos += 1
        try:
            items, ids = self._gather(feed, k)
        except _LoaderFailure:
            raise
        except Exception as e:  # surface as a loader failure, not as a DALI error to recover from
            raise _LoaderFailure(f"dali loader: preparing batch {feed.first + k}: {type(e).__name__}: {e}") from e
        datas = [it.data for it in items]
        hs = np.fromiter((it.height for it in items), dtype=np.int64, count=len(items))
        ws = np.fromiter((it.width for it in items), dtype=np.int64, count=len(items))
        if self.spec.train:
            out: list = [datas]
            for boxes, flips in self.crop_params(feed.epoch, feed.first + k, hs, ws):
                out += [np.ascontiguousarray(boxes[:, :2], dtype=np.int32),
                        np.ascontiguousarray(boxes[:, 2:], dtype=np.int32),
                        flips.astype(np.int32)]
        else:
            size = self.spec.image_size
            geo = np.array([eval_geometry(int(h), int(w), size) for h, w in zip(hs, ws)],
                           dtype=np.int64).reshape(-1, 4)
            out = [datas, geo[:, :2].astype(np.float32), geo[:, 2:].astype(np.int32),
                   np.full((len(items), 2), size, dtype=np.int32)]
        # Fed with no_copy: every array must outlive the batch's trip through DALI.
        self._inflight.append(_Fed(k, np.asarray(ids, dtype=np.int64), out))
        return tuple(out)

    def _gather(self, feed: _EpochFeed, k: int) -> tuple[list[_Item], list[int]]:
        """The items of batch ``k`` (reads for the next batches are started here too)."""
        ids = list(feed.batches[k])
        if self._pool is not None:
            for j in range(k, min(len(feed.batches), k + self.prefetch + 2)):
                if j not in feed.reads:
                    feed.reads[j] = [self._pool.submit(self.source.fetch, i) for i in feed.batches[j]]
            got = [f.result() for f in feed.reads.pop(k)]
        else:
            got = [self.source.fetch(i) for i in ids]
        for pos, g in enumerate(got):
            if isinstance(g, _Bad) or ids[pos] in self.bad_samples:
                if ids[pos] not in self.bad_samples:  # newly found bad (known ones are already counted)
                    self._mark_bad(ids[pos], g.reason)
                ids[pos], got[pos] = self._replacement(ids[pos])
        return got, ids

    def _replacement(self, i: int) -> tuple[int, _Item]:
        """The next decodable sample after ``i`` (deterministic, so every rank agrees)."""
        return self._next_decodable(i, self._fetched_or_reason)

    def _fetched_or_reason(self, i: int) -> tuple[_Item | None, str | None]:
        got = self.source.fetch(i)
        return (None, got.reason) if isinstance(got, _Bad) else (got, None)

    # recovery from a decode failure inside DALI ------------------------------------------
    def _recover(self, err: RuntimeError, feed: _EpochFeed) -> None:
        """DALI failed on a batch: find the image(s) its decoder rejects, replace them, restart.

        A failed DALI pipeline cannot run again, so the batches in flight are re-fed to a
        new pipeline (same windows: they depend on the batch number only).
        """
        records = list(self._inflight)
        self._inflight.clear()
        first_line = _dali_reason(err)
        suspects = sorted({int(i) for r in records for i in r.ids if int(i) not in self.bad_samples})
        found = []
        for i in suspects:
            why = self._probe(i)
            if why is not None:
                found.append(i)
                self._mark_bad(i, f"DALI cannot decode it: {why}")
        if not found:
            names = ", ".join(self.source.describe(i) for i in suspects[:4])
            raise RuntimeError(f"dali loader: the DALI pipeline failed ({first_line}) and no single image of the "
                               f"batches in flight ({names}{' ...' if len(suspects) > 4 else ''}) fails alone") from err
        self.stats["pipeline_restarts"] += 1
        feed.pos = records[0].pos if records else feed.pos
        feed.reads.clear()
        self._pipe = self._build_pipeline()

def build_dali_loader(spec: LoaderSpec) -> DaliLoader:
    """The ``dali`` backend for :func:`fastairl.data.build_loader`."""
    return DaliLoader(spec)
