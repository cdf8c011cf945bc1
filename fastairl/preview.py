"""``python -m fastairl.preview``: look at the augmented views before spending GPU days on them.

    python -m fastairl.preview --exp byol --data demo --loader folder --pairs 16 --out byol_views.png
    python -m fastairl.preview --exp moco_v2p --data demo --loader nvjpeg --pairs 64 --dump views.pt --seed 0 --stats

Why this exists: an augmentation recipe is a handful of probabilities and ranges, and a
loader that silently drops an op (or applies it twice, or in the wrong colour space)
still trains, only worse. Looking at the views, and counting what was applied, is the
cheapest check there is, and comparing loaders the same way is how one finds out why
accuracy moved when the loader changed.

What it does, for ``--pairs N`` samples:

1. builds the loader the trainer builds (same :class:`~fastairl.data.base.LoaderSpec`:
   data root, recipe, image size, per-process batch, workers, seed, device) through
   :func:`fastairl.data.build_loader`, and iterates it from ``--epoch`` on, into the next
   epochs when ``N`` exceeds one;
2. turns every batch into what the trainer's model receives: the ``folder`` loader's
   normalised float views as they are; the uint8 views of the other backends through
   :class:`~fastairl.data.augment.GPUAugment`, configured as the trainer configures it,
   with per-sample parameters from ``sample_params`` applied by ``apply`` (so the
   captions are the parameters that made the pixels);
3. recovers the parameters drawn *inside* the loader:

   * ``folder``: torchvision draws them in DataLoader worker processes. The preview
     replays each batch in this process: a shallow copy of the loader's own dataset,
     whose ImageFolder runs the same transform pipeline
     (:func:`fastairl.data.folder.view_transform`) with recording hooks, is indexed with
     the batch's sample indices on the random streams of the worker that made the batch
     (the DataLoader's base seed, ``base + worker_id``, its ``worker_init_fn``; a dataset
     that seeds each sample itself needs none of that and gets the same treatment). The
     replayed view must equal the loader's bit for bit, or the preview stops with an
     error rather than caption a view with parameters that did not make it;
   * a loader with ``crop_params(epoch, batch_no, heights, widths)`` (``ffcv``,
     ``nvjpeg``, ``dali``): its crop windows and flips, from the image sizes (the
     loader draws them from (seed, epoch, rank, batch) before decoding);
   * a loader without (a third-party backend): the caption says
     ``crop: drawn inside <backend>``;
4. writes what was asked: a PNG grid (``--out``), a dump (``--dump``), a statistics
   table (``--stats``).

The dump (``torch.save``, loadable with ``weights_only=True``) holds ``views`` (one
``(N, 3, S, S)`` float32 tensor per view, normalised, exactly the model's input),
``params`` (one dict per view, see :data:`PARAM_DOC`), ``labels``, ``indices``
(dataset indices), ``epochs`` (the epoch each pair came from), ``measures`` (per-view
brightness and saturation) and ``meta`` (the settings, the recipe, where each
parameter came from).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from fastairl.atomic_io import DUMP_NOTE_BYTES, atomic_write, default_output_path, tensor_bytes
from fastairl.data.augment import PARAM_KEYS, GPUAugment, to_grayscale
from fastairl.data.demo_packed import ensure_demo_packed
from fastairl.data.recipes import MEAN, STD, ViewRecipe, get_recipe

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger("fastairl.preview")

__all__ = ["PreviewOptions", "PreviewResult", "PreviewError", "GridGeometry", "collect", "render_grid",
           "grid_geometry", "default_cell", "view_caption", "compute_stats", "format_stats", "save_dump",
           "load_dump", "denormalize", "build_parser", "main", "DUMP_FORMAT", "PARAM_DOC"]

#: Identifies the dump layout; bumped if the layout changes.
DUMP_FORMAT = "fastairl.preview/1"

#: Keys of each per-view parameter dict in a dump (all tensors with N rows).
PARAM_DOC = {
    "box": "(N, 4) int64 crop window (top, left, height, width) in source pixels; -1 where not reported",
    "src_hw": "(N, 2) int64 source image (height, width); -1 where not reported",
    "scale": "(N,) float64 crop area / image area; NaN where not reported",
    "flip": "(N,) bool horizontal flip (meta['flip_source'] says whether it is known)",
    "jitter": "(N,) bool colour jitter applied",
    "brightness": "(N,) float64 factor (NaN where the loader drew none)",
    "contrast": "(N,) float64 factor (NaN where the loader drew none)",
    "saturation": "(N,) float64 factor (NaN where the loader drew none)",
    "hue": "(N,) float64 hue shift in turns (NaN where the loader drew none)",
    "order": "(N, 4) int64 jitter order, 0=brightness 1=contrast 2=saturation 3=hue; -1 where none drawn",
    "gray": "(N,) bool grayscale applied",
    "blur": "(N,) bool Gaussian blur applied",
    "sigma": "(N,) float64 blur sigma in pixels (NaN where the loader drew none)",
    "solarize": "(N,) bool solarize applied",
}

#: Grid layout (pixels): gap between cells and around the grid.
PAD = 6
#: Lines of caption text under every cell.
CAPTION_LINES = 5
#: Display colours of the views' crop boxes and caption headings (RGB), view 1 first.
VIEW_COLOURS = ((215, 40, 40), (35, 95, 230), (30, 150, 60), (200, 130, 0))
_BACKGROUND = (255, 255, 255)
_LETTERBOX = (200, 200, 200)
_TEXT = (20, 20, 20)

_MEAN = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)


class PreviewError(Exception):
    """A problem the user can fix (a flag, a path, a dataset too small); one line, exit code 2."""


# --------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------

@dataclass
class PreviewOptions:
    """What to preview. ``None`` fields take the experiment's value (as the trainer would)."""

    exp: str | None = None
    recipe: str | None = None
    data: str = "demo"
    loader: str | None = None
    pairs: int = 16
    batch_size: int = 32
    workers: int | None = None
    seed: int | None = None
    epoch: int = 0
    image_size: int | None = None
    device: str = "auto"
    ckpt: str | None = None     # a fastairl checkpoint: its stored config stands in for --exp
    keep_views: bool = True     # keep every view (for --dump); False keeps only the first `rows`
    rows: int = 16              # pairs whose views and source images are kept for the grid


