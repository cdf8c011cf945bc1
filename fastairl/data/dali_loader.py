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

   Why not ``fn.readers.file`` for the folder: its sharding is a fixed contiguous block
   per rank and its shuffling a bounded in-shard shuffle buffer (or, with
   ``shuffle_after_epoch``, a permutation from a fixed seed whose epoch counter restarts
   at 0 in a resumed run); with ``last_batch_policy=DROP`` the reader also runs on into
   the next epoch, so the samples it dropped are missing from the next epoch (the
   known drop-last epoch skip). None of that can honour the sampler rule above, and
   the crop windows (step 3) need each image's size before the decode, which the reader
   cannot hand to Python. Feeding the folder through the same external source as the
   packed file gives exactly one visit per sample per epoch, by construction (tested).

   One batched external-source callback per batch, in the training process. Measured
   against DALI's ``parallel=True`` worker processes (2 workers, per-sample callbacks
   doing the same reads and window draws) on this project's 2-core machine, same run,
   224 px moco_plus pairs: parallel 194 pairs/s, the same per-sample callback in-process
   186, this batched in-process callback 212. The workers only add a shared-memory copy
   and an inter-process hand-off to work of a few microseconds per sample (a map view,
   or a file read in a thread that releases the GIL), so they are not used.

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
   ``fn.random_resized_crop`` draws from the same distribution (checked on 2,560 windows
   of a 500x300 image against ``RandomResizedCrop.get_params``: KS p = 0.90 for the area
   fraction, 0.48 for the aspect ratio) but from DALI's generator, whose draws a resumed
   run cannot replay, so it is not used. Each window is cut with ``fn.slice`` and resized to
   ``image_size`` with ``fn.resize`` (linear, antialiased: the filter of torchvision's
   ``resized_crop(..., antialias=True)``), then flipped with ``fn.flip`` per the view's
   ``flip_p``. Measured against torchvision on the same windows: interior pixels within
   1 level, the outermost pixel ring within ~16 levels (DALI clamps the filter at the
   window edge, torchvision renormalises the truncated filter; measured at most 11 for
   8-16x downscales), mean absolute difference below 0.25.
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

Memory
------
DALI keeps its own memory pools (device, pinned host) that grow to the peak demand and
keep it. What bounds that peak, and the knobs used here:

* ``prefetch_queue_depth`` (``spec.extra["prefetch"]``, default 2): batches in flight;
  each holds the decoded images and the views of one batch.
* ``bytes_per_sample_hint`` on the decoder and on each view's operators, and the
  decoder's ``device_memory_padding`` / ``host_memory_padding`` (nvJPEG's per-thread
  buffers, 16 MB / 2 x 8 MB by default) plus ``preallocate_width_hint`` /
  ``preallocate_height_hint`` (the hardware decoder): sized from the largest image of a
  packed file (its metadata says), so buffers are allocated once at the right size
  instead of growing by reallocation, and nvJPEG's padding is not 16 MB per thread for
  images of 512 pixels.
* ``num_threads`` (``spec.workers``): DALI's CPU threads; each decoder thread owns its
  padding buffers.
* DALI's buffer growth factor (1.1 by default: a buffer that must grow is given 10 %
  headroom) and host-buffer shrink threshold (0.5): left at their defaults, set through
  ``nvidia.dali.backend.SetDeviceBufferGrowthFactor`` / ``SetHostBufferGrowthFactor`` /
  ``SetHostBufferShrinkThreshold`` if a job needs it.
* ``spec.extra["device_pool_mb"]`` / ``["pinned_pool_mb"]``: preallocate that much of
  DALI's device / pinned pool up front (``nvidia.dali.backend.PreallocateDeviceMemory`` /
  ``PreallocatePinnedMemory``), so the pool is one block from the start rather than a
  sequence of growth steps.
* :meth:`DaliLoader.close` (and :meth:`DaliLoader.release_memory`) hands completely free
  pool blocks back with ``nvidia.dali.backend.ReleaseUnusedMemory``.
* Environment, read by DALI at start-up (documented by NVIDIA): ``DALI_USE_CUDA_MALLOC_ASYNC=1``
  makes DALI allocate device memory from CUDA's stream-ordered allocator instead of its
  own pool; ``DALI_USE_VMM=0`` uses a ``cudaMalloc`` pool instead of the virtual-memory
  one; ``DALI_USE_DEVICE_MEM_POOL`` / ``DALI_USE_PINNED_MEM_POOL=0`` switch the pools off
  (debugging only: slow).

