"""The ffcv operation of the ``ffcv`` backend: decode each JPEG once, cut every view from it.

Why a custom decoder: ffcv's stock ``RandomResizedCropRGBImageDecoder`` decodes a JPEG
for *one* crop, and ffcv lets one field feed only one pipeline, so a two-view recipe
would either decode every image twice or need two loaders. :class:`MultiViewCropDecoder`
decodes once (at 1/2, 1/4 or 1/8 scale in the DCT domain when every window allows it)
and resizes every view from that decode with :func:`fastairl.data.ffcv_kernels.resize_box`.
The windows are drawn by :class:`fastairl.data.ffcv_loader.FFCVLoader`, not here (see its
module docstring). Moved out of ``ffcv_loader.py`` (issue #15); ``ffcv_loader``
re-exports the public names.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numba as nb
import numpy as np
import torch

from fastairl.data.ffcv_kernels import _dct_denominator, eval_box, resize_box
from fastairl.data.recipes import eval_resize_size
from fastairl.data.registry import missing_message

# ffcv's compiler sets torch's thread count to 1 when imported (and to the worker count
# when a loader is built); the training process's own torch threads must not change.
_TORCH_THREADS = torch.get_num_threads()
try:  # ffcv is a compiled extension with system library dependencies; fail late, clearly.
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.libffcv import imdecode as _ffcv_imdecode
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State
    _FFCV_IMPORT_ERROR: Exception | None = None
except (ImportError, OSError) as _e:  # OSError: libturbojpeg / libopencv missing at load time
    _FFCV_IMPORT_ERROR = _e
    SimpleRGBImageDecoder = object  # type: ignore[assignment,misc]
torch.set_num_threads(_TORCH_THREADS)

__all__ = ["MultiViewCropDecoder", "PARAM_COLUMNS", "decode_jpeg", "require_ffcv"]

def require_ffcv() -> None:
    """Raise a one-line, actionable ImportError if ffcv cannot be imported here."""
    if _FFCV_IMPORT_ERROR is not None:
        raise ImportError(missing_message("ffcv", error=_FFCV_IMPORT_ERROR)) from _FFCV_IMPORT_ERROR


def decode_jpeg(data: np.ndarray, height: int, width: int, denominator: int = 1) -> np.ndarray:
    """Decode JPEG bytes with ffcv's libjpeg-turbo call, optionally at 1/denominator scale.

    This is exactly the decode the loader runs (same library, same flags), so tests can
    compare the loader's crops with torchvision applied to the same pixels.
    """
    require_ffcv()
    if denominator not in (1, 2, 4, 8):
        raise ValueError(f"denominator must be 1, 2, 4 or 8, got {denominator}")
    sh = -(-height // denominator)
    sw = -(-width // denominator)
    out = np.empty(sh * sw * 3, np.uint8)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    rc = _ffcv_imdecode(data, out, height, width, height, width, 0, 0, 1, denominator, False, False)
    if rc != 0:
        raise ValueError(f"libjpeg-turbo could not decode this JPEG (return code {rc})")
    return out.reshape(sh, sw, 3)


#: Columns of the decoder's per-sample, per-view parameter rows: window and flip.
PARAM_COLUMNS = ("top", "left", "height", "width", "flip")
#: What the decoder writes into the flip column of a sample whose windows are invalid.
_BAD_WINDOW = -7


@nb.njit(cache=True, nogil=True)
def _check_windows(params: np.ndarray, height: int, width: int) -> bool:
    """Whether every ``(top, left, h, w, flip)`` row lies inside a ``height x width`` image."""
    for v in range(params.shape[0]):
        t, l, h, w, f = params[v, 0], params[v, 1], params[v, 2], params[v, 3], params[v, 4]
        if t < 0 or l < 0 or h < 1 or w < 1 or t + h > height or l + w > width or f < 0 or f > 1:
            return False
    return True


_IMDECODE_JIT: dict[bool, object] = {}


def _imdecode_jit():
    """ffcv's libjpeg-turbo call compiled once per process (per kind of caller) and shared
    by every decoder.

    Compiling it per loader (``Compiler.compile`` makes a new numba dispatcher each time)
    gives several dispatchers of one function; when a loader is garbage-collected, numba's
    finalizer then removes overloads another dispatcher already removed and prints a
    ``KeyError`` traceback ("Exception ignored in: <finalize object ...>"), e.g. after every
    kNN evaluation. One dispatcher must not serve both a parallel caller (a loader with
    several workers: its pipeline is a ``prange`` loop) and a serial one (one worker):
    the second kind to compile then fails inside numba with a ``KeyError`` on the first
    kind's signature. So there is one dispatcher per kind, each shared by its loaders.
    """
    parallel = Compiler.num_threads > 1
    if parallel not in _IMDECODE_JIT:
        _IMDECODE_JIT[parallel] = Compiler.compile(_ffcv_imdecode)
    return _IMDECODE_JIT[parallel]


class MultiViewCropDecoder(SimpleRGBImageDecoder):
    """Decode each JPEG of an ``RGBImageField`` once and emit one resized crop per view.

    It subclasses ffcv's ``SimpleRGBImageDecoder`` because ffcv recognises the first
    operation of a pipeline as the field's decoder only if it is an instance of the
    field's decoder class; everything the base class does is overridden.

    Output per sample: ``(V, size, size, 3)`` uint8. ``num_views=V`` selects random
    views: the windows and flips are *not* drawn here but read from a second buffer the
    decoder declares, ``(V, 5)`` int64 per sample with the columns of
    :data:`PARAM_COLUMNS`, which :class:`FFCVLoader` fills before each batch (see the
    module docstring); a row outside the image stops the loader with an error (used
    with a plain ffcv ``Loader``, nothing fills that buffer and such samples come out
    black: random views need :class:`FFCVLoader`).
    ``num_views=None`` selects the eval view (torchvision's ``Resize(eval_resize)`` +
    ``CenterCrop(size)``, ``eval_resize`` defaulting to
    :func:`~fastairl.data.recipes.eval_resize_size`), which needs no parameters.
    ``dct_scaling=False`` forces full-size decodes.
    """

    def __init__(self, size: int, num_views: int | None, *, eval_resize: int | None = None,
                 dct_scaling: bool = True) -> None:
        require_ffcv()
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"output size must be >= 1, got {size}")
        if num_views is not None and int(num_views) < 1:
            raise ValueError(f"MultiViewCropDecoder needs at least one view (or num_views=None for eval), "
                             f"got {num_views}")
        self.size = int(size)
        self.random = num_views is not None
        self.num_views = int(num_views) if num_views is not None else 1
        self.eval_resize = int(eval_resize) if eval_resize is not None else eval_resize_size(self.size)
        if not self.random and self.eval_resize < self.size:
            raise ValueError(f"eval resize {self.eval_resize} is smaller than the crop {self.size}")
        self.dct_scaling = bool(dct_scaling)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | tuple]:
        shape = (self.num_views, self.size, self.size, 3)
        dtype = np.dtype("<u1")
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=dtype)
        pixels = AllocationQuery(shape, dtype)
        if not self.random:
            return state, pixels
        return state, (pixels, AllocationQuery((self.num_views, len(PARAM_COLUMNS)), np.dtype("<i8")))

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = _imdecode_jit()
        size = self.size
        n_views = self.num_views
        resize = self.eval_resize
        dct = self.dct_scaling

        def decode_random(batch_indices, destination, metadata, storage_state):
            pixels, params = destination
            for ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[ix]]
                data = mem_read(field["data_ptr"], storage_state)
                height = np.int64(field["height"])
                width = np.int64(field["width"])
                p = params[ix]
                if not _check_windows(p, height, width):
                    # No raise in a parallel loop (numba would run it serially): mark the
                    # row, blank the views; _CheckedEpochIterator turns the mark into an error.
                    p[0, 4] = _BAD_WINDOW
                    pixels[ix] = 0
                    continue
                d = 1
                if dct:
                    d = _dct_denominator(p, size)
                sh = (height + d - 1) // d
                sw = (width + d - 1) // d
                buf = np.empty(sh * sw * 3, np.uint8)
                imdecode_c(data, buf, height, width, height, width, 0, 0, 1, d, False, False)
                img = buf.reshape(sh, sw, 3)
                for v in range(n_views):
                    y0 = p[v, 0] / d
                    x0 = p[v, 1] / d
                    bh = p[v, 2] / d
                    bw = p[v, 3] / d
                    ylo = int(math.floor(y0))
                    yhi = min(sh, int(math.ceil(y0 + bh)))
                    xlo = int(math.floor(x0))
                    xhi = min(sw, int(math.ceil(x0 + bw)))
                    resize_box(img, y0, x0, bh, bw, ylo, yhi, xlo, xhi, pixels[ix, v], p[v, 4] == 1)
            return pixels[:len(batch_indices)]

        def decode_centre(batch_indices, destination, metadata, storage_state):
            for ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[ix]]
                data = mem_read(field["data_ptr"], storage_state)
                height = np.int64(field["height"])
                width = np.int64(field["width"])
                y0, x0, bh, bw = eval_box(height, width, size, resize)
                box = np.empty((1, 4), np.float64)
                box[0, 0] = y0
                box[0, 1] = x0
                box[0, 2] = bh
                box[0, 3] = bw
                d = 1
                if dct:
                    d = _dct_denominator(box, size)
                sh = (height + d - 1) // d
                sw = (width + d - 1) // d
                buf = np.empty(sh * sw * 3, np.uint8)
                imdecode_c(data, buf, height, width, height, width, 0, 0, 1, d, False, False)
                img = buf.reshape(sh, sw, 3)
                resize_box(img, y0 / d, x0 / d, bh / d, bw / d, 0, sh, 0, sw, destination[ix, 0], False)
            return destination[:len(batch_indices)]

        decode = decode_random if self.random else decode_centre
        decode.is_parallel = True
        return decode
