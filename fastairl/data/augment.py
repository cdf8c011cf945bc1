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
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from fastairl.data.recipes import MEAN, STD, ViewRecipe

__all__ = ["GPUAugment", "gaussian_blur", "shift_hue", "to_grayscale", "PARAM_KEYS"]

#: ITU-R 601-2 luma weights, as torchvision's tensor ``rgb_to_grayscale`` uses them.
_LUMA = (0.2989, 0.587, 0.114)

#: Jitter op indices inside ``params["order"]`` (torchvision ColorJitter's numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

#: The keys of a parameter dict from :meth:`GPUAugment.sample_params`.
PARAM_KEYS = ("jitter", "brightness", "contrast", "saturation", "hue", "order",
              "gray", "blur", "sigma", "solarize", "flip")

#: Gaussian blur window half-width in units of the largest sigma of the recipe. At 3 sigma
#: the dropped tails change a real photo by about 0.04/255 (mean absolute) at sigma 2,
#: a tenth of how far PIL's box-blur approximation itself is from a Gaussian.
BLUR_TRUNCATE = 3.0

#: Pixels per chunk when augmenting on the CPU (see :meth:`GPUAugment.apply`). Measured on
#: 2 cores (moco_plus): at 224 px, chunks of 1 to 4 images run 1.3-1.6x faster than one
#: pass over a 16- or 32-image batch, whose temporaries no longer fit the caches; at 64 px
#: chunks under about 100k pixels lose more to per-op overhead than they gain. Three
#: 224 px images (36 at 64 px) sits in the flat part of both curves.
CPU_CHUNK_PIXELS = 3 * 224 * 224


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(N, 1, H, W)`` of float RGB ``(N, 3, H, W)`` with torchvision's weights."""
    return x[:, 0:1] * _LUMA[0] + x[:, 1:2] * _LUMA[1] + x[:, 2:3] * _LUMA[2]


def _blend_pass(x: torch.Tensor, a: torch.Tensor, cg: torch.Tensor, cm: torch.Tensor,
                need_gray: bool) -> torch.Tensor:
    """One jitter position for every row, in place: ``clamp(a x + cg gray(x) + cm mean(gray(x)))``.

    Brightness is ``(f, 0, 0)``, contrast ``(f, 0, 1-f)``, saturation ``(f, 1-f, 0)`` and
    rows doing nothing here ``(1, 0, 0)``, which leaves ``x`` bit for bit.
    ``a, cg, cm`` are ``(N, 1, 1, 1)``; ``x`` is float and overwritten.
    """
    if not need_gray:
        return x.mul_(a).clamp_(0.0, 1.0)
    g = to_grayscale(x)
    bias = torch.addcmul(g.mean(dim=(-3, -2, -1), keepdim=True).mul_(cm), g, cg)
    return torch.addcmul(bias, x, a, out=x).clamp_(0.0, 1.0)