:meth:`DaliLoader.memory_info` reports the process's host memory (current and peak RSS)
and, on a GPU, the device memory in use outside torch's allocator relative to the moment
the loader was created (DALI's pools plus nvJPEG's buffers), current and peak (sampled
at every batch), for the benchmark.
"""
from __future__ import annotations

import io
import logging
import os
import resource
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .base import LoaderSpec
from .beton import JPEG_MODE
from .jpeg_source import BetonSamples, FolderSamples, JpegLoaderBase
from .nvjpeg_loader import jpeg_header
from .recipes import eval_resize_size

log = logging.getLogger(__name__)

try:  # an optional, large dependency: fail when the backend is chosen, with the fix in the message
    import nvidia.dali.backend as _dali_backend
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali.pipeline import Pipeline
    _DALI_IMPORT_ERROR: Exception | None = None
except (ImportError, OSError) as _e:  # OSError: libdali.so cannot be loaded
    _DALI_IMPORT_ERROR = _e

__all__ = ["DaliLoader", "DaliUnavailableError", "build_dali_loader", "dali_available", "dali_problem",
           "eval_geometry", "require_dali", "INSTALL_HINT"]

#: What to run when DALI is missing (matches requirements.txt / make venv).
INSTALL_HINT = "pip install nvidia-dali-cuda130 (or run `make venv`)"
#: Batches in flight inside DALI (override with ``spec.extra["prefetch"]``).
DEFAULT_PREFETCH = 2
#: Formats DALI's decoder reads itself, as PIL names them; anything else PIL can open is
#: decoded by PIL and fed as PPM.
_DALI_FORMATS = {"JPEG", "PNG", "BMP", "PPM", "TIFF", "WEBP", "JPEG2000"}

_warned_cpu = False
_warned_pil = False


class DaliUnavailableError(ValueError):
    """``--loader dali`` cannot run here (DALI missing, or no GPU for a CUDA run); the message says why."""


class _LoaderFailure(RuntimeError):
    """An error of the loader itself, raised from inside the feed callback (never retried)."""


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports in this environment."""
    return _DALI_IMPORT_ERROR is None


