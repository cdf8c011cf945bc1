"""Collecting pairs: the loader the trainer builds, iterated until ``--pairs`` samples are in.

Why the trainer's loader: a preview is only worth looking at if it shows what training
gets. The :class:`~fastairl.data.base.LoaderSpec` is built as the trainer builds it
(data root, recipe, image size, per-process batch, workers, seed, device) and the
loader iterated from ``--epoch`` on, into the next epochs when the pairs need more.
The backend's views become what the trainer's model receives in
:mod:`~fastairl.preview.replay` (``folder``) or :mod:`~fastairl.preview.uint8_views`.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from fastairl.data.demo_packed import ensure_demo_packed
from fastairl.data.recipes import MEAN, STD, ViewRecipe, get_recipe
from fastairl.preview.replay import folder_batches
from fastairl.preview.result import PreviewError, PreviewOptions, PreviewResult, cat_params, measures
from fastairl.preview.sources import SourceImages
from fastairl.preview.uint8_views import uint8_batches

log = logging.getLogger("fastairl.preview")


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


def _packed_if_needed(name: str, data: str, root: Path) -> Path:
    """The data root the ``name`` loader reads: a backend that needs packed files reads the
    demo packed once (cached)."""
    from fastairl.data.registry import needs_packed
    if needs_packed(name) and data == "demo" and not (root / "train.beton").is_file():
        return ensure_demo_packed(root)
    return root


def collect(opts: PreviewOptions) -> PreviewResult:
    """Produce ``opts.pairs`` pairs with the chosen loader and recover their parameters."""
    from fastairl.data import build_loader, choose_loader, resolve_data
    from fastairl.data.base import LoaderSpec

    s = _resolve_settings(opts)
    device = _resolve_device(opts.device)
    root = resolve_data(opts.data)
    name = choose_loader(s["loader"], root, device.type)
    root = _packed_if_needed(name, opts.data, root)
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
        batches = folder_batches(loader, recipe, spec, opts.epoch, meta)
    elif loader.output == "uint8":
        batches = uint8_batches(loader, recipe, spec, opts.epoch, SourceImages(loader, root, "train"), meta, name)
    else:
        raise RuntimeError(f"the {name} loader hands over {loader.output!r} views; fastairl.preview knows "
                           f"'normalized' and 'uint8' (see fastairl/data/base.py)")

    n, rows = opts.pairs, min(opts.rows, opts.pairs)
    views: list[list[torch.Tensor]] = [[] for _ in range(n_views)]
    params: list[list[dict]] = [[] for _ in range(n_views)]
    measured: list[list[dict]] = [[] for _ in range(n_views)]
    labels, indices, epochs, sources = [], [], [], []
    got = 0
    try:
        for epoch, b in batches:
            take = min(n - got, b.labels.shape[0])
            for v in range(n_views):
                x = b.views[v][:take]
                measured[v].append(measures(x))
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
        params=[cat_params(p, n) for p in params],
        measures=[{k: torch.cat([m[k] for m in ms]) for k in ms[0]} for ms in measured],
        labels=torch.cat(labels).to(torch.int64), indices=torch.cat(indices).to(torch.int64),
        epochs=torch.cat(epochs), sources=sources, meta=meta)


def _recipe_dict(v: ViewRecipe) -> dict:
    return {k: (list(x) if isinstance(x, tuple) else x) for k, x in dataclasses.asdict(v).items()}