def _is_max(c: torch.Tensor, maxc: torch.Tensor) -> torch.Tensor:
    """1.0 where channel ``c`` holds the maximum, else 0.0 (``c - max`` is 0 or negative)."""
    return torch.sub(c, maxc).sign_().add_(1.0)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB ``(N, 3, H, W)`` in ``[0, 1]`` by ``shift`` turns ``(N,)``.

    RGB -> HSV follows torchvision (and PIL): the channel holding the maximum picks the
    hue sector, red before green before blue on ties; grey pixels keep hue 0 and
    saturation 0. Writing ``6H = 2 i + (next - prev) / (max - min)`` for the maximum
    channel ``i`` and its cyclic neighbours, the way back is the closed form
    ``c_n = V - V S clamp(min(k, 4-k), 0, 1)`` with ``k = (n + 6H) mod 6`` and
    ``n = 5, 3, 1`` for R, G, B: the same piecewise map as the six-sector table, without
    a gather, and periodic in ``6H``, so the shift is added to ``6H`` unwrapped and one
    ``mod 6`` does the wrapping. ``V S`` is ``max - min`` exactly.

    The sector choice is arithmetic on 0/1 float masks, not ``torch.where``: on the CPU
    a boolean select costs about 20 float passes, and the hue shift is the most
    expensive op of the recipes there, so it is written as few cheap passes as possible.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    rm = _is_max(r, maxc)                       # red is the maximum
    gm = _is_max(g, maxc).mul_(1.0 - rm)        # green is, red is not
    # With bm = 1 - rm - gm (blue): numerator rm (g-b) + gm (b-r) + bm (r-g), and since
    # r-g = -(g-b) - (b-r) that is (rm - bm)(g-b) + (gm - bm)(b-r); offset 2 gm + 4 bm.
    gb, br = g - b, b - r
    num = torch.mul(rm.mul(2.0).add_(gm).sub_(1.0), gb).addcmul_(gm.mul(2.0).add_(rm).sub_(1.0), br)
    # A grey pixel has a zero numerator; the tiny floor keeps 0/0 out.
    h6 = num.div_(delta.clamp(min=1e-30))
    h6.add_(rm.mul_(-4.0).add_(gm, alpha=-2.0).add_(4.0)).add_(shift.to(x.dtype).view(-1, 1, 1) * 6.0)
    n = torch.arange(5.0, 0.0, -2.0, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)  # 5, 3, 1
    k = h6.unsqueeze(1) + n
    k.add_(torch.mul(k, 1.0 / 6.0).floor_(), alpha=-6.0)   # mod 6 (w is 0 at both ends)
    w = torch.minimum(k, torch.sub(4.0, k)).clamp_(0.0, 1.0)
    return torch.addcmul(maxc.unsqueeze(1), delta.unsqueeze(1), w, value=-1.0)


