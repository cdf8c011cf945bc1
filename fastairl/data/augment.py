"""Batched, per-sample-random augmentation of decoded views, on the training device.

Loader backends hand over uint8 crops ``(B, 3, H, W)``; :class:`GPUAugment` does every
pixel operation of the recipe after the crop, for the whole batch at once, on whatever
device the batch lives on (CUDA in training, CPU in tests and CI). Each op follows the
float-image semantics of ``torchvision.transforms.v2.functional`` (proven op by op in
``tests/test_augment.py``), so the views are the reference's up to the rounding the
reference's PIL path adds:

* brightness ``clamp(f x)``; contrast ``clamp(f x + (1-f) mean(gray(x)))``; saturation
  ``clamp(f x + (1-f) gray(x))``; hue: a shift of H in HSV space (the same rgb->hsv
  conversion as torchvision); the four in a random order *per sample* (torchvision's
  ``ColorJitter`` draws one permutation per call, i.e. per image in the reference),
  applied with probability ``jitter_p``;
* grayscale with torchvision's luma weights (0.2989, 0.587, 0.114), three channels,
  before or after the jitter as the recipe says;
* Gaussian blur, see :func:`gaussian_blur`; solarize ``x >= t/255 -> 1 - x``;
  horizontal flip (skipped when the loader already flipped); normalisation with
  ``MEAN``/``STD``.

Randomness is split from the pixels: :meth:`GPUAugment.sample_params` draws every
per-sample choice into a dict of tensors and :meth:`GPUAugment.apply` applies a given
dict deterministically, so a preview tool can caption views and tests can pin choices.
Parameters are drawn on the CPU by default; knowing the chosen rows on the host lets the
expensive ops (hue, blur) and the masked cheap ones run on exactly the chosen rows with
device-side ``index_select``/``index_copy_`` and no device->host synchronisation. The
blends of the jitter need no row selection at all: every blend is
``a x + b gray(x) + c mean(gray(x))`` with per-sample coefficients, and ``(1, 0, 0)`` is
an exact identity, so each of the four jitter positions is one fused pass over the batch.
The pixel kernels are free functions of tensors only (no ``.item()``), so they can be
``torch.compile``-d; the row bookkeeping stays in eager Python.

Where the pieces live (split for issue #15, every name still importable from here): each
op's recipe fields, parameter keys, draw, plan step, kernel call and folder-pipeline twin
are one entry of :data:`fastairl.data.ops.OPS`, which this module iterates; the kernels are
in :mod:`fastairl.data.augment_ops`, the row bookkeeping in
:mod:`fastairl.data.augment_plan`; this module keeps the checks and the batched entry point.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from fastairl.data import ops as _ops
from fastairl.data.augment_ops import (_LUMA, _blend_pass, _blur_shifted, _gaussian_taps,  # noqa: F401 (re-exported)
                                       _gray3, _is_max, _solarize, gaussian_blur, shift_hue, to_grayscale)
from fastairl.data.augment_plan import (BRIGHTNESS, CONTRAST, HUE, SATURATION,  # noqa: F401 (re-exported)
                                        _MAX_RUNS, _on_rows, _select)
from fastairl.data.ops import BLUR_TRUNCATE, PARAM_KEYS  # noqa: F401 (re-exported)
from fastairl.data.recipes import MEAN, STD, ViewRecipe

__all__ = ["GPUAugment", "gaussian_blur", "shift_hue", "to_grayscale", "PARAM_KEYS"]

#: Pixels per chunk when augmenting on the CPU (see :meth:`GPUAugment.apply`): small
#: enough that a chunk's temporaries stay in the caches, large enough that per-op
#: overhead does not dominate (the measurement is in ``docs/data-backends.md``).
CPU_CHUNK_PIXELS = 3 * 224 * 224


def normalize_uint8(x: torch.Tensor, channels_last: bool = False,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> normalised float: the eval transform's ToTensor + Normalize
    for backends that hand over raw crops (validation, kNN, linear-eval features)."""
    mean = torch.tensor(MEAN, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    y = (x.float() / 255.0 - mean) / std
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return y.to(dtype=out_dtype, memory_format=fmt)


class GPUAugment(torch.nn.Module):
    """Every post-crop op of a recipe, batched with per-sample random parameters.

    ``recipe`` has one :class:`ViewRecipe` per view; ``forward`` takes the matching list
    of uint8 ``(B, 3, H, W)`` views and returns normalised views in ``out_dtype``
    (float32, float16 or bfloat16; the arithmetic is float32 either way), in
    channels_last layout if ``channels_last``. ``flip_done=True`` says the loader
    already flipped the crops (``loader.flipped``), so no flip is drawn here. The ops
    are those of :data:`fastairl.data.ops.OPS` when the module is built.
    """

    def __init__(self, recipe: Sequence[ViewRecipe], out_dtype: torch.dtype = torch.float32,
                 channels_last: bool = True, flip_done: bool = False) -> None:
        super().__init__()
        self.ops = tuple(_ops.OPS)
        views = tuple(recipe)
        if not views:
            raise ValueError("GPUAugment needs a recipe with at least one ViewRecipe; use "
                             "fastairl.data.recipes.get_recipe(name)")
        for i, v in enumerate(views):
            if not isinstance(v, ViewRecipe):
                raise TypeError(f"recipe entry {i} is {type(v).__name__}, expected a ViewRecipe; "
                                "use fastairl.data.recipes.get_recipe(name)")
            self._check_view(i, v)
        if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"out_dtype must be torch.float32, torch.float16 or torch.bfloat16, got {out_dtype}")
        self.recipe = views
        self.out_dtype = out_dtype
        self.channels_last = bool(channels_last)
        self.flip_done = bool(flip_done)
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def _check_view(self, i: int, v: ViewRecipe) -> None:
        for op in self.ops:
            p = getattr(v, op.prob)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"view {i}: {op.prob}={p} is not a probability in [0, 1]")
        for op in self.ops:
            op.check(i, v)

    def extra_repr(self) -> str:
        return (f"views={len(self.recipe)}, out_dtype={self.out_dtype}, "
                f"channels_last={self.channels_last}, flip_done={self.flip_done}")

    # ------------------------------------------------------------------ parameters
    def _draw(self, view_index: int, batch_size: int,
              generator: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
        """All choices for one view, drawn on the generator's device (CPU by default)."""
        if not 0 <= view_index < len(self.recipe):
            raise IndexError(f"view_index {view_index} out of range for a {len(self.recipe)}-view recipe")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        dev = generator.device if generator is not None else torch.device("cpu")
        return _ops.draw(self.ops, self.recipe[view_index], batch_size, generator, dev, self.flip_done)

    def sample_params(self, view_index: int, batch_size: int, device: torch.device | str | None = None,
                      generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Draw the per-sample choices of view ``view_index`` for ``batch_size`` images.

        Keys (all ``(B,)`` unless said): ``jitter`` (bool, colour jitter applied),
        ``brightness``/``contrast``/``saturation`` (factors), ``hue`` (shift in turns),
        ``order`` (``(B, 4)`` int64 permutation of 0=brightness, 1=contrast,
        2=saturation, 3=hue, applied left to right), ``gray``, ``blur`` (bool),
        ``sigma`` (blur std in pixels), ``solarize``, ``flip`` (bool; all False when
        ``flip_done``). Factors are drawn even where their op is off so every row has
        a caption; a jitter strength of 0 in the recipe disables that part (as
        torchvision's ``None``). Draws on ``generator``'s device (the CPU when None)
        and returns tensors on ``device`` (the draw device when None). The keys and
        the draw order are those of :data:`fastairl.data.ops.OPS`.
        """
        params = self._draw(view_index, batch_size, generator)
        if device is None:
            return params
        return {k: t.to(device) for k, t in params.items()}

    # ------------------------------------------------------------------ pixels
    def _check_params(self, params: dict[str, torch.Tensor], batch: int) -> None:
        keys = {k: shape for op in self.ops for k, shape in op.keys.items()}
        missing = [k for k in keys if k not in params]
        if missing:
            raise ValueError(f"augmentation params lack {missing}; get them from GPUAugment.sample_params")
        for k, shape in keys.items():
            want = (batch, *shape)
            if tuple(params[k].shape) != want:
                raise ValueError(f"augmentation param {k!r} has shape {tuple(params[k].shape)}, "
                                 f"expected {want} for a batch of {batch}")

    def apply(self, x_uint8: torch.Tensor, params: dict[str, torch.Tensor], view_recipe: ViewRecipe,
              normalize: bool = True) -> torch.Tensor:
        """Apply ``params`` (from :meth:`sample_params`) to one view batch, deterministically.

        ``x_uint8`` is ``(B, 3, H, W)`` uint8 (a float tensor is taken as already in
        ``[0, 1]``). Returns the normalised view in ``out_dtype`` and the configured
        memory format, or with ``normalize=False`` the float32 ``[0, 1]`` image before
        normalisation (for previews and tests). Which ops exist comes from
        ``view_recipe`` (an op with probability 0 or strength 0 is skipped); which rows get
        them and with what strength comes from ``params`` only.

        On the CPU the batch is processed in chunks of about :data:`CPU_CHUNK_PIXELS`
        pixels (see the code below for why).
        """
        if not isinstance(x_uint8, torch.Tensor) or x_uint8.dim() != 4 or x_uint8.shape[1] != 3:
            shape = tuple(x_uint8.shape) if isinstance(x_uint8, torch.Tensor) else type(x_uint8).__name__
            raise ValueError(f"a view must be a (B, 3, H, W) tensor, got {shape}")
        if x_uint8.dtype != torch.uint8 and not x_uint8.dtype.is_floating_point:
            raise ValueError(f"a view must be uint8 (or float in [0, 1]), got {x_uint8.dtype}")
        batch, _, h, w = x_uint8.shape
        self._check_params(params, batch)
        plan = _ops.Plan(self.ops, params, view_recipe, self.flip_done, x_uint8.device)
        chunk = batch
        if x_uint8.device.type == "cpu":
            chunk = max(1, min(batch, CPU_CHUNK_PIXELS // max(1, h * w)))
        if chunk >= batch:
            return self._apply_rows(x_uint8, plan, 0, view_recipe, normalize)
        # CPU: each chunk of rows goes through every op before the next chunk starts, so
        # the dozens of element-wise passes hit the core's cache instead of streaming the
        # whole batch through memory once per pass. Every op is per image, so the result
        # is the one of a single pass over the batch.
        fmt = torch.channels_last if (normalize and self.channels_last) else torch.contiguous_format
        out = torch.empty(x_uint8.shape, dtype=self.out_dtype if normalize else torch.float32, memory_format=fmt)
        for s in range(0, batch, chunk):
            # One copy per chunk converts to the output's layout and dtype.
            out[s:s + chunk].copy_(self._apply_rows(x_uint8[s:s + chunk], plan, s, view_recipe, normalize,
                                                    final=False))
        return out

    def _apply_rows(self, x_uint8: torch.Tensor, plan: _ops.Plan, start: int, v: ViewRecipe,
                    normalize: bool, final: bool = True) -> torch.Tensor:
        """:meth:`apply` on the rows ``start:start + len(x_uint8)`` of the batch; with
        ``final=False`` the result stays float32 and contiguous (the caller converts)."""
        if x_uint8.dtype == torch.uint8:
            x = x_uint8.to(torch.float32).div_(255.0)
        else:
            x = x_uint8.to(torch.float32, copy=True)
        dev = x.device
        x = plan.apply(x, start, v)
        if not normalize:
            return x
        mean, std = self.mean, self.std
        if mean.device != dev:  # a module left on the CPU: copy without waiting for the device
            mean, std = mean.to(dev, non_blocking=True), std.to(dev, non_blocking=True)
        x = x.sub_(mean).div_(std)
        if not final:
            return x
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(dtype=self.out_dtype, memory_format=fmt)

    def forward(self, views: list[torch.Tensor], generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        """Augment and normalise each view with fresh per-sample parameters.

        ``generator`` makes the draw reproducible; a CPU generator (or None, the global
        CPU RNG) keeps the whole call free of device->host synchronisation, a CUDA one
        works too but pays one small sync per masked op.
        """
        if not isinstance(views, (list, tuple)) or len(views) != len(self.recipe):
            n = len(views) if isinstance(views, (list, tuple)) else type(views).__name__
            raise ValueError(f"GPUAugment expects a list of {len(self.recipe)} views (one per ViewRecipe), got {n}")
        out = []
        for i, (x, v) in enumerate(zip(views, self.recipe)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise ValueError(f"view {i} must be a (B, 3, H, W) uint8 tensor")
            out.append(self.apply(x, self._draw(i, x.shape[0], generator), v))
        return out