@dataclass
class PreviewResult:
    """The produced pairs: views as the trainer's model receives them, and what made them."""

    views: list[torch.Tensor]                 # per view (N or rows, 3, S, S) float32, normalised, CPU
    params: list[dict[str, torch.Tensor]]     # per view, keys of PARAM_DOC, N rows
    measures: list[dict[str, torch.Tensor]]   # per view: brightness, saturation (N,)
    labels: torch.Tensor                      # (N,) int64
    indices: torch.Tensor                     # (N,) int64 dataset indices (-1 where not reported)
    epochs: torch.Tensor                      # (N,) int64
    sources: list[np.ndarray | None]          # first `rows` source images, (H, W, 3) uint8
    meta: dict = field(default_factory=dict)

    @property
    def num_pairs(self) -> int:
        return int(self.labels.shape[0])

    def as_dump(self) -> dict:
        """The dump layout (plain containers of tensors, loadable with ``weights_only=True``)."""
        return {"format": DUMP_FORMAT, "views": self.views, "params": self.params, "measures": self.measures,
                "labels": self.labels, "indices": self.indices, "epochs": self.epochs, "meta": self.meta}


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

def denormalize(views: torch.Tensor) -> torch.Tensor:
    """Normalised ``(N, 3, H, W)`` views back to ``[0, 1]`` RGB (clamped), float32 on the CPU."""
    x = views.detach().to("cpu", torch.float32)
    return (x * _STD + _MEAN).clamp_(0.0, 1.0)


