"""The loader rows (pairs/s of each backend alone, then with GPUAugment: the full path) and
the augmentation row (GPUAugment alone on synthetic views)."""
from __future__ import annotations

import gc
import os
import time

import torch

from bench._common import _one_line, log
from bench._rss import child_pids, loader_rss, reset_peak_rss
from bench._settings import Settings
from bench._stats import summarize
from bench._timing import EpochCycler, _batch_size_of, _fail, _skip, _sync
from bench._variants import Variant, _build_spec, _decode_where, _workers_for, variant_root


def bench_loader(v: Variant, s: Settings, device: torch.device) -> dict:
    """Pairs/s of one backend: the loader alone, then loader + GPUAugment (the full path)."""
    from fastairl.data import build_loader
    from fastairl.data.augment import GPUAugment
    from fastairl.data.recipes import get_recipe
    row = {"name": v.name, "backend": v.backend, "source": v.source, "status": "ok", "reason": None,
           "decode": _decode_where(v, device.type), "workers": _workers_for(v, s), "batch_size": s.batch_size,
           "image_size": s.image_size, "loader_only": None, "full_path": None, "full_path_same": False,
           "peak_rss": None, "epochs_crossed": 0, "batches_per_epoch": None, "source_used": None}
    root, why = variant_root(v, s)
    if root is None:
        return _skip(row, why)
    loader = cycler = None
    try:
        spec, recipe = _build_spec(v, root, s, str(device))
        row["recipe"] = recipe
        row["views"] = len(get_recipe(recipe))
        gc.collect()
        before = set(child_pids(os.getpid()))
        reset_ok = reset_peak_rss()
        try:
            loader = build_loader(v.backend, spec)
        except ImportError as e:
            return _skip(row, f"{v.backend} backend cannot be imported ({_one_line(e)})")
        src = getattr(getattr(loader, "source", None), "kind", None)
        row["source_used"] = src
        row["batches_per_epoch"] = len(loader)
        augment = None
        if loader.output == "uint8":
            augment = GPUAugment(get_recipe(recipe), out_dtype=torch.float32, channels_last=True,
                                 flip_done=loader.flipped).to(device)
        else:
            row["full_path_same"] = True  # the reference path augments in its CPU workers
        need = s.warmup + s.repeats * s.loader_batches * (2 if augment is not None else 1)
        if len(loader) < need:
            log.warning("%s: %d batches per epoch but %d are timed; windows include %d epoch restart(s) "
                        "(use --photos N or a larger --data for steadier numbers)",
                        v.name, len(loader), need, need // max(len(loader), 1))
        cycler = EpochCycler(loader)
        log.info("loader %s: %d warm-up + %d x %d batches of %d (%s, %d workers)", v.name, s.warmup, s.repeats,
                 s.loader_batches, s.batch_size, row["decode"], row["workers"])
        # Loader-only windows first, then the full path: interleaving them would let a
        # prefetching loader fill its queue during a slow full-path window and then drain
        # it for free in the next loader-only window.
        only, full = [], []
        for _ in range(max(s.warmup, 1)):
            next(cycler)
        for r in range(s.repeats):
            only.append(_loader_window(cycler, s.loader_batches, None, device))
            log.info("loader %s: window %d/%d: %.1f pairs/s, loader only", v.name, r + 1, s.repeats, only[-1])
        if augment is not None:
            augment(next(cycler)[0])  # the first call of the module pays its one-off costs
            for r in range(s.repeats):
                full.append(_loader_window(cycler, s.loader_batches, augment, device))
                log.info("loader %s: window %d/%d: %.1f pairs/s, with GPUAugment", v.name, r + 1, s.repeats,
                         full[-1])
        row["peak_rss"] = loader_rss(reset_ok, before)
        row["loader_only"] = summarize(only)
        row["full_path"] = summarize(full) if full else row["loader_only"]
        row["epochs_crossed"] = cycler.crossings
    except Exception as e:
        return _fail(row, e)
    finally:
        if cycler is not None:
            cycler.close()
        if loader is not None and hasattr(loader, "close"):
            loader.close()
        del loader, cycler
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _loader_window(cycler: EpochCycler, n: int, augment, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    count = 0
    for _ in range(n):
        views, labels = next(cycler)
        if augment is not None:
            views = augment(views)
        count += _batch_size_of(labels)
    _sync(device)
    return count / max(time.perf_counter() - t0, 1e-9)


def bench_augment(recipe: str, s: Settings, device: torch.device) -> dict:
    """GPUAugment alone on synthetic uint8 views: ms per two-view batch (256 images on a GPU)."""
    from fastairl.data.augment import GPUAugment
    from fastairl.data.recipes import get_recipe
    batch = 256 if device.type == "cuda" else s.batch_size
    row = {"name": f"GPUAugment {recipe}", "recipe": recipe, "status": "ok", "reason": None, "device": str(device),
           "batch_size": batch, "image_size": s.image_size, "ms_per_batch": None, "ms_per_256": None,
           "pairs_per_s": None}
    try:
        views_r = get_recipe(recipe)
        aug = GPUAugment(views_r, out_dtype=torch.float32, channels_last=True).to(device)
        g = torch.Generator().manual_seed(0)
        views = [torch.randint(0, 256, (batch, 3, s.image_size, s.image_size), generator=g, dtype=torch.uint8)
                 .to(device) for _ in views_r]
        for _ in range(max(s.warmup, 1)):
            aug(views)
        ms = []
        n = max(s.batches, 2)
        for _ in range(s.repeats):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                aug(views)
            _sync(device)
            ms.append((time.perf_counter() - t0) / n * 1000.0)
        row["ms_per_batch"] = summarize(ms)
        row["ms_per_256"] = summarize([m * 256.0 / batch for m in ms])
        row["pairs_per_s"] = summarize([batch / (m / 1000.0) for m in ms])
        log.info("GPUAugment %s: %.2f ms per batch of %d (%d views, %d px)", recipe, row["ms_per_batch"]["median"],
                 batch, len(views_r), s.image_size)
    except Exception as e:
        return _fail(row, e)
    return row
