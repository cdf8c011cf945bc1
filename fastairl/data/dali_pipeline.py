"""The DALI side of the ``dali`` backend: the pipeline graph, the probe, DALI's memory.

Why its own module: :class:`fastairl.data.dali_loader.DaliLoader` feeds batches and
hands views to torch; what DALI runs (decode once, then per view ``fn.slice`` +
``fn.resize`` (linear, antialiased) + ``fn.flip``; for validation a resize to the eval
window and a centre slice), how its buffers are sized and how its pools are reported
and released are written here, as a mixin of that loader. The module docstring of
``dali_loader`` says why each choice was made; measurements are in
``docs/data-backends.md``. Split out of ``dali_loader.py`` (issue #15).

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

import os
import resource
import weakref

import torch

from .dali_sources import _Bad

try:  # an optional, large dependency: fail when the backend is chosen, with the fix in the message
    import nvidia.dali.backend as _dali_backend
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali.pipeline import Pipeline
    _DALI_IMPORT_ERROR: Exception | None = None
except (ImportError, OSError) as _e:  # OSError: libdali.so cannot be loaded
    _DALI_IMPORT_ERROR = _e
    _dali_backend = None  # type: ignore[assignment]


def _dali_reason(err: BaseException) -> str:
    """The informative part of a DALI pipeline error, on one line (what follows "encountered:")."""
    text = str(err)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "pipeline object is no longer valid" not in ln and "Critical error" not in ln]
    return " ".join(lines)[:300] or type(err).__name__


class _LoaderFailure(RuntimeError):
    """An error of the loader itself, raised from inside the feed callback (never retried)."""


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


class _DaliPipelineMixin:
    """What :class:`~fastairl.data.dali_loader.DaliLoader` runs inside DALI (see the module docstring)."""

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

    def _device_used(self) -> int:
        if self.device.type != "cuda":
            return 0
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free - torch.cuda.memory_reserved(self.device)

    def _sample_memory(self) -> None:
        self._mem_peak = max(self._mem_peak, self._device_used() - self._mem_base)

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