def _to_uint8_hwc(x01: torch.Tensor) -> np.ndarray:
    """One ``(3, H, W)`` image in ``[0, 1]`` -> ``(H, W, 3)`` uint8 for PIL."""
    return (x01 * 255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _measures(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view brightness (mean luma) and saturation (mean HSV saturation), on ``[0, 1]`` RGB.

    Computed after denormalisation, so they read like the image a person sees, and the
    same way for every loader.
    """
    x = denormalize(views)
    luma = to_grayscale(x).mean(dim=(1, 2, 3))
    mx = x.amax(dim=1)
    mn = x.amin(dim=1)
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-12), torch.zeros_like(mx)).mean(dim=(1, 2))
    return {"brightness": luma, "saturation": sat}


def _empty_params(n: int) -> dict[str, torch.Tensor]:
    """Parameter dict for ``n`` views with every value 'not drawn / not reported'."""
    nan = torch.full((n,), float("nan"), dtype=torch.float64)  # float64: Python-float draws stay exact
    off = torch.zeros(n, dtype=torch.bool)
    return {"box": torch.full((n, 4), -1, dtype=torch.int64), "src_hw": torch.full((n, 2), -1, dtype=torch.int64),
            "scale": nan.clone(), "flip": off.clone(), "jitter": off.clone(), "brightness": nan.clone(),
            "contrast": nan.clone(), "saturation": nan.clone(), "hue": nan.clone(),
            "order": torch.full((n, 4), -1, dtype=torch.int64), "gray": off.clone(), "blur": off.clone(),
            "sigma": nan.clone(), "solarize": off.clone()}


def _cat_params(parts: list[dict[str, torch.Tensor]], n: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}


# --------------------------------------------------------------------------------------
# Source images (the grid's first column and the image sizes crop windows refer to)
# --------------------------------------------------------------------------------------

class _Images:
    """Random access, by dataset index, to the images a loader reads.

    Found from the loader itself where it says (the folder loader's ImageFolder, the
    nvjpeg loader's source, the ffcv loader's .beton path), else from the data root the
    same way every backend lists a split: ``<root>/<split>/`` in ImageFolder order, or
    ``<root>/<split>.beton``.
    """

    def __init__(self, loader: Any, root: Path, split: str) -> None:
        self.paths: list[str] | None = None
        self.reader = None
        dataset = getattr(loader, "dataset", None)
        source = getattr(loader, "source", None)
        path = getattr(loader, "path", None)
        if dataset is not None and hasattr(dataset, "samples"):
            self.paths = [p for p, _ in dataset.samples]
        elif source is not None and hasattr(source, "paths"):
            self.paths = list(source.paths)
        elif source is not None and hasattr(source, "reader"):
            self.reader = source.reader
        elif path is not None and str(path).endswith(".beton"):
            from fastairl.data.beton import BetonReader
            self.reader = BetonReader(path)
        elif (root / split).is_dir():
            from fastairl.data.folder import image_folder
            self.paths = [p for p, _ in image_folder(root / split).samples]
        elif (root / f"{split}.beton").is_file():
            from fastairl.data.beton import BetonReader
            self.reader = BetonReader(root / f"{split}.beton")

    @property
    def available(self) -> bool:
        return self.paths is not None or self.reader is not None

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) of image ``i`` as decoded (header only for files)."""
        if self.reader is not None:
            return int(self.reader.heights[i]), int(self.reader.widths[i])
        from PIL import Image
        with Image.open(self.paths[i]) as im:  # lazy: reads the header, not the pixels
            w, h = im.size
        return h, w

    def image(self, i: int) -> np.ndarray:
        """Decoded ``(H, W, 3)`` uint8 RGB of image ``i``."""
        if self.reader is not None:
            return np.ascontiguousarray(self.reader.image(i))
        from PIL import Image
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------------------
# The folder loader: replay the workers' random streams through a recording pipeline
# --------------------------------------------------------------------------------------

class _RecordingView:
    """The folder loader's torchvision pipeline for one view, with hooks that note each draw.

    The pipeline is built by the same function the loader uses
    (:func:`fastairl.data.folder.view_transform`); the hooks change no random draw and no
    pixel: crop and jitter parameters are caught where the transforms ask for them
    (their ``get_params``), random-apply decisions by whether the wrapped op ran,
    grayscale and flip by whether the transform returned a new image, and the blur sigma
    by reading the value the blur is about to draw from Python's ``random`` (state saved
    and restored around the read).
    """

    def __init__(self, v: ViewRecipe, size: int) -> None:
        from torchvision import transforms as T

        from fastairl.data.folder import PILGaussianBlur, PILSolarize, view_transform

        self._T, self._Blur, self._Solarize = T, PILGaussianBlur, PILSolarize
        self.rec: dict[str, Any] = {}
        self.compose = view_transform(v, size)
        self.compose.transforms = [self._wrap(t) for t in self.compose.transforms]

    def __call__(self, img) -> tuple[torch.Tensor, dict[str, Any]]:
        self.rec = {}
        out = self.compose(img)
        return out, self.rec

    # -- hooks
    def _wrap(self, t):
        T = self._T
        if isinstance(t, T.RandomResizedCrop):
            draw = type(t).get_params

            def get_params(img, scale, ratio):
                box = draw(img, scale, ratio)
                w, h = img.size
                self.rec["box"] = tuple(int(b) for b in box)
                self.rec["src_hw"] = (int(h), int(w))
                return box

            t.get_params = get_params  # instance attribute: shadows the static method for this object only
            return t
        if isinstance(t, T.ColorJitter):
            return self._hook_jitter(t)
        if isinstance(t, T.RandomApply):
            t.transforms = [self._wrap_applied(inner) for inner in t.transforms]
            return t
        if isinstance(t, T.RandomGrayscale):
            return _Observed(t, lambda done: self.rec.__setitem__("gray", done))
        if isinstance(t, T.RandomHorizontalFlip):
            return _Observed(t, lambda done: self.rec.__setitem__("flip", done))
        if isinstance(t, (T.ToTensor, T.Normalize)):
            return t
        raise RuntimeError(f"fastairl.preview cannot report the parameters of {t!r} in the folder loader's "
                           f"pipeline; teach fastairl/preview.py (_RecordingView) about it")

    def _hook_jitter(self, t):
        draw = type(t).get_params

        def get_params(brightness, contrast, saturation, hue):
            fn_idx, b, c, s, h = draw(brightness, contrast, saturation, hue)
            self.rec.update(jitter=True, order=[int(k) for k in fn_idx], brightness=b, contrast=c,
                            saturation=s, hue=h)
            return fn_idx, b, c, s, h

        t.get_params = get_params
        return t

    def _wrap_applied(self, inner):
        T = self._T
        if isinstance(inner, T.ColorJitter):
            return self._hook_jitter(inner)
        if isinstance(inner, self._Blur):
            def blur(img, _inner=inner):
                state = random.getstate()
                sigma = random.uniform(*_inner.sigma)  # the value the blur draws next
                random.setstate(state)
                self.rec.update(blur=True, sigma=sigma)
                return _inner(img)
            return blur
        if isinstance(inner, self._Solarize):
            def solarize(img, _inner=inner):
                self.rec["solarize"] = True
                return _inner(img)
            return solarize
        raise RuntimeError(f"fastairl.preview cannot report the parameters of {inner!r} in the folder loader's "
                           f"pipeline; teach fastairl/preview.py (_RecordingView) about it")


class _RecordingMultiView:
    """Stands in for the loader's per-sample transform: every view's recording pipeline,
    plus the decoded source image, kept for the caller after each call."""

    def __init__(self, views: list[_RecordingView]) -> None:
        self.views = views
        self.records: list[dict[str, Any]] = []
        self.source: np.ndarray | None = None

    def __call__(self, img) -> list[torch.Tensor]:
        self.source = np.asarray(img)
        outs, self.records = [], []
        for v in self.views:
            out, rec = v(img)
            outs.append(out)
            self.records.append(rec)
        return outs


def _recording_dataset(dataset, transform: _RecordingMultiView):
    """A shallow copy of the folder loader's dataset whose images go through ``transform``.

    Everything else (sample list, image loading, any per-sample seeding or replacement of
    unreadable files the dataset does) is the loader's own code, so calling the copy in
    this process does what a worker does. The transform lives on the ImageFolder, either
    the dataset itself or the one it wraps (``.base``).
    """
    clone = copy.copy(dataset)
    if hasattr(clone, "samples") and hasattr(clone, "transform"):
        clone.transform = transform
        return clone
    inner = getattr(clone, "base", None)
    if inner is not None and hasattr(inner, "samples") and hasattr(inner, "transform"):
        inner = copy.copy(inner)
        inner.transform = transform
        clone.base = inner
        return clone
    raise RuntimeError(f"fastairl.preview cannot find the ImageFolder inside the folder loader's dataset "
                       f"({type(dataset).__name__}); update fastairl/preview.py (_recording_dataset)")


class _Observed:
    """Runs a random on/off transform and reports whether it acted.

    torchvision's RandomGrayscale and RandomHorizontalFlip return the very input object
    when they do nothing and a new image when they act, so identity tells which.
    """

    def __init__(self, t, note: Callable[[bool], None]) -> None:
        self.t, self.note = t, note

    def __call__(self, img):
        out = self.t(img)
        self.note(out is not img)
        return out


class _GlobalRNG:
    """Save and restore the process-global torch CPU, Python and numpy random states."""

    def __enter__(self) -> "_GlobalRNG":
        self.saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        return self

    def __exit__(self, *exc) -> None:
        t, p, n = self.saved
        torch.set_rng_state(t)
        random.setstate(p)
        np.random.set_state(n)


def _worker_streams(dl, base_seed: int) -> list[list]:
    """The (torch, python) random states each DataLoader worker starts an epoch with.

    torch's worker loop seeds ``random`` and torch with ``base_seed + worker_id`` (numpy
    too) and then calls ``worker_init_fn(worker_id)``; the same steps run here, in this
    process, with the global states saved and restored around them. (With no workers
    there is one stream: the one this process runs the transforms on.)
    """
    n = max(1, int(dl.num_workers))
    streams = []
    with _GlobalRNG():
        for w in range(n):
            seed = base_seed + w
            random.seed(seed)
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed % 2**32)
            if dl.num_workers > 0 and dl.worker_init_fn is not None:
                dl.worker_init_fn(w)
            streams.append([torch.get_rng_state(), random.getstate()])
    return streams


def _replay(stream: list, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a worker's random streams (advancing them), leaving the global ones as found."""
    with _GlobalRNG():
        torch.set_rng_state(stream[0])
        random.setstate(stream[1])
        out = fn()
        stream[0], stream[1] = torch.get_rng_state(), random.getstate()
    return out


def _folder_params(records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    p = _empty_params(len(records))
    for r, rec in enumerate(records):
        if "box" in rec:
            t, l, h, w = rec["box"]
            H, W = rec["src_hw"]
            p["box"][r] = torch.tensor(rec["box"])
            p["src_hw"][r] = torch.tensor(rec["src_hw"])
            p["scale"][r] = (h * w) / float(H * W)
        p["flip"][r] = bool(rec.get("flip", False))
        p["gray"][r] = bool(rec.get("gray", False))
        p["blur"][r] = bool(rec.get("blur", False))
        p["solarize"][r] = bool(rec.get("solarize", False))
        if rec.get("blur"):
            p["sigma"][r] = float(rec["sigma"])
        if rec.get("jitter"):
            p["jitter"][r] = True
            p["order"][r] = torch.tensor(rec["order"])
            for k in ("brightness", "contrast", "saturation", "hue"):
                if rec[k] is not None:
                    p[k][r] = float(rec[k])
    return p


# --------------------------------------------------------------------------------------
# Collecting pairs
# --------------------------------------------------------------------------------------

@dataclass
class _Batch:
    views: list[torch.Tensor]            # normalised float, CPU
    params: list[dict[str, torch.Tensor]]
    labels: torch.Tensor
    indices: torch.Tensor
    sources: list[Callable[[], np.ndarray | None]]  # lazy source images, one per pair


def _resolve_settings(opts: PreviewOptions) -> dict:
    """Experiment defaults + flags -> the values the loader and the grid use."""
    from fastairl.config import ConfigError
    from fastairl.eval.scale import preview_config

    if opts.exp is None and opts.recipe is None and opts.ckpt is None:
        raise PreviewError("give --exp NAME (the experiment's recipe and settings), --ckpt RUN.pth or --recipe NAME")
    try:
        cfg, image_size, size_note = preview_config(opts)  # eval_scale: --exp or --ckpt; size: flag, ckpt, demo
    except ConfigError as e:
        raise PreviewError(f"--exp {opts.exp}: {e}") from None
    recipe_name = opts.recipe if opts.recipe is not None else cfg.recipe
    try:
        recipe = get_recipe(recipe_name)
    except ValueError as e:
        raise PreviewError(f"--recipe {recipe_name}: {e}") from None
    checks = (("--pairs", opts.pairs, 1), ("--batch-size", opts.batch_size, 1), ("--epoch", opts.epoch, 0),
              ("--image-size", opts.image_size, 8), ("--workers", opts.workers, 0), ("--rows", opts.rows, 1),
              ("--seed", opts.seed, 0))
    for flag, value, lo in checks:
        if value is not None and (not isinstance(value, int) or value < lo):
            raise PreviewError(f"{flag} {value}: must be an integer >= {lo}")
    log.info("%s", size_note)
    return {"cfg": cfg, "recipe_name": recipe_name, "recipe": recipe,
            "image_size": image_size,
            "workers": opts.workers if opts.workers is not None else cfg.workers,
            "seed": opts.seed if opts.seed is not None else cfg.seed,
            "loader": opts.loader if opts.loader is not None else cfg.loader}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise PreviewError("--device cuda: no CUDA device is visible to torch (use --device cpu)")
        return torch.device("cuda", torch.cuda.current_device())
    raise PreviewError(f"--device {name}: choose auto, cpu or cuda")


def collect(opts: PreviewOptions) -> PreviewResult:
    """Produce ``opts.pairs`` pairs with the chosen loader and recover their parameters."""
    from fastairl.data import build_loader, choose_loader, resolve_data
    from fastairl.data.base import LoaderSpec

    s = _resolve_settings(opts)
    device = _resolve_device(opts.device)
    root = resolve_data(opts.data)
    name = choose_loader(s["loader"], root, device.type)
    if name == "ffcv" and opts.data == "demo" and not (root / "train.beton").is_file():
        root = ensure_demo_packed(root)
    spec = LoaderSpec(root=str(root), split="train", recipe=s["recipe_name"], image_size=s["image_size"],
                      batch_size=opts.batch_size, rank=0, world_size=1, device=str(device),
                      workers=s["workers"], seed=s["seed"], train=True)
    loader = build_loader(name, spec)
    try:
        return _collect_from(loader, name, spec, root, s["recipe"], opts, device)
    finally:
        if callable(getattr(loader, "close", None)):
            loader.close()


def _collect_from(loader, name: str, spec, root: Path, recipe: tuple[ViewRecipe, ...], opts: PreviewOptions,
                  device: torch.device) -> PreviewResult:
    """Iterate ``loader`` until ``opts.pairs`` pairs are in, keeping what the outputs need."""
    n_views = len(recipe)
    if len(loader) == 0:
        raise PreviewError(f"--batch-size {opts.batch_size}: larger than the {name} loader's epoch on "
                           f"{root}; lower --batch-size")
    meta = {"exp": opts.exp, "recipe": spec.recipe, "recipe_views": [_recipe_dict(v) for v in recipe],
            "loader": name, "data": str(root), "seed": int(spec.seed), "epoch": int(opts.epoch),
            "batch_size": int(spec.batch_size), "workers": int(spec.workers), "image_size": int(spec.image_size),
            "device": str(device), "pairs": int(opts.pairs), "classes": list(getattr(loader, "classes", [])),
            "mean": list(MEAN), "std": list(STD), "output": loader.output,
            "loader_flipped": bool(getattr(loader, "flipped", False))}
    if loader.output == "normalized":
        batches = _folder_batches(loader, recipe, spec, opts.epoch, meta)
    elif loader.output == "uint8":
        batches = _uint8_batches(loader, recipe, spec, opts.epoch, _Images(loader, root, "train"), meta, name)
    else:
        raise RuntimeError(f"the {name} loader hands over {loader.output!r} views; fastairl.preview knows "
                           f"'normalized' and 'uint8' (see fastairl/data/base.py)")

    n, rows = opts.pairs, min(opts.rows, opts.pairs)
    views: list[list[torch.Tensor]] = [[] for _ in range(n_views)]
    params: list[list[dict]] = [[] for _ in range(n_views)]
    measures: list[list[dict]] = [[] for _ in range(n_views)]
    labels, indices, epochs, sources = [], [], [], []
    got = 0
    try:
        for epoch, b in batches:
            take = min(n - got, b.labels.shape[0])
            for v in range(n_views):
                x = b.views[v][:take]
                measures[v].append(_measures(x))
                params[v].append({k: t[:take] for k, t in b.params[v].items()})
                if opts.keep_views or got < rows:
                    views[v].append(x if opts.keep_views else x[:max(0, rows - got)])
            labels.append(b.labels[:take])
            indices.append(b.indices[:take])
            epochs.append(torch.full((take,), epoch, dtype=torch.int64))
            for k in range(take):
                if got + k < rows:
                    sources.append(b.sources[k]())
            got += take
            if got >= n:
                break
    finally:
        batches.close()
    return PreviewResult(
        views=[torch.cat(v)[: (n if opts.keep_views else rows)] for v in views],
        params=[_cat_params(p, n) for p in params],
        measures=[{k: torch.cat([m[k] for m in ms]) for k in ms[0]} for ms in measures],
        labels=torch.cat(labels).to(torch.int64), indices=torch.cat(indices).to(torch.int64),
        epochs=torch.cat(epochs), sources=sources, meta=meta)


def _recipe_dict(v: ViewRecipe) -> dict:
    return {k: (list(x) if isinstance(x, tuple) else x) for k, x in dataclasses.asdict(v).items()}


def _folder_batches(loader, recipe: Sequence[ViewRecipe], spec, start_epoch: int,
                    meta: dict) -> Iterator[tuple[int, _Batch]]:
    """Batches of the reference-style loader, with the parameters its workers drew.

    Each batch is replayed in this process: a copy of the loader's dataset with a
    recording transform is indexed with the batch's sample indices while the random
    streams are those of the worker that produced the batch (batch ``k`` goes to worker
    ``k % workers``, in order). A dataset that seeds every sample itself makes the
    streams irrelevant; one that relies on the worker's streams gets exactly them. The
    replayed views must equal the loader's bit for bit.
    """
    dl = loader.loader
    recorder = _RecordingMultiView([_RecordingView(v, spec.image_size) for v in recipe])
    meta["crop_source"] = ["folder loader, replayed in the preview (checked bit-exact)"] * len(recipe)
    meta["flip_source"] = list(meta["crop_source"])
    meta["colour_source"] = ["torchvision transforms of the folder loader, replayed (checked bit-exact)"] * len(recipe)
    b = spec.batch_size
    epoch = start_epoch
    while True:
        loader.set_epoch(epoch)
        clone = _recording_dataset(loader.dataset, recorder)  # after set_epoch: per-epoch state is copied
        # The DataLoader draws its workers' base seed from its generator (or the global
        # stream) when iteration starts; draw the same number from a copy of that state.
        g = torch.Generator()
        g.set_state(dl.generator.get_state() if dl.generator is not None else torch.get_rng_state())
        base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
        streams = _worker_streams(dl, base_seed)
        if dl.num_workers == 0:
            # Transforms run in this process on the global streams: start them where the
            # replay starts (after the base-seed draw, if that comes from the global stream).
            torch.set_rng_state(streams[0][0])
            random.setstate(streams[0][1])
            if dl.generator is None:
                _replay(streams[0], lambda: torch.empty((), dtype=torch.int64).random_())
        order = loader.sampler.indices()
        it = iter(loader)
        try:
            for k, (views, labels) in enumerate(it):
                ids = order[k * b:(k + 1) * b]
                cpu_views = [v.detach().to("cpu", torch.float32) for v in views]
                labels = labels.detach().cpu()

                def run(ids=ids):
                    got = []
                    for i in ids:
                        item = clone[i]
                        got.append((item[0], int(item[1]), recorder.records, recorder.source))
                    return got

                got = _replay(streams[k % len(streams)], run)
                same_labels = [g_[1] for g_ in got] == [int(t) for t in labels]
                for v in range(len(recipe)):
                    replayed = torch.stack([g_[0][v] for g_ in got])
                    if not (same_labels and torch.equal(replayed, cpu_views[v])):
                        raise RuntimeError(
                            f"fastairl.preview: replaying the folder loader does not reproduce view {v + 1} of "
                            f"batch {k} in epoch {epoch}, so its parameters cannot be reported; the loader's "
                            f"seeding or a transform's random draws changed; update fastairl/preview.py")
                params = [_folder_params([g_[2][v] for g_ in got]) for v in range(len(recipe))]
                yield epoch, _Batch(cpu_views, params, labels, torch.as_tensor(ids, dtype=torch.int64),
                                    [(lambda a=g_[3]: a) for g_ in got])
        finally:
            it.close()
        epoch += 1


def _uint8_batches(loader, recipe: Sequence[ViewRecipe], spec, start_epoch: int, images: _Images,
                   meta: dict, name: str) -> Iterator[tuple[int, _Batch]]:
    """Batches of a uint8 backend through GPUAugment, with crop parameters where the loader reports them."""
    flipped = bool(getattr(loader, "flipped", False))
    aug = GPUAugment(recipe, out_dtype=torch.float32, channels_last=False, flip_done=flipped)
    gen = torch.Generator().manual_seed(int(spec.seed))
    has_crops = callable(getattr(loader, "crop_params", None)) and images.available
    inside = f"drawn inside {name} (not reported)"
    meta["crop_source"] = [f"{name}.crop_params" if has_crops else inside] * len(recipe)
    if flipped:
        meta["flip_source"] = [f"{name}.crop_params" if has_crops else inside] * len(recipe)
    else:
        meta["flip_source"] = ["GPUAugment.sample_params"] * len(recipe)
    meta["colour_source"] = ["GPUAugment.sample_params + apply (as the trainer)"] * len(recipe)
    if not has_crops:
        log.warning("the %s loader draws its crop windows%s itself and does not report them: captions say "
                    "'crop: drawn inside %s'", name, " and flips" if flipped else "", name)
    b = spec.batch_size
    epoch = start_epoch
    while True:
        loader.set_epoch(epoch)
        order = _batch_order(loader, epoch, b)
        it = iter(loader)
        try:
            for k, (views, labels) in enumerate(it):
                n = int(labels.shape[0])
                ids = order[k] if order is not None and k < len(order) else [-1] * n
                crops = None
                if has_crops and min(ids) >= 0:
                    hw = [images.size(i) for i in ids]
                    crops = loader.crop_params(epoch, k, [h for h, _ in hw], [w for _, w in hw])
                out_views, params = [], []
                for v, rv in enumerate(recipe):
                    colour = aug.sample_params(v, n, generator=gen)
                    x = aug.apply(views[v], colour, rv).detach().to("cpu", torch.float32).contiguous()
                    p = _empty_params(n)
                    for key in PARAM_KEYS:
                        if key != "flip":
                            p[key] = colour[key].detach().cpu().to(p[key].dtype)
                    if not flipped:
                        p["flip"] = colour["flip"].detach().cpu().bool()
                    if crops is not None:
                        boxes, flips = crops[v]
                        bx = torch.as_tensor(np.asarray(boxes), dtype=torch.int64)
                        hw_t = torch.tensor(hw, dtype=torch.int64)
                        p["box"], p["src_hw"] = bx, hw_t
                        p["scale"] = (bx[:, 2] * bx[:, 3]).double() / (hw_t[:, 0] * hw_t[:, 1]).double()
                        if flipped:
                            p["flip"] = torch.as_tensor(np.asarray(flips), dtype=torch.bool)
                    out_views.append(x)
                    params.append(p)
                srcs = [(lambda i=i: images.image(i) if i >= 0 and images.available else None) for i in ids]
                yield epoch, _Batch(out_views, params, labels.detach().cpu(),
                                    torch.as_tensor(ids, dtype=torch.int64), srcs)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        replaced = getattr(loader, "stats", {}).get("replacements", 0) if isinstance(
            getattr(loader, "stats", None), dict) else 0
        if replaced:
            log.warning("the %s loader replaced %d undecodable image(s); their rows show the replacement's "
                        "pixels under the original index", name, replaced)
        epoch += 1


def _batch_order(loader, epoch: int, batch_size: int) -> list[list[int]] | None:
    """Dataset indices of each batch of the epoch just set, from whichever hook the loader has."""
    if callable(getattr(loader, "batch_indices", None)):
        return [list(map(int, x)) for x in loader.batch_indices()]
    if callable(getattr(loader, "epoch_indices", None)):
        flat = [int(i) for i in np.asarray(loader.epoch_indices(epoch)).reshape(-1)]
        return [flat[k:k + batch_size] for k in range(0, len(flat) - batch_size + 1, batch_size)]
    return None


# --------------------------------------------------------------------------------------
# Captions and the grid
# --------------------------------------------------------------------------------------

def _f(x: torch.Tensor | float) -> float:
    return float(x)


def view_caption(p: Mapping[str, torch.Tensor], r: int, v: int, view: ViewRecipe, meta: Mapping) -> list[str]:
    """The caption lines of view ``v`` of pair ``r``: what was drawn for it, in recipe order."""
    lines = []
    box = [int(b) for b in p["box"][r]]
    if box[0] >= 0:
        lines.append(f"view {v + 1}: crop t{box[0]} l{box[1]} {box[2]}x{box[3]}")
        tail = f"scale {_f(p['scale'][r]):.3f}"
    else:
        lines.append(f"view {v + 1}: crop drawn inside {meta['loader']}")
        tail = ""
    flip_known = not str(meta["flip_source"][v]).startswith("drawn inside")
    flip = ("yes" if bool(p["flip"][r]) else "no") if flip_known else f"inside {meta['loader']}"
    lines.append(f"{tail}  flip {flip}".strip())
    strength = view.jitter or (0.0, 0.0, 0.0, 0.0)
    if view.jitter_p > 0 and any(s > 0 for s in strength):
        if bool(p["jitter"][r]):
            parts = []
            for k in [int(o) for o in p["order"][r]]:
                if k < 0 or strength[k] <= 0:
                    continue
                name = ("brightness", "contrast", "saturation", "hue")[k]
                val = _f(p[name][r])
                parts.append(f"h{val:+.3f}" if k == 3 else f"{name[0]}{val:.2f}")
            lines.append("jitter " + " ".join(parts))
        else:
            lines.append("jitter no")
    else:
        lines.append("jitter - (not in recipe)")
    ops = []
    if view.gray_p > 0:
        ops.append(f"gray {'yes' if bool(p['gray'][r]) else 'no'}" + (" (before jitter)" if view.gray_before_jitter
                                                                     else ""))
    if view.solarize_p > 0:
        ops.append(f"solarize {'yes' if bool(p['solarize'][r]) else 'no'}")
    lines.append("  ".join(ops) if ops else "gray -  solarize -")
    if view.blur_p > 0:
        lines.append(f"blur sigma {_f(p['sigma'][r]):.2f}" if bool(p["blur"][r]) else "blur no")
    else:
        lines.append("blur - (not in recipe)")
    return lines


def _source_caption(res: PreviewResult, r: int) -> list[str]:
    idx, label = int(res.indices[r]), int(res.labels[r])
    classes = res.meta.get("classes") or []
    cname = classes[label] if 0 <= label < len(classes) else ""
    hw = res.params[0]["src_hw"][r]
    src = res.sources[r] if r < len(res.sources) else None
    if int(hw[0]) < 0 and src is not None:
        hw = src.shape[:2]
    lines = [f"#{idx}  label {label}" if idx >= 0 else f"index not reported  label {label}", cname[:40],
             f"{int(hw[0])}x{int(hw[1])} px  epoch {int(res.epochs[r])}" if int(hw[0]) > 0 else
             f"epoch {int(res.epochs[r])}"]
    boxes = [f"view {v + 1}" for v in range(len(res.params)) if int(res.params[v]["box"][r][0]) >= 0]
    if boxes:
        lines.append("boxes: " + ", ".join(f"{b} {c}" for b, c in zip(boxes, ("red", "blue", "green", "orange"))))
    return lines


@dataclass(frozen=True)
class GridGeometry:
    """Where everything sits in the PNG (pixels)."""

    rows: int
    cols: int
    cell: int
    font_size: int
    line_h: int
    title_h: int
    caption_h: int

    @property
    def width(self) -> int:
        return self.cols * self.cell + (self.cols + 1) * PAD

    @property
    def row_h(self) -> int:
        return self.cell + self.caption_h + PAD

    @property
    def height(self) -> int:
        return self.title_h + self.rows * self.row_h + PAD

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of the image in cell (row, col)."""
        return PAD + col * (self.cell + PAD), self.title_h + PAD + row * self.row_h


def grid_geometry(rows: int, cols: int, cell: int) -> GridGeometry:
    """Layout of a grid of ``rows`` x ``cols`` square cells of ``cell`` pixels with captions.

    Width ``cols * cell + (cols + 1) * PAD``; height ``title + rows * (cell + caption + PAD)
    + PAD``, where the title is one text line and a caption :data:`CAPTION_LINES` lines,
    the font scaling with the cell so a caption line fits under its cell.
    """
    font_size = max(9, min(16, cell // 19))
    line_h = font_size + 3
    return GridGeometry(rows=rows, cols=cols, cell=cell, font_size=font_size, line_h=line_h,
                        title_h=line_h + PAD, caption_h=CAPTION_LINES * line_h + 2)


def default_cell(image_size: int) -> int:
    """Display cell: the view size times the smallest integer that makes it >= 224 px.

    Integer factors keep the nearest-neighbour upscale an exact pixel replication, so
    small views stay readable and unblurred and the grid shows the true pixels.
    """
    return image_size * max(1, math.ceil(224 / image_size))


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_grid(res: PreviewResult, rows: int | None = None, cell: int | None = None) -> "PILImage":
    """The PNG grid as a PIL image: per pair, the source image and each view, captioned.

    Source images are letterboxed into the cell with each view's crop box drawn in the
    view's colour (where the loader reported it); views are denormalised and shown at
    ``cell`` pixels (nearest-neighbour, so an integer upscale shows the exact pixels).
    """
    from PIL import Image, ImageDraw

    n_views = len(res.views)
    rows = min(rows if rows is not None else len(res.sources), len(res.sources), res.views[0].shape[0])
    if rows < 1:
        raise PreviewError("nothing to draw: no pairs were kept for the grid")
    size = res.views[0].shape[-1]
    cell = cell if cell is not None else default_cell(size)
    geo = grid_geometry(rows, 1 + n_views, cell)
    font = _font(geo.font_size)
    canvas = Image.new("RGB", (geo.width, geo.height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    m = res.meta
    title = (f"fastairl preview  exp {m.get('exp') or '-'}  recipe {m['recipe']}  loader {m['loader']}  "
             f"seed {m['seed']}  {m['image_size']}px  {res.num_pairs} pairs")
    draw.text((PAD, PAD // 2), title, fill=_TEXT, font=font)
    recipe = [ViewRecipe(**{k: (tuple(x) if isinstance(x, list) else x) for k, x in d.items()})
              for d in m["recipe_views"]]
    for r in range(rows):
        x0, y0 = geo.cell_origin(r, 0)
        canvas.paste(_source_cell(res, r, cell), (x0, y0))
        _caption(canvas, _source_caption(res, r), x0, y0 + cell, geo, font, heading=None)
        for v in range(n_views):
            x, y = geo.cell_origin(r, 1 + v)
            img = Image.fromarray(_to_uint8_hwc(denormalize(res.views[v][r:r + 1])[0]))
            if img.size != (cell, cell):
                img = img.resize((cell, cell), Image.NEAREST if cell >= size else Image.BILINEAR)
            canvas.paste(img, (x, y))
            _caption(canvas, view_caption(res.params[v], r, v, recipe[v], m), x, y + cell, geo, font,
                     heading=VIEW_COLOURS[v % len(VIEW_COLOURS)])
    return canvas


def _source_cell(res: PreviewResult, r: int, cell: int) -> "PILImage":
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (cell, cell), _LETTERBOX)
    src = res.sources[r]
    if src is None:
        ImageDraw.Draw(out).text((4, cell // 2 - 6), f"source not reported\nby {res.meta['loader']}", fill=_TEXT)
        return out
    h, w = src.shape[:2]
    f = cell / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    ox, oy = (cell - nw) // 2, (cell - nh) // 2
    out.paste(Image.fromarray(src).resize((nw, nh), Image.BILINEAR), (ox, oy))
    d = ImageDraw.Draw(out)
    for v, p in enumerate(res.params):
        t, l, bh, bw = (int(b) for b in p["box"][r])
        if t < 0:
            continue
        colour = VIEW_COLOURS[v % len(VIEW_COLOURS)]
        rect = (ox + l * f, oy + t * f, ox + (l + bw) * f - 1, oy + (t + bh) * f - 1)
        d.rectangle(rect, outline=colour, width=2)
        d.text((rect[0] + 3, rect[1] + 1), str(v + 1), fill=colour)
    return out


def _caption(canvas, lines: list[str], x: int, y: int, geo: GridGeometry, font, heading) -> None:
    """Caption text under a cell, clipped to the cell's width (drawn on its own tile)."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (geo.cell, geo.caption_h), _BACKGROUND)
    d = ImageDraw.Draw(tile)
    for k, line in enumerate(lines[:CAPTION_LINES]):
        colour = heading if (heading is not None and k == 0) else _TEXT
        d.text((1, 1 + k * geo.line_h), line, fill=colour, font=font)
    canvas.paste(tile, (x, y))


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------

#: Ops whose application share is compared with the recipe: (param key, recipe field, label).
_OPS = (("flip", "flip_p", "flip"), ("jitter", "jitter_p", "jitter"), ("gray", "gray_p", "grayscale"),
        ("blur", "blur_p", "blur"), ("solarize", "solarize_p", "solarize"))


def _expected_p(view: Mapping, recipe_field: str) -> float:
    if recipe_field == "jitter_p":
        strengths = view.get("jitter") or (0.0, 0.0, 0.0, 0.0)
        return float(view["jitter_p"]) if any(float(s) > 0 for s in strengths) else 0.0
    return float(view[recipe_field])


def compute_stats(data: Mapping) -> list[dict]:
    """Per view: share of views with each op applied next to the recipe's probability,
    crop scale summary, brightness and saturation mean/std.

    ``data`` is a dump (or :meth:`PreviewResult.as_dump`). An op's share is "ok" when it
    lies within 4 binomial standard deviations of the recipe's probability (exactly equal
    for probabilities 0 and 1), the band a correct sampler leaves in 1 of ~16,000 checks.
    Ops the loader drew without reporting them have ``share None``.
    """
    meta = data["meta"]
    out = []
    for v, (p, m, view) in enumerate(zip(data["params"], data["measures"], meta["recipe_views"])):
        n = int(p["jitter"].shape[0])
        ops = []
        for key, recipe_field, label in _OPS:
            prob = _expected_p(view, recipe_field)
            known = True
            if key == "flip":
                known = not str(meta["flip_source"][v]).startswith("drawn inside")
            share = float(p[key].float().mean()) if known and n else None
            sd = math.sqrt(prob * (1 - prob) / n) if n else 0.0
            lo, hi = max(0.0, prob - 4 * sd), min(1.0, prob + 4 * sd)
            ops.append({"op": label, "share": share, "p": prob, "n": n, "band": (lo, hi),
                        "ok": None if share is None else (lo - 1e-12 <= share <= hi + 1e-12)})
        scale = p["scale"][~torch.isnan(p["scale"])]
        scale_row = None
        if scale.numel():
            scale_row = {"mean": float(scale.mean()), "min": float(scale.min()), "max": float(scale.max()),
                         "recipe": tuple(float(s) for s in view["crop_scale"])}
        out.append({"view": v + 1, "n": n, "ops": ops, "scale": scale_row,
                    "brightness": (float(m["brightness"].mean()), float(m["brightness"].std()) if n > 1 else 0.0),
                    "saturation": (float(m["saturation"].mean()), float(m["saturation"].std()) if n > 1 else 0.0)})
    return out


def format_stats(stats: list[dict], meta: Mapping) -> str:
    """The statistics as a fixed-width table (one row per op and view)."""
    n = stats[0]["n"] if stats else 0
    lines = [f"augmentation statistics: {n} pairs, recipe {meta['recipe']}, loader {meta['loader']}, "
             f"seed {meta['seed']}",
             f"{'op':<12}{'view':>5}{'applied':>10}{'recipe p':>10}   {'4-sigma band':<16}{'check':<8}"]
    for s in stats:
        for o in s["ops"]:
            if o["share"] is None:
                lines.append(f"{o['op']:<12}{s['view']:>5}{'-':>10}{o['p']:>10.3f}   "
                             f"{'':<16}{'n/a: drawn inside ' + str(meta['loader'])}")
                continue
            band = f"[{o['band'][0]:.3f}, {o['band'][1]:.3f}]"
            lines.append(f"{o['op']:<12}{s['view']:>5}{o['share']:>10.3f}{o['p']:>10.3f}   {band:<16}"
                         f"{'ok' if o['ok'] else 'OFF'}")
    lines.append(f"{'':<12}{'view':>5}{'mean':>10}{'std':>10}   note")
    for s in stats:
        sc = s["scale"]
        if sc is None:
            lines.append(f"{'crop scale':<12}{s['view']:>5}{'-':>10}{'-':>10}   drawn inside {meta['loader']}")
        else:
            lines.append(f"{'crop scale':<12}{s['view']:>5}{sc['mean']:>10.3f}{'':>10}   "
                         f"min {sc['min']:.3f} max {sc['max']:.3f}; recipe U({sc['recipe'][0]:g}, {sc['recipe'][1]:g})")
    for key in ("brightness", "saturation"):
        for s in stats:
            mean, std = s[key]
            note = "mean luma of the denormalised view" if key == "brightness" else "mean HSV saturation"
            lines.append(f"{key:<12}{s['view']:>5}{mean:>10.3f}{std:>10.3f}   {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Dump I/O
# --------------------------------------------------------------------------------------

def save_dump(res: PreviewResult, path: str | os.PathLike) -> Path:
    """``torch.save`` the dump layout (see the module docstring) to ``path``, atomically."""
    if not res.views or res.views[0].shape[0] != res.num_pairs:
        raise ValueError("this result kept only the grid's rows; collect with keep_views=True to dump it")
    path = Path(path)
    atomic_write(path, lambda f: torch.save(res.as_dump(), f))  # the mode of training outputs
    return path


def load_dump(path: str | os.PathLike) -> dict:
    """Reload a dump (``weights_only``: a dump holds tensors and plain containers only)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != DUMP_FORMAT:
        raise ValueError(f"{path} is not a fastairl.preview dump ({DUMP_FORMAT})")
    return data


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from fastairl.config import available_experiments
    from fastairl.data import LOADERS
    from fastairl.data.recipes import RECIPES

    from fastairl.cli_util import ArgumentParser

    p = ArgumentParser(
        prog="python -m fastairl.preview",
        description="Show, dump and count the augmented views a loader produces for a recipe, "
                    "exactly as the trainer's model receives them.")
    p.add_argument("--exp", help=f"experiment whose recipe and settings to use: {', '.join(available_experiments())}")
    p.add_argument("--recipe", help=f"augmentation recipe, overrides the experiment's: {', '.join(sorted(RECIPES))}")
    p.add_argument("--data", default="demo", help="ImageNet-style folder, folder with train.beton, or 'demo'")
    p.add_argument("--loader", help=f"data backend: {', '.join(LOADERS)} (default: the experiment's, auto)")
    p.add_argument("--pairs", type=int, default=16, help="samples to produce (any number; batched internally)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="per-process batch of the loader (default 32). With a run's batch, --workers and "
                        "--seed, the folder loader gives that run's very views and nvjpeg/dali its crops "
                        "(colour ops then come from the preview's own seeded draws)")
    p.add_argument("--workers", type=int, help="loader workers/threads (default: the experiment's)")
    p.add_argument("--seed", type=int, help="random seed (default: the experiment's, 0)")
    p.add_argument("--epoch", type=int, default=0, help="first epoch to draw from (default 0)")
    p.add_argument("--ckpt", help="a fastairl run's checkpoint: its stored config gives recipe, seed and size")
    p.add_argument("--image-size", type=int, help="view size (default: --ckpt's, demo 64, else the experiment's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", help="write the PNG grid here (.png; a bare name goes under outputs/)")
    p.add_argument("--rows", type=int, help="pairs shown in the grid (default: all pairs, at most 16)")
    p.add_argument("--cell", type=int, help="grid cell size in pixels (default: the view size times the "
                                            "smallest integer reaching 224)")
    p.add_argument("--dump", help="torch.save the views, parameters, labels and indices here (a bare name goes "
                                            "under outputs/; its size is said first when over 100 MB)")
    p.add_argument("--stats", action="store_true", help="print per-op shares next to the recipe, brightness "
                                                       "and saturation")
    p.add_argument("--overwrite", action="store_true", help="replace existing --out/--dump files")
    return p


def _check_output(flag: str, value: str | None, suffix: str | None, overwrite: bool) -> Path | None:
    if value is None:
        return None
    path = default_output_path(value)  # a bare name goes under outputs/
    if suffix is not None and path.suffix.lower() != suffix:
        raise PreviewError(f"{flag} {value}: expected a file name ending in {suffix}")
    if path.is_dir():
        raise PreviewError(f"{flag} {value}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise PreviewError(f"{flag} {value}: folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise PreviewError(f"{flag} {value}: file exists; pass --overwrite to replace it or choose another name")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl.logging_utils import setup_console

    setup_console(0)
    try:
        out = _check_output("--out", args.out, ".png", args.overwrite)
        dump = _check_output("--dump", args.dump, None, args.overwrite)
        if out is not None and dump is not None and out.resolve() == dump.resolve():
            raise PreviewError(f"--out and --dump name the same file {out}")
        if out is None and dump is None and not args.stats:
            raise PreviewError("nothing to do: pass --out FILE.png, --dump FILE.pt and/or --stats")
        if args.pairs < 1:
            raise PreviewError(f"--pairs {args.pairs}: must be an integer >= 1")
        if args.rows is not None and args.rows < 1:
            raise PreviewError(f"--rows {args.rows}: must be an integer >= 1")
        if args.cell is not None and args.cell < 8:
            raise PreviewError(f"--cell {args.cell}: must be an integer >= 8")
        rows = args.rows if args.rows is not None else min(args.pairs, 16)
        if rows > args.pairs:
            raise PreviewError(f"--rows {rows}: more than --pairs {args.pairs}")
        opts = PreviewOptions(exp=args.exp, recipe=args.recipe, data=args.data, loader=args.loader,
                              pairs=args.pairs, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                              epoch=args.epoch, image_size=args.image_size, device=args.device, ckpt=args.ckpt,
                              keep_views=dump is not None, rows=rows if out is not None else 1)
        res = collect(opts)
        if dump is not None:
            if (size := tensor_bytes(res.as_dump())) > DUMP_NOTE_BYTES:
                log.warning("dump: writing %.1f MB to %s", size / 1e6, dump)
            save_dump(res, dump)
            log.info("dump: %s (%d pairs, %d views each)", dump, res.num_pairs, len(res.views))
        if out is not None:
            img = render_grid(res, rows=rows, cell=args.cell)
            atomic_write(out, lambda f: img.save(f, format="PNG"))
            log.info("grid: %s (%d rows, %dx%d px)", out, rows, img.width, img.height)
        if args.stats:
            print(format_stats(compute_stats(res.as_dump()), res.meta))
        return 0
    except (PreviewError, FileNotFoundError, NotADirectoryError, FileExistsError, ValueError, ImportError) as e:
        from fastairl.cli_util import error
        return error(e)


if __name__ == "__main__":
    sys.exit(main())
