"""The training-step rows: images/s of ``Trainer.train_step`` for one planned row, a
Trainer built by its own ``setup()``, fed by a real loader or, for the ceiling, by
synthetic uint8 views already on the device."""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import torch

from bench import _honesty as honesty
from bench._backends import CEILING_LOADER
from bench._common import _one_line, log
from bench._settings import Settings
from bench._stats import summarize
from bench._timing import EpochCycler, _fail, _skip, _sync
from bench._train_plan import TrainRowPlan, _exp_config, plan_train_rows
from bench._variants import _workers_for, variant_root

#: Extra warm-up steps for the first training row a process measures: it alone pays the
#: process's one-off costs (kernel JIT and primitive caches, allocator growth, CUDA/cuDNN
#: handles), which would otherwise make the first row look slower than the rest.
FIRST_ROW_EXTRA_WARMUP = 2
_first_train_row = True


def bench_train_row(p: TrainRowPlan, s: Settings, device: torch.device, workdir: Path, index: int) -> dict:
    """Images/s of ``Trainer.train_step`` for one row (a Trainer built by its own ``setup``)."""
    global _first_train_row
    from fastairl.runtime import distributed as fdist
    from fastairl.data.recipes import get_recipe
    from fastairl.engine import RunOptions, Trainer
    world = int(os.environ.get("WORLD_SIZE", "1"))
    row = {"name": f"{p.exp} {p.kind} {p.loader_name} {p.config}", "exp": p.exp, "kind": p.kind,
           "loader": p.loader_name, "backend": p.variant.backend if p.variant else None,
           "source": p.variant.source if p.variant else None, "amp": p.amp, "channels_last": p.channels_last,
           "compile": p.compile, "config": p.config, "status": "ok", "reason": None, "nproc": world,
           "batch_size_per_process": s.batch_size, "images_per_s": None, "step_ms": None, "data_wait_share": None,
           "peak_device_mem_mb": None, "epochs_crossed": 0, "source_used": None, "torch_threads": None}
    if p.skip_reason:
        return _skip(row, p.skip_reason)
    if p.variant is not None:
        root, why = variant_root(p.variant, s)
        if root is None:
            return _skip(row, why)
        loader = p.variant.backend
        workers = _workers_for(p.variant, s)
    else:
        # The ceiling still needs a Trainer whose loader hands over uint8 views (so that it
        # builds GPUAugment): CEILING_LOADER, never iterated.
        root = s.data if (Path(s.data) / "train").is_dir() else s.packed
        if root is None:
            return _skip(row, f"{s.data} has neither a train/ folder nor a packed file")
        loader, workers = CEILING_LOADER, 1
    trainer = cycler = None
    if p.compile:
        # Every row compiles the same encoder classes: without a reset, the versions cached
        # by earlier rows (other precisions and layouts) exhaust dynamo's recompile limit
        # and later "compile" rows would quietly run eager.
        from torch import _dynamo
        _dynamo.reset()
    try:
        cfg = _exp_config(p.exp, s, world)
        opts = RunOptions(data=str(root), output_dir=str(workdir / f"row{index:03d}"), device=str(device.type),
                          amp=p.amp, channels_last=p.channels_last, loader=loader, overwrite=True,
                          compile=p.compile, workers=workers, progress=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = Trainer(cfg, opts)
        try:
            trainer.setup()
        except ImportError as e:
            return _skip(row, f"{loader} backend cannot be imported ({_one_line(e)})")
        dev = trainer.device
        row["source_used"] = getattr(getattr(trainer.loader, "source", None), "kind", None)
        if p.variant is not None and p.variant.source == "folder" and row["source_used"] == "beton":
            return _skip(row, f"{root} also holds train.beton, which the {loader} backend prefers; "
                              f"the packed row measures it")
        B = trainer.local_batch
        if p.variant is None:
            g = torch.Generator().manual_seed(index)
            views = [torch.randint(0, 256, (B, 3, s.image_size, s.image_size), generator=g, dtype=torch.uint8)
                     .to(dev) for _ in get_recipe(cfg.recipe)]
            labels = torch.randint(0, trainer.num_classes, (B,), generator=g).to(dev)

            def fetch():
                return views, labels
        else:
            cycler = EpochCycler(trainer.loader)
            fetch = cycler.__next__
            need = s.warmup + s.repeats * s.batches
            if len(trainer.loader) < need:
                log.warning("%s: %d batches per epoch but %d are timed; windows include epoch restarts",
                            row["name"], len(trainer.loader), need)
        trainer.model.train()
        label = f"train {p.exp} {p.kind} [{p.loader_name}, {p.config}]"
        extra = FIRST_ROW_EXTRA_WARMUP if _first_train_row else 0
        _first_train_row = False
        log.info("%s: %d warm-up + %d x %d steps of %d per process", label, max(s.warmup, 1) + extra, s.repeats,
                 s.batches, B)
        step = 0
        for _ in range(max(s.warmup, 1) + extra):
            v_, l_ = fetch()
            trainer.train_step(v_, l_, step, 0)
            step += 1
        ips, ms, wait = [], [], []
        for r in range(s.repeats):
            _sync(dev)
            fdist.barrier()
            t0 = time.perf_counter()
            waited = 0.0
            for _ in range(s.batches):
                tw = time.perf_counter()
                v_, l_ = fetch()
                waited += time.perf_counter() - tw
                trainer.train_step(v_, l_, step, 0)
                step += 1
            _sync(dev)
            dt = max(time.perf_counter() - t0, 1e-9)
            ips.append(B * world * s.batches / dt)
            ms.append(dt / s.batches * 1000.0)
            wait.append(waited / dt)
            log.info("%s: window %d/%d: %.1f images/s, %.0f ms/step, data wait %.0f%%", label, r + 1, s.repeats,
                     ips[-1], ms[-1], wait[-1] * 100)
        row.update(images_per_s=summarize(ips), step_ms=summarize(ms), data_wait_share=summarize(wait),
                   torch_threads=torch.get_num_threads())
        if dev.type == "cuda":
            row["peak_device_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        if cycler is not None:
            row["epochs_crossed"] = cycler.crossings
    except Exception as e:
        if world > 1:
            # A torchrun worker: the other ranks would wait for this one in the next
            # collective until the process group's timeout. Failing the process makes
            # torchrun stop them all; the parent reports the scaling run as failed.
            raise
        return _fail(row, e)
    finally:
        if cycler is not None:
            cycler.close()
        if trainer is not None:
            ld = getattr(trainer, "loader", None)
            if ld is not None and hasattr(ld, "close"):
                ld.close()
            lg = getattr(trainer, "logger", None)
            if lg is not None:
                lg.close()
        del trainer, cycler
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def bench_train(s: Settings, device: torch.device, workdir: Path, subset: str = "all") -> list[dict]:
    plans = plan_train_rows(s, device, subset)
    return honesty.measure_bracketed(plans, s, lambda p, s_, i: bench_train_row(p, s_, device, workdir, i))
