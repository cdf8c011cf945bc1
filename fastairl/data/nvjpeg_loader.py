"""The ``nvjpeg`` backend: JPEG bytes read by CPU threads, decoded in batches on the GPU.

Why it exists: on a GPU node the CPU cores, not the GPU, cap the reference's data path
(PIL decode + CPU augmentation). DALI solves that but is a large optional dependency;
torchvision already ships a batched nvJPEG decoder (``decode_jpeg(list, device="cuda")``).
This backend needs nothing beyond torch and torchvision:

1. a small pool of CPU threads reads each sample's compressed bytes, from a packed ffcv
   file (``<root>/<split>.beton``, read with our own :class:`~fastairl.data.beton.BetonReader`)
   or from an ImageNet-style folder (``<root>/<split>/<class>/<image>``, the sample list
   and labels of torchvision's ``ImageFolder``);
2. one ``decode_jpeg`` call decodes the whole batch to RGB on the GPU;
3. every view gets its own random-resized crop, drawn with torchvision's rule
   (:func:`fastairl.data.crop.sample_crops`, the view's scale/ratio), cut and resized on
   the device with torchvision's antialiased bilinear (:func:`fastairl.data.crop.crop_resize`),
   and a horizontal flip with the view's ``flip_p``;
4. the uint8 views ``(B, 3, S, S)`` are handed to the trainer, which runs ``GPUAugment``.

Steps 1-3 run in a background thread, a bounded queue ahead of the training loop; GPU
work happens on a side CUDA stream and the consumer's stream waits on an event before it
touches a batch (the tensors are ``record_stream``-ed so the allocator does not recycle
them under it).

Images the GPU decoder refuses (CMYK, some progressive files, PNGs named .JPEG) are
decoded on the CPU instead; an image nothing can decode is replaced by the next
decodable sample (deterministic), logged once and counted in :attr:`NvJpegLoader.stats`.

Without a GPU (``spec.device == "cpu"``, CI) the same code decodes with torchvision on the
CPU threads, so every step above is exercised by the tests; a loud warning says so.

Crop windows come from a numpy generator seeded by (seed, epoch, rank, batch number), so
a run resumed mid-epoch (``set_epoch(epoch, start_batch)``) sees the very same batches.

The JPEG frame-header parser and the CPU decoder live in :mod:`fastairl.data.jpeg_bytes`
(shared with the ``dali`` backend) and are re-exported here.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg

from .base import LoaderSpec
from .beton import JPEG_MODE
from .crop import crop_resize, eval_window
from .jpeg_bytes import DecodeError, JpegHeader, decode_on_cpu, jpeg_header  # noqa: F401 (re-exported)
from .jpeg_source import BetonSamples, FolderSamples, JpegLoaderBase
from .recipes import eval_resize_size

log = logging.getLogger(__name__)

__all__ = ["NvJpegLoader", "build_nvjpeg_loader", "JpegHeader", "jpeg_header", "decode_on_cpu", "DecodeError"]

#: Batches prepared ahead of the training loop (override with ``spec.extra["prefetch"]``).
DEFAULT_PREFETCH = 3

_warned_cpu = False
_warned_gpu_fallback = False


def _eval_view(im: torch.Tensor, size: int) -> torch.Tensor:
    """The eval view of one decoded ``(3, H, W)`` image: :func:`~fastairl.data.crop.eval_window`
    with ``Resize(eval_resize_size(size))``, resized by torchvision (antialiased), then sliced."""
    rh, rw, top, left = eval_window(im.shape[-2], im.shape[-1], size, eval_resize_size(size))
    return TF.resize(im, [rh, rw], antialias=True)[..., top:top + size, left:left + size]


# --------------------------------------------------------------------------------------
# Sources of compressed bytes
# --------------------------------------------------------------------------------------

class _FolderSource(FolderSamples):
    """An ImageNet-style split folder; each sample is its file's bytes."""

    def read(self, i: int) -> torch.Tensor:
        """The file's bytes in a fresh 1-D uint8 tensor (one copy, straight from the kernel)."""
        with open(self.paths[i], "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            out = torch.empty(size, dtype=torch.uint8)
            got = f.readinto(memoryview(out.numpy())) if size else 0
        return out if got == size else out[:got]


class _BetonSource(BetonSamples):
    """A packed ffcv file; raw-mode samples come back already decoded as (3, H, W)."""

    def read(self, i: int) -> torch.Tensor:
        if self.reader.modes[i] == JPEG_MODE:
            view = self.reader.jpeg(i)
            out = torch.empty(view.shape[0], dtype=torch.uint8)
            out.numpy()[:] = view  # the page faults (disk reads) happen here, in a pool thread
            return out
        return torch.from_numpy(np.array(self.reader.raw(i))).permute(2, 0, 1)


# --------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------

@dataclass
class _Batch:
    views: list[torch.Tensor]
    labels: torch.Tensor
    ready: torch.cuda.Event | None


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class NvJpegLoader(JpegLoaderBase):
    """One rank's loader: nvJPEG batch decode + per-view random-resized crop + flip.

    Honours :mod:`fastairl.data.base`: iterate for ``(views, labels)`` with uint8 views
    ``(B, 3, S, S)`` on ``spec.device``; ``output == "uint8"``; ``flipped`` is True (flips
    are drawn here with each view's ``flip_p``; eval views are never flipped).
    ``set_epoch(epoch, start_batch)`` must precede each epoch's iteration.

    ``stats`` counts ``bad_samples`` (indices nothing could decode, each replaced by the
    next decodable sample), ``replacements`` (times one was replaced) and
    ``cpu_decodes`` (images the GPU decoder passed to the CPU).
    """

    _owner = "nvjpeg loader"
    _folder_source = _FolderSource
    _beton_source = _BetonSource

    def __init__(self, spec: LoaderSpec) -> None:
        global _warned_cpu
        self.spec = spec
        self.device = torch.device(spec.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"nvjpeg loader: device {spec.device} requested but CUDA is not available; "
                                   f"run on a GPU or use --device cpu")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        elif self.device.type != "cpu":
            raise ValueError(f"nvjpeg loader: device {spec.device!r} is not supported; use cuda or cpu")
        self._setup(spec, DEFAULT_PREFETCH)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nvjpeg-read")
        self._cpu_only: set[int] = set()
        self.stats = {"bad_samples": 0, "replacements": 0, "cpu_decodes": 0}
        # One side stream for the loader's life: a new stream per epoch would cycle through
        # torch's stream pool, and memory cached for one stream is not reused by another.
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if self.device.type == "cpu" and not _warned_cpu:
            _warned_cpu = True
            log.warning("nvjpeg loader: no CUDA device, DECODING JPEGs ON THE CPU with torchvision (%d threads); "
                        "this is the CPU twin of the GPU path and far slower than on a GPU", self.threads)
        log.info("nvjpeg loader: %d %s images from %s (%s), %d batches/epoch on rank %d",
                 self.num_samples, spec.split, self.source.where, self.source.kind, len(self), spec.rank)

    # ------------------------------------------------------------------ contract
    def close(self) -> None:
        """Stop the read/decode threads (the loader cannot be iterated afterwards)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        batches = self.batch_indices()
        if not batches:
            return
        first = self.sampler.start_batch
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(batches, first, self._epoch, q, stop),
                                  name="nvjpeg-prefetch", daemon=True)
        worker.start()
        try:
            for _ in range(len(batches)):
                item = q.get()
                if isinstance(item, _Failure):
                    raise item.exc
                yield self._hand_over(item)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    continue
            worker.join()

    # ------------------------------------------------------------------ producer side
    def _produce(self, batches: list[list[int]], first: int, epoch: int, q: queue.Queue,
                 stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        stream = None
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                stream = self._stream
            # On the GPU path the pool only reads files, so it reads the next batch while
            # this one decodes; on the CPU path the pool also decodes and crops, and queueing
            # the next batch's work ahead of this batch's crops would only delay it.
            ahead = stream is not None
            reads = self._submit_reads(batches[0])
            for k, ids in enumerate(batches):
                if stop.is_set():
                    return
                current = reads
                if k + 1 < len(batches):
                    if ahead:
                        reads = self._submit_reads(batches[k + 1])
                if stream is not None:
                    with torch.cuda.stream(stream):
                        item = self._make_batch(ids, current, epoch, first + k)
                        item.ready = torch.cuda.Event()
                        item.ready.record(stream)
                else:
                    item = self._make_batch(ids, current, epoch, first + k)
                if not put(item):
                    return
                if not ahead and k + 1 < len(batches):
                    reads = self._submit_reads(batches[k + 1])
        except BaseException as e:  # hand every failure to the consumer, which re-raises it
            put(_Failure(e))

    def _submit_reads(self, ids: Sequence[int]) -> list[Future]:
        fn = self._read_and_decode_cpu if self.device.type == "cpu" else self._read
        return [self._pool.submit(fn, i) for i in ids]

    def _read(self, i: int) -> torch.Tensor | DecodeError:
        try:
            return self.source.read(i)
        except OSError as e:
            return DecodeError(f"cannot read: {e}")

    def _read_and_decode_cpu(self, i: int) -> torch.Tensor | DecodeError:
        data = self._read(i)
        if isinstance(data, DecodeError) or data.dim() == 3:
            return data
        try:
            return decode_on_cpu(data)
        except DecodeError as e:
            return e

    def _make_batch(self, ids: list[int], reads: list[Future], epoch: int, batch_no: int) -> _Batch:
        got = [f.result() for f in reads]
        ids = list(ids)
        imgs = self._decode_gpu(ids, got) if self.device.type == "cuda" else got
        for pos, img in enumerate(imgs):
            if isinstance(img, DecodeError):
                ids[pos], imgs[pos] = self._replacement(ids[pos], img)
        labels = torch.from_numpy(self.source.labels[np.asarray(ids, dtype=np.int64)])
        if self.device.type == "cuda":
            labels = labels.pin_memory().to(self.device, non_blocking=True)
        size = self.spec.image_size
        if not self.spec.train:
            views = [self._eval_views(imgs, size)]
        else:
            params = self.crop_params(epoch, batch_no, [im.shape[-2] for im in imgs], [im.shape[-1] for im in imgs])
            views = [self._crop_views(imgs, boxes, size, flips) for boxes, flips in params]
        return _Batch(views, labels, None)

    def _decode_gpu(self, ids: list[int], datas: list) -> list:
        """Batch-decode on the GPU; what nvJPEG cannot take goes to the CPU decoder."""
        out: list = list(datas)
        gpu: list[int] = []
        cpu: list[int] = []
        for pos, d in enumerate(datas):
            if isinstance(d, DecodeError):
                continue
            if d.dim() == 3:  # raw pixels from a .beton
                out[pos] = d.to(self.device)
            elif ids[pos] in self._cpu_only:
                cpu.append(pos)
            else:
                h = jpeg_header(d)
                if h is None or h.components not in (1, 3):  # not a JPEG, or CMYK/YCCK
                    self._note_cpu_only(ids[pos], "not a 1- or 3-component JPEG")
                    cpu.append(pos)
                else:
                    gpu.append(pos)
        if gpu:
            # nvJPEG writes its outputs on torchvision's own stream, not on this (side)
            # stream, yet the memory comes from this stream's pool, where the previous
            # batch's images were just freed while its crops may still be queued here:
            # let those finish before the decoder can reuse their memory.
            torch.cuda.current_stream(self.device).synchronize()
            try:
                for p, im in zip(gpu, decode_jpeg([datas[p] for p in gpu], mode=ImageReadMode.RGB,
                                                   device=self.device)):
                    out[p] = im
            except RuntimeError:
                # One bad stream fails the whole call; find it by decoding one at a time.
                for p in gpu:
                    try:
                        out[p] = decode_jpeg(datas[p], mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError as e:
                        self._note_cpu_only(ids[p], str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))
                        cpu.append(p)
        for p in cpu:
            self.stats["cpu_decodes"] += 1
            try:
                out[p] = decode_on_cpu(datas[p]).to(self.device)
            except DecodeError as e:
                out[p] = e
        return out

    def _note_cpu_only(self, i: int, why: str) -> None:
        """Remember that sample ``i`` needs the CPU decoder, so later epochs skip the GPU try."""
        global _warned_gpu_fallback
        self._cpu_only.add(i)
        if not _warned_gpu_fallback:
            _warned_gpu_fallback = True
            log.warning("nvjpeg loader: the GPU decoder cannot take %s (%s); such images are decoded on the CPU "
                        "(slower; counted in stats['cpu_decodes'])", self.source.describe(i), why)

    def _replacement(self, i: int, err: DecodeError) -> tuple[int, torch.Tensor]:
        """Mark ``i`` bad (log once) and return the next decodable sample after it."""
        self._mark_bad(i, str(err))
        j, img = self._next_decodable(i, self._decoded_or_reason)
        return j, (img.to(self.device) if self.device.type == "cuda" else img)

    def _decoded_or_reason(self, i: int) -> tuple[torch.Tensor | None, str | None]:
        img = self._read_and_decode_cpu(i)
        return (None, str(img)) if isinstance(img, DecodeError) else (img, None)

    def _crop_views(self, imgs: list[torch.Tensor], boxes: np.ndarray, size: int, flips: np.ndarray) -> torch.Tensor:
        """One view of the batch: crop+resize every image, then flip the chosen ones."""
        n = len(imgs)
        if self.device.type == "cpu" and self.threads > 1 and n > 1:
            step = math.ceil(n / self.threads)
            parts = [self._pool.submit(crop_resize, imgs[s:s + step], boxes[s:s + step], size)
                     for s in range(0, n, step)]
            out = torch.cat([p.result() for p in parts])
        else:
            out = crop_resize(imgs, boxes, size)
        if flips.any():
            sel = torch.from_numpy(np.flatnonzero(flips)).to(out.device, non_blocking=True)
            out[sel] = out[sel].flip(-1)
        return out

    def _eval_views(self, imgs: list[torch.Tensor], size: int) -> torch.Tensor:
        """The eval view of every image (:func:`_eval_view`: torchvision's Resize + CenterCrop window)."""
        if self.device.type == "cpu" and self.threads > 1 and len(imgs) > 1:
            return torch.stack(list(self._pool.map(lambda im: _eval_view(im, size), imgs)))
        return torch.stack([_eval_view(im, size) for im in imgs])

    # ------------------------------------------------------------------ consumer side
    def _hand_over(self, item: _Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
        if item.ready is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(item.ready)
            for t in (*item.views, item.labels):
                t.record_stream(cur)
        return item.views, item.labels


def build_nvjpeg_loader(spec: LoaderSpec) -> NvJpegLoader:
    """The ``nvjpeg`` backend for :func:`fastairl.data.build_loader`."""
    return NvJpegLoader(spec)