def _gaussian_taps(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``(N, 2 radius + 1)``, one per sigma ``(N,)``."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1).float()) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """True Gaussian blur of float ``(N, C, H, W)`` with a per-image ``sigma`` ``(N,)``.

    This is a sampled, normalised Gaussian of standard deviation ``sigma`` truncated at
    ``radius`` pixels, applied separably (a horizontal then a vertical depthwise
    convolution with one kernel per image): ``2 (2r + 1)`` taps per pixel instead of
    ``(2r + 1)^2``. Borders replicate the edge pixel. Each direction is ``2r + 1``
    multiply-adds of shifted views rather than a grouped convolution: on the CPU that is
    about twice as fast and stays fast on the small cache-sized chunks the CPU path works
    in; on CUDA it is exact float32 (a convolution may run in TF32) and its cost does not
    depend on how many rows are blurred (a grouped convolution over the chosen rows
    changes shape every step, and cuDNN's autotuner would re-tune for each new count).
    ``tests/test_augment.py`` checks it against a grouped convolution.

    Why not exactly the reference: the reference calls PIL's ``GaussianBlur(radius=sigma)``,
    which approximates a Gaussian of that standard deviation with three box blurs on
    uint8 pixels. Measured on the test photographs (scikit-image's astronaut, cat,
    coffee, rocket) over sigma in {0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2}: mean absolute
    difference from PIL at most 0.69/255 at 64 px and 0.59/255 at 224 px (largest near
    sigma 0.7; both are the identity at sigma 0.1); single pixels on sharp edges differ
    by up to about 20 levels, PIL's box shape rather than ours; ``tests/test_augment.py``
    asserts the 64 px bound. Why replicate rather than reflect padding (torchvision's
    ``gaussian_blur`` reflects): PIL extends the edge pixel, and so do we, which is
    measurably closer to PIL near borders (0.55 vs 0.71/255 at sigma 2, 64 px); it also
    works for images smaller than the window.
    """
    n, c, h, w = x.shape
    if n == 0:
        return x
    taps = _gaussian_taps(sigma.to(x.device), radius)  # (N, K)
    return _blur_shifted(_blur_shifted(x, taps, radius, -1), taps, radius, -2)


def _blur_shifted(x: torch.Tensor, taps: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """One direction of the separable blur as multiply-adds of shifted views, edge replicated.

    ``taps`` is ``(N, 2 radius + 1)`` and symmetric; ``dim`` is -1 (rows) or -2 (columns).
    """
    n, size = x.shape[0], x.shape[dim]
    edge_shape = list(x.shape)
    edge_shape[dim] = radius
    first = x.narrow(dim, 0, 1).expand(edge_shape)
    last = x.narrow(dim, size - 1, 1).expand(edge_shape)
    xp = torch.cat([first, x, last], dim)
    w = taps.view(n, 1, 1, 1, -1)
    y = xp.narrow(dim, radius, size) * w[..., radius]
    for k in range(1, radius + 1):
        wk = w[..., radius + k]
        y.addcmul_(xp.narrow(dim, radius - k, size), wk).addcmul_(xp.narrow(dim, radius + k, size), wk)
    return y


def _gray3(x: torch.Tensor) -> torch.Tensor:
    """Grayscale replicated to three channels (a real copy: later ops write in place)."""
    return to_grayscale(x).expand_as(x).contiguous()


def _solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


#: At most this many runs of consecutive rows are processed as slices (views, no gather).
_MAX_RUNS = 2


def _select(flags: list[bool], start: int, stop: int, device: torch.device):
    """Rows ``start:stop`` whose flag is set, local to that range.

    ``None``: no rows; an empty tensor: every row; a list of ``(a, b)`` pairs: that many
    runs of consecutive rows (at most :data:`_MAX_RUNS`, the usual case for the CPU's
    small chunks: slices are views, no gather or scatter); else an index tensor on
    ``device``. The flags are host-side Python booleans, so choosing rows never waits for
    the device.
    """
    local = [i - start for i in range(start, stop) if flags[i]]
    if not local:
        return None
    if len(local) == stop - start:
        return torch.empty(0, dtype=torch.long)
    runs: list[tuple[int, int]] = []
    for i in local:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    if len(runs) <= _MAX_RUNS:
        return runs
    return torch.tensor(local, dtype=torch.long).to(device, non_blocking=True)


def _on_rows(x: torch.Tensor, rows, fn, *per_row: torch.Tensor) -> torch.Tensor:
    """Apply ``fn(x_rows, *per_row_rows)`` to the selected rows of ``x`` (see :func:`_select`).

    ``fn`` must not write into its input (it may get a view of ``x``)."""
    if rows is None:
        return x
    if isinstance(rows, list):
        for a, b in rows:
            x[a:b] = fn(x[a:b], *(p[a:b] for p in per_row))
        return x
    if rows.numel() == 0:
        return fn(x, *per_row)
    out = fn(x.index_select(0, rows), *(p.index_select(0, rows) for p in per_row))
    return x.index_copy_(0, rows, out.to(x.dtype))


class _Plan:
    """Everything :meth:`GPUAugment.apply` decides from the parameters, once per view batch.

    Row choices become host-side lists of booleans and the jitter becomes, per position,
    blend coefficients ``(3, B)`` on the device plus flags, so that working through the
    batch (in one piece on CUDA, in cache-sized chunks on the CPU) costs no per-chunk
    bookkeeping on small tensors and no device synchronisation.
    """

    def __init__(self, params: dict[str, torch.Tensor], v: ViewRecipe, flip_here: bool,
                 device: torch.device) -> None:
        def flags(key: str, used: bool) -> list[bool]:
            return [bool(f) for f in params[key].bool().tolist()] if used else []

        self.gray = flags("gray", v.gray_p > 0)
        self.blur = flags("blur", v.blur_p > 0)
        self.solarize = flags("solarize", v.solarize_p > 0)
        self.flip = flags("flip", v.flip_p > 0 and flip_here)
        self.sigma = params["sigma"].to(device, torch.float32, non_blocking=True) if v.blur_p > 0 else None
        # Jitter: per position k, (coef (3, B, 1, 1, 1) or None, blend flags, gray flags, hue flags).
        self.positions: list[tuple[Optional[torch.Tensor], list[bool], list[bool], list[bool]]] = []
        self.hue: Optional[torch.Tensor] = None
        if v.jitter is None or v.jitter_p <= 0 or not any(j > 0 for j in v.jitter):
            return
        strength = v.jitter
        on = params["jitter"].bool().cpu()
        order = params["order"].to("cpu", torch.long)
        factors = torch.stack([params["brightness"], params["contrast"], params["saturation"]], 1).cpu().float()
        if strength[3] > 0:
            self.hue = params["hue"].to(device, torch.float32, non_blocking=True)
        for k in range(4):
            op = order[:, k]
            # Coefficients of the fused blend; a disabled part (strength 0) is an identity.
            is_b = on & (op == BRIGHTNESS) & (strength[0] > 0)
            is_c = on & (op == CONTRAST) & (strength[1] > 0)
            is_s = on & (op == SATURATION) & (strength[2] > 0)
            blend = is_b | is_c | is_s
            coef = None
            if bool(blend.any()):
                f = factors.gather(1, op.clamp(max=2).view(-1, 1)).squeeze(1)
                a = torch.where(blend, f, torch.ones_like(f))
                cg = torch.where(is_s, 1.0 - f, torch.zeros_like(f))
                cm = torch.where(is_c, 1.0 - f, torch.zeros_like(f))
                coef = torch.stack([a, cg, cm]).to(device, non_blocking=True).view(3, -1, 1, 1, 1)
            hue = (on & (op == HUE)) if strength[3] > 0 else torch.zeros_like(on)
            self.positions.append((coef, blend.tolist(), (is_c | is_s).tolist(), hue.tolist()))


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
    already flipped the crops (``loader.flipped``), so no flip is drawn here.
    """

    def __init__(self, recipe: Sequence[ViewRecipe], out_dtype: torch.dtype = torch.float32,
                 channels_last: bool = True, flip_done: bool = False) -> None:
        super().__init__()
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

    @staticmethod
    def _check_view(i: int, v: ViewRecipe) -> None:
        for name in ("jitter_p", "gray_p", "blur_p", "solarize_p", "flip_p"):
            p = getattr(v, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"view {i}: {name}={p} is not a probability in [0, 1]")
        if v.jitter is not None:
            if len(v.jitter) != 4 or min(v.jitter) < 0:
                raise ValueError(f"view {i}: jitter={v.jitter} must be 4 non-negative strengths (b, c, s, h)")
            if v.jitter[3] > 0.5:
                raise ValueError(f"view {i}: hue jitter {v.jitter[3]} exceeds 0.5 (a half turn)")
        if v.blur_p > 0 and not 0.0 < v.blur_sigma[0] <= v.blur_sigma[1]:
            raise ValueError(f"view {i}: blur_sigma={v.blur_sigma} must satisfy 0 < min <= max")
        if not 0 <= v.solarize_threshold <= 255:
            raise ValueError(f"view {i}: solarize_threshold={v.solarize_threshold} must be in 0..255")

    def extra_repr(self) -> str:
        return (f"views={len(self.recipe)}, out_dtype={self.out_dtype}, "
                f"channels_last={self.channels_last}, flip_done={self.flip_done}")

    # ------------------------------------------------------------------ parameters
    def _jitter_ranges(self, v: ViewRecipe) -> tuple[tuple[float, float], ...]:
        """(low, high) of brightness, contrast, saturation factors and of the hue shift."""
        b, c, s, h = v.jitter if v.jitter is not None else (0.0, 0.0, 0.0, 0.0)
        return ((max(0.0, 1.0 - b), 1.0 + b), (max(0.0, 1.0 - c), 1.0 + c),
                (max(0.0, 1.0 - s), 1.0 + s), (-h, h))

    def _draw(self, view_index: int, batch_size: int,
              generator: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
        """All choices for one view, drawn on the generator's device (CPU by default)."""
        if not 0 <= view_index < len(self.recipe):
            raise IndexError(f"view_index {view_index} out of range for a {len(self.recipe)}-view recipe")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        v = self.recipe[view_index]
        dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch_size, 14, generator=generator, device=dev)
        do_jitter = v.jitter is not None and any(j > 0 for j in v.jitter)
        (b0, b1), (c0, c1), (s0, s1), (h0, h1) = self._jitter_ranges(v)
        sig0, sig1 = v.blur_sigma
        return {
            "jitter": (u[:, 0] < v.jitter_p) if do_jitter else torch.zeros(batch_size, dtype=torch.bool, device=dev),
            "brightness": b0 + (b1 - b0) * u[:, 1],
            "contrast": c0 + (c1 - c0) * u[:, 2],
            "saturation": s0 + (s1 - s0) * u[:, 3],
            "hue": h0 + (h1 - h0) * u[:, 4],
            # argsort of i.i.d. uniforms is a uniformly random permutation per row.
            "order": u[:, 5:9].argsort(dim=1),
            "gray": u[:, 9] < v.gray_p,
            "blur": u[:, 10] < v.blur_p,
            "sigma": sig0 + (sig1 - sig0) * u[:, 11],
            "solarize": u[:, 12] < v.solarize_p,
            "flip": (u[:, 13] < (0.0 if self.flip_done else v.flip_p)),
        }

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
        and returns tensors on ``device`` (the draw device when None).
        """
        params = self._draw(view_index, batch_size, generator)
        if device is None:
            return params
        return {k: t.to(device) for k, t in params.items()}

    # ------------------------------------------------------------------ pixels
    @staticmethod
    def _check_params(params: dict[str, torch.Tensor], batch: int) -> None:
        missing = [k for k in PARAM_KEYS if k not in params]
        if missing:
            raise ValueError(f"augmentation params lack {missing}; get them from GPUAugment.sample_params")
        for k in PARAM_KEYS:
            want = (batch, 4) if k == "order" else (batch,)
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
        plan = _Plan(params, view_recipe, not self.flip_done, x_uint8.device)
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

    def _apply_rows(self, x_uint8: torch.Tensor, plan: _Plan, start: int, v: ViewRecipe,
                    normalize: bool, final: bool = True) -> torch.Tensor:
        """:meth:`apply` on the rows ``start:start + len(x_uint8)`` of the batch; with
        ``final=False`` the result stays float32 and contiguous (the caller converts)."""
        if x_uint8.dtype == torch.uint8:
            x = x_uint8.to(torch.float32).div_(255.0)
        else:
            x = x_uint8.to(torch.float32, copy=True)
        dev = x.device
        stop = start + x.shape[0]
        if plan.gray and v.gray_before_jitter:
            x = _on_rows(x, _select(plan.gray, start, stop, dev), _gray3)
        for coef, blend, need_gray, hue in plan.positions:
            if coef is not None and any(blend[start:stop]):
                c = coef[:, start:stop]
                x = _blend_pass(x, c[0], c[1], c[2], need_gray=any(need_gray[start:stop]))
            if plan.hue is not None:
                x = _on_rows(x, _select(hue, start, stop, dev), shift_hue, plan.hue[start:stop])
        if plan.gray and not v.gray_before_jitter:
            x = _on_rows(x, _select(plan.gray, start, stop, dev), _gray3)
        if plan.blur:
            radius = max(1, math.ceil(BLUR_TRUNCATE * v.blur_sigma[1]))
            x = _on_rows(x, _select(plan.blur, start, stop, dev), lambda t, sg: gaussian_blur(t, sg, radius),
                         plan.sigma[start:stop])
        if plan.solarize:
            thr = v.solarize_threshold / 255.0
            x = _on_rows(x, _select(plan.solarize, start, stop, dev), lambda t: _solarize(t, thr))
        if plan.flip:
            x = _on_rows(x, _select(plan.flip, start, stop, dev), lambda t: t.flip(-1))
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