def require_dali(device: torch.device | str = "cpu") -> None:
    """Raise :class:`DaliUnavailableError` naming exactly what is missing for ``device``."""
    device = torch.device(device)
    if _DALI_IMPORT_ERROR is not None:
        where = "a GPU run" if device.type == "cuda" else "its CPU mode"
        raise DaliUnavailableError(
            f"--loader dali: NVIDIA DALI is not importable ({type(_DALI_IMPORT_ERROR).__name__}: "
            f"{_DALI_IMPORT_ERROR}); {where} needs it: {INSTALL_HINT}; or choose --loader nvjpeg/ffcv/folder")
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

    ``Resize(eval_resize_size(size))`` scales the short side to that size and truncates the
    long one; ``CenterCrop(size)`` then starts at ``round((resized - size) / 2)``. Giving
    DALI these exact numbers (rather than its ``resize_shorter``, which rounds) keeps the
    val crops on torchvision's pixel grid.
    """
    short = eval_resize_size(size)
    if height <= width:
        rh, rw = short, int(short * width / height)
    else:
        rh, rw = int(short * height / width), short
    return rh, rw, int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))


# --------------------------------------------------------------------------------------
# Sources of compressed bytes (+ each image's size, which the crop windows need)
# --------------------------------------------------------------------------------------

@dataclass
class _Item:
    data: np.ndarray  # 1-D uint8: an encoded image DALI can decode
    height: int
    width: int


class _Bad:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _dali_reason(err: BaseException) -> str:
    """The informative part of a DALI pipeline error, on one line (what follows "encountered:")."""
    text = str(err)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "pipeline object is no longer valid" not in ln and "Critical error" not in ln]
    return " ".join(lines)[:300] or type(err).__name__


def _ppm(pixels: np.ndarray) -> np.ndarray:
    """Wrap ``(H, W, 3)`` uint8 pixels in a binary PPM header: a lossless image DALI decodes."""
    h, w = pixels.shape[:2]
    head = np.frombuffer(f"P6\n{w} {h}\n255\n".encode("ascii"), dtype=np.uint8)
    return np.concatenate([head, np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1)])


def _identify(data: np.ndarray) -> _Item | _Bad:
    """Size (and, if DALI cannot read the format, a PPM re-encoding) of one encoded image."""
    global _warned_pil
    hdr = jpeg_header(data)
    if hdr is not None and hdr.height > 0 and hdr.width > 0:
        return _Item(data, hdr.height, hdr.width)
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data.tobytes())) as im:
            w, h = im.size
            if im.format in _DALI_FORMATS:
                return _Item(data, h, w)
            if not _warned_pil:
                _warned_pil = True
                log.warning("dali loader: %s images are decoded by PIL on the CPU (DALI cannot read them)", im.format)
            return _Item(_ppm(np.asarray(im.convert("RGB"))), h, w)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return _Bad(f"not a readable image ({type(e).__name__}: {e})")


class _FolderSource(FolderSamples):
    """An ImageNet-style split folder; files are read (by a thread pool) and sized from their headers."""

    needs_reads = True
    max_hw: tuple[int, int] | None = None  # unknown without reading every file

    def fetch(self, i: int) -> _Item | _Bad:
        try:
            data = np.fromfile(self.paths[i], dtype=np.uint8)
        except OSError as e:
            return _Bad(f"cannot read: {e}")
        if data.size == 0:
            return _Bad("empty file")
        return _identify(data)


class _BetonSource(BetonSamples):
    """A packed ffcv file: JPEG samples are zero-copy views of its memory map."""

    needs_reads = False

    def __init__(self, path: Path, owner: str, logger: logging.Logger) -> None:
        super().__init__(path, owner, logger)
        self.max_hw = (int(self.reader.heights.max()), int(self.reader.widths.max()))

    def fetch(self, i: int) -> _Item | _Bad:
        r = self.reader
        h, w = int(r.heights[i]), int(r.widths[i])
        if r.modes[i] == JPEG_MODE:
            return _Item(r.jpeg(i), h, w)  # a view of the map: DALI reads the page cache directly
        return _Item(_ppm(r.raw(i)), h, w)


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


class _WeakFeed:
    """The external-source callback, holding the loader weakly.

    A pipeline holding a bound method would keep its loader alive in a reference cycle;
    with this, a dropped loader (e.g. each validation pass's) frees its DALI pipeline and
    buffers at once.
    """

    def __init__(self, loader: "DaliLoader") -> None:
        self._ref = weakref.ref(loader)

    def __call__(self):
        loader = self._ref()
        if loader is None:
            raise StopIteration
        return loader._feed()


class DaliLoader(JpegLoaderBase):
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

    # ------------------------------------------------------------------ pipeline
    def _decoder_args(self) -> dict:
        """Size nvJPEG's buffers from the largest image when it is known (a packed file)."""
        args: dict = {}
        mx = self.source.max_hw
        if mx is not None:
            img_bytes = mx[0] * mx[1] * 3
            args["bytes_per_sample_hint"] = img_bytes
            if self.device.type == "cuda":
                pad = max(1 << 20, 2 * img_bytes)
                args.update(device_memory_padding=pad, host_memory_padding=pad,
                            preallocate_height_hint=mx[0], preallocate_width_hint=mx[1])
        if self.device.type == "cuda" and "hw_decoder_load" in self._extra:
            args["hw_decoder_load"] = float(self._extra["hw_decoder_load"])
        return args

    def _build_pipeline(self):
        spec = self.spec
        dev_id = self.device.index if self.device.type == "cuda" else None
        if dev_id is not None:
            mb = self._extra.get("device_pool_mb")
            if mb:
                _dali_backend.PreallocateDeviceMemory(int(float(mb) * (1 << 20)), dev_id)
            mb = self._extra.get("pinned_pool_mb")
            if mb:
                _dali_backend.PreallocatePinnedMemory(int(float(mb) * (1 << 20)))
        pipe = Pipeline(batch_size=spec.batch_size, num_threads=self.threads, device_id=dev_id,
                        prefetch_queue_depth=self.prefetch, seed=(spec.seed * 1009 + spec.rank) % (2**31 - 1),
                        py_num_workers=0)
        size = spec.image_size
        view_bytes = size * size * 3
        dec_device = "mixed" if dev_id is not None else "cpu"
        n_views = len(self.recipe) if spec.train else 1
        n_out = 1 + 3 * n_views if spec.train else 4
        with pipe:
            outs = fn.external_source(source=_WeakFeed(self), num_outputs=n_out, batch=True, no_copy=True)
            images = fn.decoders.image(outs[0], device=dec_device, output_type=types.RGB, adjust_orientation=False,
                                       **self._decoder_args())
            if spec.train:
                views = []
                for v in range(n_views):
                    anchor, shape, flip = outs[1 + 3 * v: 4 + 3 * v]
                    # Named (argument) inputs: CPU tensors, which GPU operators take as well.
                    x = fn.slice(images, start=anchor, shape=shape, axes=[0, 1], out_of_bounds_policy="trim_to_shape")
                    x = fn.resize(x, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True,
                                  bytes_per_sample_hint=view_bytes)
                    views.append(fn.flip(x, horizontal=flip, bytes_per_sample_hint=view_bytes))
            else:
                rsize, anchor, shape = outs[1:4]
                x = fn.resize(images, size=rsize, interp_type=types.INTERP_LINEAR, antialias=True)
                views = [fn.slice(x, start=anchor, shape=shape, axes=[0, 1], out_of_bounds_policy="trim_to_shape",
                                  bytes_per_sample_hint=view_bytes)]
            pipe.set_outputs(*views)
        try:
            pipe.build()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = (" (nvidia-dali-cuda130 needs an NVIDIA driver for CUDA 13)" if dev_id is not None else "")
            raise RuntimeError(f"dali loader: DALI could not start its pipeline on {self.device}{hint}: {first}") from e
        return pipe

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

    def release_memory(self) -> None:
        """Return completely free blocks of DALI's device and pinned pools (``ReleaseUnusedMemory``)."""
        if self.device.type == "cuda":
            _dali_backend.ReleaseUnusedMemory()

    def memory_info(self) -> dict:
        """Host and device memory of this process as the benchmark reports them.

        ``host_rss_bytes`` / ``host_rss_peak_bytes``: resident set now / at its peak (the
        pinned pool is part of it). ``device_bytes`` / ``device_peak_bytes`` (GPU only,
        else None): device memory in use that torch's allocator does not hold, relative to
        when the loader was created: DALI's pools and nvJPEG's buffers (run alone on the
        GPU, as other processes count too); the peak is sampled at every batch.
        ``torch_reserved_bytes``: torch's own reservation, for comparison.
        """
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            rss = None
        info = {"device": str(self.device), "host_rss_bytes": rss,
                "host_rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "device_bytes": None, "device_peak_bytes": None, "torch_reserved_bytes": None}
        if self.device.type == "cuda":
            self._sample_memory()
            info.update(device_bytes=max(0, self._device_used() - self._mem_base), device_peak_bytes=self._mem_peak,
                        torch_reserved_bytes=torch.cuda.memory_reserved(self.device))
        return info

    # ------------------------------------------------------------------ internals
    def _device_used(self) -> int:
        if self.device.type != "cuda":
            return 0
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free - torch.cuda.memory_reserved(self.device)

    def _sample_memory(self) -> None:
        self._mem_peak = max(self._mem_peak, self._device_used() - self._mem_base)

    def _to_torch(self, out) -> torch.Tensor:
        """One view batch as a torch tensor ``(B, 3, S, S)``, sharing DALI's output buffer.

        Zero-copy through DLPack, as DALI's own PyTorch iterator does with this executor:
        the tensor owns a reference to the buffer, which goes back to DALI's pool when the
        tensor is freed. The HWC samples are seen channel-first (channels-last strides).
        """
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                t = torch.from_dlpack(out.as_tensor())
        else:
            t = torch.from_dlpack(out.as_tensor())
        s = self.spec.image_size
        if t.dim() != 4 or tuple(t.shape[1:]) != (s, s, 3):
            raise _LoaderFailure(f"dali loader: a view batch came out {tuple(t.shape)}, expected (B, {s}, {s}, 3)")
        return t.permute(0, 3, 1, 2)

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

    def _probe(self, i: int) -> str | None:
        """Decode sample ``i`` alone with DALI's CPU decoder; the error text, or None if it decodes."""
        got = self.source.fetch(i)
        if isinstance(got, _Bad):
            return got.reason
        if self._probe_pipe is None:
            # The same decoder (device) as the failing pipeline: a CPU decode may accept what nvJPEG refuses.
            dev_id = self.device.index if self.device.type == "cuda" else None
            pipe = Pipeline(batch_size=1, num_threads=1, device_id=dev_id, prefetch_queue_depth=1, py_num_workers=0)
            inputs = self._probe_input
            with pipe:
                x = fn.external_source(source=lambda: [inputs.pop()], batch=True, no_copy=False)
                pipe.set_outputs(fn.decoders.image(x, device="mixed" if dev_id is not None else "cpu",
                                                   output_type=types.RGB, adjust_orientation=False))
            pipe.build()
            self._probe_pipe = pipe
        self._probe_input[:] = [got.data]
        try:
            self._probe_pipe.run()
            return None
        except RuntimeError as e:
            self._probe_pipe = None  # a failed pipeline cannot run again
            return _dali_reason(e)


def build_dali_loader(spec: LoaderSpec) -> DaliLoader:
    """The ``dali`` backend for :func:`fastairl.data.build_loader`."""
    return DaliLoader(spec)
