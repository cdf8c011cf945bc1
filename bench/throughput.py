"""Throughput of fastairl against the reference-style pipeline: loader by loader, then the
real training step, with the compute ceiling beside it.

    python bench/throughput.py --data demo --device cpu --quick          # minutes on a laptop
    python bench/throughput.py --device cuda                             # bare CUDA machine
    python bench/throughput.py --data /data/in1k --exp moco_v2p,byol --only train
    python bench/throughput.py --photos 8192 --only loaders --workers 16
    python bench/throughput.py --device cuda --nproc 8                   # scaling under torchrun

Why it is built this way:

* **Nothing is re-implemented.** Loaders come from :func:`fastairl.data.build_loader` with a
  :class:`~fastairl.data.base.LoaderSpec`, the augmentation is
  :class:`~fastairl.data.augment.GPUAugment`, and every training-step number is
  :meth:`fastairl.engine.Trainer.train_step` of a Trainer built by its own ``setup()``
  (method, optimizer, autocast, GradScaler for fp16, EMA + queue in ``after_step``, the
  online probe). A speed-up measured here is a speed-up of the product.
* **The reference-style configuration is always a row**: the ``folder`` loader (PIL +
  torchvision transforms in 6 DataLoader workers per process, the reference's setting),
  fp32, NCHW, no compile. Every training row carries its ratio to it, and every loader
  row the ratio of its full path to the ``folder`` loader's.
* **The compute ceiling** is the same step fed with synthetic uint8 views that already
  sit on the device (GPUAugment still runs): what the step costs with a free loader.
  End-to-end rows carry their fraction of the ceiling of the same precision/layout.
* **Robust statistics.** After ``--warmup`` batches, ``--repeats`` windows of a fixed
  number of batches are timed (device synchronised at both ends); tables show the median
  with the min and max over the windows, the JSON keeps every window.
* **Backends are discovered, not assumed.** Each backend row runs if this checkout
  registers it (``fastairl.data.LOADERS``), its package imports, its data exists (a
  packed ``train.beton`` is made once with ``write_ffcv`` when ffcv is installed), and
  otherwise appears as *skipped* with the reason. A row that breaks at run time is
  *failed* with the error, never hidden; the exit code is then 1.
* **Only torch, torchvision, numpy and Pillow are required** (issue 8): matplotlib only
  draws the PNG (skipped with a reason without it); peak RSS is read from
  ``/proc/<pid>/status`` (VmHWM) of this process and its loader workers, no psutil.

Outputs: a Markdown report on stdout and in ``<out>/<host>-<date>.md``, the raw numbers in
``.json`` beside it (schema :data:`SCHEMA`, see :func:`validate_result`) and a PNG bar chart.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

if __package__ in (None, ""):  # run as a file: make fastairl importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import _honesty as honesty
from bench._stats import ratio, summarize  # noqa: F401  (tp.summarize in the tests)
from fastairl.engine import cuda_bf16_native

log = logging.getLogger("bench.throughput")

SCHEMA = "fastairl.bench.throughput/1"
#: Loader backends the bench knows how to ask for, in table order.
BACKENDS = ("folder", "ffcv", "dali", "nvjpeg")
#: The reference's DataLoader workers per process.
REFERENCE_WORKERS = 6
#: ``--data`` packed automatically only up to this many training images (``--max-pack``).
DEFAULT_MAX_PACK = 50_000
RESULTS_DIR = Path("outputs") / "bench"  # default --out: git-ignored, out of the source tree
AMP_CHOICES = ("bf16", "fp16", "off")
LAYOUTS = ("channels_last", "nchw")
STATUSES = ("ok", "skipped", "failed")

#: Defaults per mode: (arch, image_size, batch per process, warmup, batches, repeats, loader batches).
PRESETS = {
    "quick": dict(arch="resnet18", image_size=64, batch_size=16, warmup=2, batches=3, repeats=3, loader_batches=8),
    "cpu": dict(arch="resnet18", image_size=112, batch_size=32, warmup=2, batches=5, repeats=3, loader_batches=16),
    "cuda": dict(arch="resnet50", image_size=224, batch_size=128, warmup=5, batches=10, repeats=3,
                 loader_batches=12),
}
#: Default experiments: one on CPU, the three of the issue on a GPU.
DEFAULT_EXPS = {"cpu": ("moco_v2p",), "cuda": ("moco_v2p", "byol", "supervised")}
#: Photos generated for the default CUDA run (``--data`` not given): 7,168 training images,
#: 56 batches of 128, so a row crosses at most a couple of epoch ends.
CUDA_DEFAULT_PHOTOS = 8192


class BenchError(Exception):
    """A problem with the command line or the data the user can fix; one line, exit code 2."""


# --------------------------------------------------------------------------------------
# Statistics and ratios (pure functions; the tests check them on their own)
# --------------------------------------------------------------------------------------

def _median(stats: dict | None) -> float | None:
    return None if not stats else stats.get("median")


def compute_ratios(result: dict) -> None:
    """Fill ``ratio_to_reference`` and ``fraction_of_ceiling`` of every row, in place.

    Loader rows: the full path's median pairs/s over the ``folder`` (reference-style)
    loader's. Training rows: median images/s over the same experiment's reference-style
    row (fp32, NCHW, folder loader), and for end-to-end rows over the ceiling row of the
    same experiment, precision, layout and compile setting. ``ceiling_check``: which
    end-to-end rows measured above their ceiling (:func:`bench._honesty.check_ceilings`).
    """
    loaders = result.get("loaders", [])
    ref = next((r for r in loaders if r["backend"] == "folder" and r["status"] == "ok"), None)
    ref_v = _median(ref["full_path"]) if ref else None
    for r in loaders:
        r["ratio_to_reference"] = ratio(_median(r.get("full_path")), ref_v) if r["status"] == "ok" else None
    train = result.get("train", [])
    for r in train:
        r["ratio_to_reference"] = None
        r["fraction_of_ceiling"] = None
        if r["status"] != "ok":
            continue
        ref = next((x for x in train if x["exp"] == r["exp"] and x["kind"] == "reference" and x["status"] == "ok"),
                   None)
        r["ratio_to_reference"] = ratio(_median(r["images_per_s"]), _median(ref["images_per_s"]) if ref else None)
        if r["kind"] != "ceiling":
            same = (r["exp"], "ceiling", "ok", r["amp"], r["channels_last"], r["compile"])
            ceil = next((x for x in train if (x["exp"], x["kind"], x["status"], x["amp"], x["channels_last"],
                                              x["compile"]) == same), None)
            r["fraction_of_ceiling"] = ratio(_median(r["images_per_s"]),
                                             _median(ceil["images_per_s"]) if ceil else None)
    result["ceiling_check"] = honesty.check_ceilings(train)  # rows above their ceiling: said, never hidden


# --------------------------------------------------------------------------------------
# Peak resident memory of the loader processes, from /proc (no psutil)
# --------------------------------------------------------------------------------------

def _status_kb(pid: int | str, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5); False if refused.

    Lets one process measure the peak of each loader in turn instead of its lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_pids(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (DataLoader workers and their children)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    out, pending = [], [pid]
    while pending:
        for c in parents.get(pending.pop(), []):
            out.append(c)
            pending.append(c)
    return out


def loader_rss(reset_ok: bool, before: set[int]) -> dict | None:
    """Peak RSS in MB of this process (since the last reset) and of the worker processes the
    loader started (descendants not in ``before``, e.g. DataLoader workers).

    Worker peaks count pages shared with the parent after fork in each process, so the
    total is an upper bound of the physical memory, the way ``top`` would add them up.
    None where /proc is not available.
    """
    me = _status_kb("self", "VmHWM")
    if me is None:
        return None
    kids = [(p, _status_kb(p, "VmHWM")) for p in child_pids(os.getpid()) if p not in before]
    kids = [(p, kb) for p, kb in kids if kb is not None]
    workers = sum(kb for _, kb in kids) / 1024.0
    return {"total_mb": me / 1024.0 + workers, "main_mb": me / 1024.0, "workers_mb": workers,
            "worker_processes": len(kids), "main_is_lifetime_peak": not reset_ok}


# --------------------------------------------------------------------------------------
# Settings and data
# --------------------------------------------------------------------------------------

@dataclass
class Settings:
    """Everything a measurement depends on; stored in the JSON and handed to torchrun workers."""

    device: str
    exps: list[str]
    arch: str
    image_size: int
    batch_size: int                 # per process
    warmup: int
    batches: int                    # per training window
    loader_batches: int             # per loader window
    repeats: int
    folder_workers: int             # reference-style loader
    fast_workers: int               # ffcv / dali / nvjpeg threads
    loaders: list[str]
    amps: list[str]                 # ceiling matrix: precisions ...
    layouts: list[str]              # ... x memory layouts
    compile: bool
    quick: bool
    nproc: int
    only: str | None
    overrides: list[str] = field(default_factory=list)
    data: str = ""
    data_kind: str = ""
    packed: str | None = None
    packed_reason: str | None = None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname() or "host")[:60]


def _count_train_images(root: Path, stop_after: int) -> int:
    """Number of image files under ``root/train`` (stops counting past ``stop_after``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS
    n = 0
    for _, _, files in os.walk(root / "train", followlinks=True):
        n += sum(1 for f in files if f.lower().endswith(IMG_EXTENSIONS))
        if n > stop_after:
            break
    return n


def ensure_packed(root: Path, max_pack: int) -> tuple[Path | None, str | None]:
    """A folder with ``train.beton`` + ``classes.json`` for the packed rows, or (None, why not).

    Uses ``root`` itself when it holds ``train.beton``; otherwise packs ``root/train`` once
    into the cache with :func:`fastairl.data.ffcv_writer.write_ffcv` (ffcv's writer is
    needed for that) and reuses that copy on later runs. Large folders are not packed
    behind the user's back: above ``max_pack`` images the rows are skipped with the command
    that packs them.
    """
    if (root / "train.beton").is_file():
        return root, None
    if not (root / "train").is_dir():
        return None, f"{root} has neither train.beton nor a train/ folder"
    n = _count_train_images(root, max_pack)
    if n > max_pack:
        return None, (f"{root}/train holds more than {max_pack} images; pack it once with "
                      f"`python data_prep/write_ffcv.py --data {root} --out DIR` and pass --packed DIR "
                      f"(or raise --max-pack)")
    from fastairl.data.cache import cache_dir, folder_lock
    key = hashlib.sha1(f"{root.resolve()}|{n}".encode()).hexdigest()[:12]
    out = cache_dir() / "bench-packed" / f"{root.name}-{key}"
    marker = out / "bench-source.json"
    want = {"source": str(root.resolve()), "train_images": n}

    def ready() -> bool:
        try:
            return (out / "train.beton").is_file() and json.loads(marker.read_text()) == want
        except (OSError, ValueError):
            return False

    if ready():  # packed by an earlier run; readable without ffcv (nvjpeg has its own reader)
        return out, None
    try:
        import ffcv  # noqa: F401
        from fastairl.data.ffcv_writer import write_ffcv
    except Exception as e:  # a broken install raises more than ImportError
        return None, (f"--data has no train.beton and ffcv, needed to pack one, is not importable "
                      f"({type(e).__name__}: {_one_line(e)})")
    with folder_lock(out):
        if not ready():
            log.info("packing %s/train (%d images) into %s once with write_ffcv, for the ffcv and packed rows",
                     root, n, out)
            write_ffcv(root, out, splits=("train",), overwrite=True, progress=True)
            marker.write_text(json.dumps(want))
    return out, None


def _resolve_data(args: argparse.Namespace, device: str) -> tuple[Path, str]:
    """``--data``/``--photos`` -> (folder, kind), generating the demo or photo set on first use."""
    from fastairl.data import resolve_data
    if args.photos is not None:
        return _photo_set(args.photos)
    data = args.data
    if data is None and device == "cuda":
        n = CUDA_DEFAULT_PHOTOS
        log.info("--data not given on a GPU: using a set of %d real photographs at ImageNet sizes (--photos %d)",
                 n, n)
        return _photo_set(n)
    data = data or "demo"
    try:
        root = resolve_data(data)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise BenchError(str(e)) from None
    return root, "demo" if data == "demo" else "folder"


def _photo_set(n: int) -> tuple[Path, str]:
    """The photo set of ``n`` images. Without photographs to cut (no scikit-image, no
    matplotlib, no FASTAIRL_PHOTO_SOURCES) there is no stand-in: the demo data is cut from
    the same photographs, so the user gets one line saying what to install or pass."""
    from fastairl.data.photos import ensure_photo_set
    try:
        return ensure_photo_set(n_images=n), "photos"
    except RuntimeError as e:
        raise BenchError(f"--photos {n}: {_one_line(e)}; or measure a folder or packed set with --data PATH") from None


def _one_line(e: BaseException | str) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------

_PACKAGES = {"ffcv": "ffcv", "dali": "nvidia.dali"}


def backend_missing(name: str, device_type: str) -> str | None:
    """Why backend ``name`` cannot run in this environment, or None if it can be tried.

    Asks, in turn: does this checkout register it, does its package import, and (DALI)
    does the backend's own ``dali_problem(device)`` see a reason it cannot run here.
    """
    from fastairl.data import LOADERS
    if name not in LOADERS:
        return f"this checkout's fastairl.data has no '{name}' backend (LOADERS: {', '.join(LOADERS)})"
    pkg = _PACKAGES.get(name)
    if pkg:
        import importlib
        try:
            importlib.import_module(pkg)
        except Exception as e:
            return f"{pkg} is not installed or not importable ({type(e).__name__}: {_one_line(e)})"
    if name == "dali":
        try:
            from fastairl.data import dali_loader
        except ImportError as e:
            return f"fastairl.data.dali_loader cannot be imported ({_one_line(e)})"
        problem = getattr(dali_loader, "dali_problem", None)
        why = problem(device_type) if problem is not None else None
        if why:
            return _one_line(why)
    return None


@dataclass
class Variant:
    """One loader row: a backend reading one kind of source."""

    backend: str
    source: str  # "folder" or "packed"

    @property
    def name(self) -> str:
        if self.backend in ("folder", "ffcv"):
            return self.backend
        return f"{self.backend} ({self.source})"


def loader_variants(selected: Sequence[str]) -> list[Variant]:
    out = []
    for b in BACKENDS:
        if b not in selected:
            continue
        if b == "folder":
            out.append(Variant(b, "folder"))
        elif b == "ffcv":
            out.append(Variant(b, "packed"))
        else:
            out += [Variant(b, "folder"), Variant(b, "packed")]
    return out


def variant_root(v: Variant, s: Settings) -> tuple[str | None, str | None]:
    """(dataset root for this variant, None) or (None, why it cannot run)."""
    missing = backend_missing(v.backend, s.device)
    if missing:
        return None, missing
    if v.source == "packed":
        if s.packed is None:
            return None, f"no packed file: {s.packed_reason}"
        return s.packed, None
    if not (Path(s.data) / "train").is_dir():
        return None, f"{s.data} has no train/ folder"
    return s.data, None


def _decode_where(v: Variant, device: str) -> str:
    if v.backend == "folder":
        return "CPU (PIL)"
    if v.backend == "ffcv":
        return "CPU (ffcv)"
    gpu = device == "cuda"
    if v.backend == "nvjpeg":
        return "GPU (nvJPEG)" if gpu else "CPU (torchvision)"
    return "GPU (DALI)" if gpu else "CPU (DALI)"


def _workers_for(v: Variant, s: Settings) -> int:
    return s.folder_workers if v.backend == "folder" else s.fast_workers


def _build_spec(v: Variant, root: str, s: Settings, device: str):
    from fastairl.config import apply_overrides, load_experiment
    from fastairl.data.base import LoaderSpec
    cfg = apply_overrides(load_experiment(s.exps[0]), list(s.overrides))
    # nvjpeg and dali read either source; name the one this row measures
    extra = {"source": "beton" if v.source == "packed" else "folder"} if v.backend in ("nvjpeg", "dali") else None
    return LoaderSpec(root=root, split="train", recipe=cfg.recipe, image_size=s.image_size,
                      batch_size=s.batch_size, rank=0, world_size=1, device=device,
                      workers=_workers_for(v, s), seed=0, train=True, extra=extra), cfg.recipe


# --------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochCycler:
    """Endless batches from a loader, moving to the next epoch when one runs out.

    Small data sets would otherwise end a window early; every crossing is counted, since
    it includes the loader's start-up (worker processes, prefetch refill) in the window.
    """

    def __init__(self, loader) -> None:
        self.loader = loader
        self.epoch = -1
        self.crossings = 0
        self._it: Iterator | None = None

    def _next_epoch(self) -> None:
        self.epoch += 1
        if self.epoch > 0:
            self.crossings += 1
        self.loader.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def __next__(self):
        if self._it is None:
            self._next_epoch()
        for _ in range(2):
            try:
                return next(self._it)
            except StopIteration:
                self._next_epoch()
        raise RuntimeError(f"loader {type(self.loader).__name__} yielded no batch in a whole epoch")

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()  # runs the generator's cleanup (prefetch threads, ffcv iterators)


def _batch_size_of(labels: torch.Tensor) -> int:
    return int(labels.shape[0])


# --------------------------------------------------------------------------------------
# Loader benchmark
# --------------------------------------------------------------------------------------

def _skip(row: dict, reason: str) -> dict:
    row.update(status="skipped", reason=reason)
    log.info("skipped %s: %s", row.get("name"), reason)
    return row


def _fail(row: dict, e: BaseException) -> dict:
    msg = f"{type(e).__name__}: {_one_line(e)}"
    row.update(status="failed", reason=msg)
    log.error("FAILED %s: %s", row.get("name"), msg)
    log.debug("%s", traceback.format_exc())
    return row


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


# --------------------------------------------------------------------------------------
# Training-step benchmark
# --------------------------------------------------------------------------------------

@dataclass
class TrainRowPlan:
    exp: str
    kind: str            # "ceiling" | "end_to_end" | "reference"
    amp: str             # "bf16" | "fp16" | "off"
    channels_last: bool
    compile: bool
    variant: Variant | None = None  # None for the synthetic ceiling
    skip_reason: str | None = None
    bracket: str | None = None      # "before"/"after" its end-to-end rows: the bounding ceiling (bench/_honesty.py)

    @property
    def loader_name(self) -> str:
        return "synthetic (on device)" if self.variant is None else self.variant.name

    @property
    def config(self) -> str:
        return config_label(self.amp, self.channels_last, self.compile)


def config_label(amp: str, channels_last: bool, compile_: bool) -> str:
    parts = ["fp32" if amp == "off" else amp, "channels_last" if channels_last else "NCHW"]
    if compile_:
        parts.append("compile")
    return " ".join(parts)


def default_amp(device: torch.device) -> str:
    """fastairl's own default: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        return "off"
    return "bf16" if cuda_bf16_native() else "fp16"


def headline_config(s: Settings, device: torch.device) -> tuple[str, bool]:
    """(amp, channels_last) of the end-to-end rows: fastairl's default where ``--amp`` and
    ``--layouts`` allow it, else the first of each that was asked for."""
    d_amp = default_amp(device)
    amp = d_amp if d_amp in s.amps else s.amps[0]
    return amp, "channels_last" in s.layouts


def _amp_skip(amp: str, compile_: bool, device: torch.device, quick: bool) -> str | None:
    if device.type != "cuda":
        if amp == "fp16":
            return "fp16 needs CUDA: fastairl's fp16 path is autocast + GradScaler on a GPU"
        if compile_:
            return "torch.compile rows run on CUDA only (compiling the encoders on a CPU takes minutes)"
        if amp == "bf16" and quick:
            return "bf16 on the CPU is left out of --quick (run without --quick to measure it)"
    elif amp == "bf16" and not cuda_bf16_native():
        return "this GPU has no native bf16 (compute capability below 8.0)"
    return None


def plan_train_rows(s: Settings, device: torch.device, subset: str = "all") -> list[TrainRowPlan]:
    """The rows of the training-step benchmark, in table order.

    Per experiment: the ceiling (synthetic views) over the matrix AMP x channels_last x
    compile for the first experiment, and at fastairl's default plus fp32 NCHW for the
    others (keeps the default GPU run inside its time budget); then every loader end to
    end at the headline setting (fewer with ``--quick``, see :func:`_e2e_variants`); then
    the reference-style row, whatever ``--amp``/``--layouts`` say. The ceiling that bounds the
    end-to-end rows is planned twice, right before and right after them (``bracket``).
    ``subset="scaling"`` (the torchrun workers) keeps the headline ceiling, the end-to-end
    rows and the reference.
    """
    h_amp, h_cl = headline_config(s, device)
    compiles = [False, True] if s.compile else [False]
    cls = [x == "channels_last" for x in s.layouts]
    rows: list[TrainRowPlan] = []
    for i, exp in enumerate(s.exps):
        if subset == "scaling":
            combos = [(h_amp, h_cl, c) for c in compiles]
        elif i == 0:
            combos = [(a, cl, c) for c in compiles for a in s.amps for cl in cls]
        else:
            combos = [(h_amp, h_cl, c) for c in compiles]
            if "off" in s.amps and False in cls and (h_amp, h_cl) != ("off", False):
                combos.append(("off", False, False))
        e2e = [TrainRowPlan(exp, "end_to_end", h_amp, h_cl, s.compile and device.type == "cuda", v)
               for v in _e2e_variants(s)]
        bound = (h_amp, h_cl, e2e[0].compile) if e2e else None
        rows += [TrainRowPlan(exp, "ceiling", amp, cl, c, None, _amp_skip(amp, c, device, s.quick))
                 for amp, cl, c in combos if (amp, cl, c) != bound]
        if bound:  # right before and after the rows it bounds; measured even where --quick leaves bf16 out
            ceil = TrainRowPlan(exp, "ceiling", *bound, None, _amp_skip(bound[0], bound[2], device, False),
                                "before")
            rows += [ceil, *e2e, dataclasses.replace(ceil, bracket="after")]
        rows.append(TrainRowPlan(exp, "reference", "off", False, False, Variant("folder", "folder")))
    return rows


def _e2e_variants(s: Settings) -> list[Variant]:
    """Loaders of the end-to-end rows. ``--quick`` keeps one row per backend (the packed
    source where one exists, since that is how a user trains with it) and leaves the
    folder loader to the reference-style row."""
    vs = loader_variants(s.loaders)
    if not s.quick:
        return vs
    out = []
    for b in dict.fromkeys(v.backend for v in vs if v.backend != "folder"):
        mine = [v for v in vs if v.backend == b]
        packed = next((v for v in mine if v.source == "packed"), None)
        out.append(packed if packed is not None and s.packed is not None else mine[0])
    return out


def _exp_config(exp: str, s: Settings, world: int):
    from fastairl.config import apply_overrides, load_experiment
    cfg = load_experiment(exp)
    cfg = apply_overrides(cfg, list(s.overrides) + [f"arch={s.arch}", f"image_size={s.image_size}",
                                                     f"batch_size={s.batch_size * world}"])
    return cfg


#: Extra warm-up steps for the first training row a process measures: it alone pays the
#: process's one-off costs (kernel JIT and primitive caches, allocator growth, CUDA/cuDNN
#: handles), which would otherwise make the first row look slower than the rest.
FIRST_ROW_EXTRA_WARMUP = 2
_first_train_row = True


def bench_train_row(p: TrainRowPlan, s: Settings, device: torch.device, workdir: Path, index: int) -> dict:
    """Images/s of ``Trainer.train_step`` for one row (a Trainer built by its own ``setup``)."""
    global _first_train_row
    from fastairl import distributed as fdist
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
        # builds GPUAugment); the nvjpeg loader needs nothing beyond torch and reads either
        # source. It is never iterated.
        root = s.data if (Path(s.data) / "train").is_dir() else s.packed
        if root is None:
            return _skip(row, f"{s.data} has neither a train/ folder nor a packed file")
        loader, workers = "nvjpeg", 1
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


# --------------------------------------------------------------------------------------
# Scaling under torchrun
# --------------------------------------------------------------------------------------

def run_scaling(s: Settings, single: list[dict], workdir: Path) -> list[dict]:
    """Run the training rows in ``s.nproc`` processes under torchrun; compare with one process."""
    spec_path = workdir / "worker-spec.json"
    out_path = workdir / "worker-result.json"
    spec_path.write_text(json.dumps({"settings": dataclasses.asdict(s), "out": str(out_path),
                                     "workdir": str(workdir / "scaling")}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(s.nproc),
           str(Path(__file__).resolve()), "--worker-spec", str(spec_path)]
    # The N processes share this machine's cores: give each its share of threads (an
    # inherited OMP_NUM_THREADS meant for one process would oversubscribe the CPU).
    threads = max(1, (os.cpu_count() or 1) // s.nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log.info("scaling: OMP_NUM_THREADS=%d %s", threads, shlex.join(cmd))
    proc = subprocess.run(cmd, cwd=str(Path(__file__).resolve().parent.parent), env=env)
    if proc.returncode != 0 or not out_path.is_file():
        why = f"torchrun with {s.nproc} processes exited with code {proc.returncode} (see its output above)"
        log.error("scaling FAILED: %s", why)
        return [{"name": f"scaling x{s.nproc}", "exp": None, "status": "failed", "reason": why, "nproc": s.nproc}]
    multi = json.loads(out_path.read_text())["train"]
    rows = []
    for m in multi:
        one = next((x for x in single if (x["exp"], x["kind"], x["loader"], x["config"]) ==
                    (m["exp"], m["kind"], m["loader"], m["config"])), None)
        row = {"name": m["name"], "exp": m["exp"], "kind": m["kind"], "loader": m["loader"], "config": m["config"],
               "nproc": s.nproc, "status": m["status"], "reason": m["reason"], "total_images_per_s": None,
               "per_process_images_per_s": None, "single_process_images_per_s": None, "efficiency": None}
        if m["status"] == "ok":
            tot = m["images_per_s"]
            row["total_images_per_s"] = tot
            row["per_process_images_per_s"] = summarize([v / s.nproc for v in tot["values"]])
            if one is not None and one["status"] == "ok":
                row["single_process_images_per_s"] = one["images_per_s"]
                row["efficiency"] = ratio(row["per_process_images_per_s"]["median"], one["images_per_s"]["median"])
        rows.append(row)
    return rows


def worker_main(spec_path: str) -> int:
    """One torchrun rank: the training rows of the scaling subset; rank 0 writes the result."""
    from fastairl import distributed as fdist
    rank = int(os.environ.get("RANK", "0"))
    _configure_logging(rank)
    spec = json.loads(Path(spec_path).read_text())
    s = Settings(**spec["settings"])
    device = torch.device(s.device)
    if device.type == "cuda":  # one GPU per rank, chosen before anything touches CUDA
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    workdir = Path(spec["workdir"])
    try:
        rows = bench_train(s, device, workdir, subset="scaling")
        if rank == 0:
            Path(spec["out"]).write_text(json.dumps({"train": rows}))
    finally:
        fdist.teardown()
    return 0


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_stats(st: dict | None) -> str:
    if not st:
        return "-"
    return f"{fmt_num(st['median'])} [{fmt_num(st['min'])}-{fmt_num(st['max'])}]"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


def fmt_pct(st: dict | None) -> str:
    return "-" if not st else f"{st['median'] * 100:.0f}%"


def _status_cell(r: dict) -> str | None:
    if r["status"] == "ok":
        return None
    return f"{r['status']}: {r['reason']}"


_KIND_LABEL = {"ceiling": "ceiling", "end_to_end": "end to end", "reference": "**reference-style**"}


def render_markdown(res: dict) -> str:
    """The human report: settings, then one table per section, then every skipped/failed row."""
    s, m = res["settings"], res["machine"]
    gpu = f"{m['gpu_count']} x {m['gpu']}" if m["gpu"] else "no GPU"
    L = [f"# fastairl throughput: {res['host']}, {res['created'][:16].replace('T', ' ')}", "",
         f"Command: `{res['command']}`", "",
         f"Machine: {m['cpu_count']} CPU cores, {gpu}, Python {m['python']}, torch {m['torch']}, "
         f"torchvision {m['torchvision']}, device `{s['device']}`", "",
         f"Settings: {', '.join(s['exps'])} at {s['arch']}/{s['image_size']} px, batch {s['batch_size']} per "
         f"process; warm-up {s['warmup']} batch(es), then {s['repeats']} windows of {s['batches']} steps "
         f"({s['loader_batches']} batches for loaders); numbers are the median [min-max] over the windows. "
         f"Workers: {s['folder_workers']} for the reference-style folder loader, {s['fast_workers']} threads for "
         f"the other backends.", "",
         f"Data: {s['data']} ({s['data_kind']}); packed: {s['packed'] or 'none (' + str(s['packed_reason']) + ')'}",
         "", honesty.load_line(res), ""]
    if res["loaders"]:
        recipe = next((r.get("recipe") for r in res["loaders"] if r.get("recipe")), "")
        L += [f"## Loaders (recipe {recipe}, decoded views per second counted as pairs/s)", "",
              "| loader | decode | workers | loader only, pairs/s | full path (+ GPUAugment), pairs/s "
              "| full path vs reference | peak RSS MB (processes) |",
              "|---|---|---|---|---|---|---|"]
        for r in res["loaders"]:
            note = _status_cell(r)
            if note:
                L.append(f"| {r['name']} | {r['decode']} | {r['workers']} | {note} | | | |")
                continue
            full = "same (augments in its workers)" if r["full_path_same"] else fmt_stats(r["full_path"])
            rss = r["peak_rss"]
            rss_s = "-" if not rss else f"{rss['total_mb']:,.0f} ({1 + rss['worker_processes']})"
            ref = " (reference)" if r["backend"] == "folder" else ""
            L.append(f"| {r['name']}{ref} | {r['decode']} | {r['workers']} | {fmt_stats(r['loader_only'])} | {full} "
                     f"| {fmt_ratio(r['ratio_to_reference'])} | {rss_s} |")
        L.append("")
    if res["augment"]:
        L += ["## Augmentation module (GPUAugment on synthetic uint8 views)", "",
              "| recipe | device | batch | ms per batch | ms per 256 images | pairs/s |", "|---|---|---|---|---|---|"]
        for r in res["augment"]:
            note = _status_cell(r)
            if note:
                L.append(f"| {r['recipe']} | {r['device']} | {r['batch_size']} | {note} | | |")
                continue
            L.append(f"| {r['recipe']} | {r['device']} | {r['batch_size']} | {fmt_stats(r['ms_per_batch'])} "
                     f"| {fmt_stats(r['ms_per_256'])} | {fmt_stats(r['pairs_per_s'])} |")
        L.append("")
    if res["train"]:
        L += ["## Training step (Trainer.train_step; images/s, an image counted once with all its views)", "",
              "| exp | row | loader | precision / layout | images/s | step ms | data wait | peak GPU MB "
              "| vs reference | of ceiling |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            kind = _KIND_LABEL[r["kind"]]
            note = _status_cell(r)
            if note:
                L.append(f"| {r['exp']} | {kind} | {r['loader']} | {r['config']} | {note} | | | | | |")
                continue
            mem = "-" if r["peak_device_mem_mb"] is None else f"{r['peak_device_mem_mb']:,.0f}"
            L.append(f"| {r['exp']} | {kind} | {r['loader']} | {r['config']} | {fmt_stats(r['images_per_s'])} "
                     f"| {fmt_num(_median(r['step_ms']))} | {fmt_pct(r['data_wait_share'])} | {mem} "
                     f"| {fmt_ratio(r['ratio_to_reference'])} | "
                     f"{honesty.ceiling_cell(r)} |")
        L.append("")
        L += honesty.check_lines(res)
    if res["scaling"]:
        n = res["settings"]["nproc"]
        L += [f"## Scaling: {n} processes under torchrun vs one", "",
              "| exp | row | loader | precision / layout | 1 process, images/s | total, images/s | per process "
              "| efficiency |", "|---|---|---|---|---|---|---|---|"]
        for r in res["scaling"]:
            note = _status_cell(r)
            if note:
                L.append(f"| {r.get('exp') or '-'} | {_KIND_LABEL.get(r.get('kind'), '-')} | {r.get('loader', '-')} "
                         f"| {r.get('config', '-')} | {note} | | | |")
                continue
            eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.0%}"
            L.append(f"| {r['exp']} | {_KIND_LABEL[r['kind']]} | {r['loader']} | {r['config']} "
                     f"| {fmt_stats(r['single_process_images_per_s'])} | {fmt_stats(r['total_images_per_s'])} "
                     f"| {fmt_stats(r['per_process_images_per_s'])} | {eff} |")
        L.append("")
    skipped = [(sec, r) for sec in ("loaders", "augment", "train", "scaling") for r in res[sec]
               if r["status"] != "ok"]
    if skipped:
        L += ["## Skipped and failed rows", ""]
        L += [f"- {sec}: {r['name']}: **{r['status']}**: {r['reason']}" for sec, r in skipped]
        L.append("")
    out = res.get("outputs", {})
    if out.get("png_status") == "skipped":
        L += [f"Chart: skipped ({out['png_reason']}).", ""]
    return "\n".join(L + [honesty.wall_line(res)])


def plot(res: dict, path: Path) -> tuple[bool, str | None]:
    """Bar chart of images/s per training configuration, one panel per experiment, with the
    default-setting ceiling as a dashed line. Returns (written, reason if not)."""
    rows = [r for r in res["train"] if r["status"] == "ok"]
    if not rows:
        return False, "no training row was measured"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return False, f"matplotlib is not importable ({type(e).__name__}: {_one_line(e)})"
    exps = list(dict.fromkeys(r["exp"] for r in rows))
    heights = [max(2.0, 0.42 * sum(1 for r in rows if r["exp"] == e) + 1.2) for e in exps]
    fig, axes = plt.subplots(len(exps), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colours = {"ceiling": "#4c72b0", "end_to_end": "#55a868", "reference": "#c44e52"}
    head = res["settings"].get("headline", {"amp": "off", "channels_last": True})
    for ax, exp in zip(axes[:, 0], exps):
        rs = [r for r in rows if r["exp"] == exp]
        labels = [f"{r['kind'].replace('_', ' ')}: {r['loader']}, {r['config']}" for r in rs]
        vals = [r["images_per_s"]["median"] for r in rs]
        errs = [[v - r["images_per_s"]["min"] for v, r in zip(vals, rs)],
                [r["images_per_s"]["max"] - v for v, r in zip(vals, rs)]]
        y = list(range(len(rs)))[::-1]
        ax.barh(y, vals, xerr=errs, color=[colours[r["kind"]] for r in rs], capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        for yy, v, r in zip(y, vals, rs):
            ax.text(r["images_per_s"]["max"], yy, f"  {fmt_num(v)}", va="center", fontsize=7)
        ceilings = [r for r in rs if r["kind"] == "ceiling"]
        ceil = next((r for r in ceilings if r["amp"] == head["amp"] and r["channels_last"] == head["channels_last"]
                     and not r["compile"]), ceilings[0] if ceilings else None)
        if ceil is not None:
            cv = ceil["images_per_s"]["median"]
            ax.axvline(cv, color="k", linestyle="--", linewidth=1,
                       label=f"ceiling ({ceil['config']}): {fmt_num(cv)} images/s")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{exp}: {res['settings']['arch']}/{res['settings']['image_size']} px, batch "
                     f"{res['settings']['batch_size']} per process", fontsize=9)
        ax.set_xlabel("images/s (median, whiskers min-max)", fontsize=8)
        ax.margins(x=0.15)
    m = res["machine"]
    fig.suptitle(f"fastairl training throughput on {res['host']} ({m['gpu'] or 'CPU only'})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, None


def validate_result(res: dict) -> None:
    """Raise ValueError if ``res`` does not follow :data:`SCHEMA` (used by the tests and before writing)."""
    for key in ("schema", "created", "host", "command", "machine", "settings", "loaders", "augment", "train",
                "scaling", "outputs"):
        if key not in res:
            raise ValueError(f"result lacks {key!r}")
    if res["schema"] != SCHEMA:
        raise ValueError(f"schema {res['schema']!r} is not {SCHEMA!r}")
    for sec in ("loaders", "augment", "train", "scaling"):
        for r in res[sec]:
            if r.get("status") not in STATUSES:
                raise ValueError(f"{sec} row {r.get('name')!r} has status {r.get('status')!r}")
            if r["status"] != "ok" and not r.get("reason"):
                raise ValueError(f"{sec} row {r.get('name')!r} is {r['status']} without a reason")
    for r in res["loaders"]:
        if r["status"] == "ok":
            _check_stats(r["loader_only"], f"loader {r['name']}")
            _check_stats(r["full_path"], f"loader {r['name']}")
    for r in res["train"]:
        if r["status"] == "ok":
            for k in ("images_per_s", "step_ms", "data_wait_share"):
                _check_stats(r[k], f"train {r['name']} {k}")


def _check_stats(st: dict | None, what: str) -> None:
    if not isinstance(st, dict) or not {"median", "min", "max", "n", "values"} <= set(st):
        raise ValueError(f"{what}: expected median/min/max/n/values, got {st!r}")
    if not st["min"] <= st["median"] <= st["max"] or st["n"] != len(st["values"]):
        raise ValueError(f"{what}: inconsistent statistics {st!r}")


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from fastairl.cli_util import ArgumentParser  # the one error line of every tool
    p = ArgumentParser(
        prog="bench/throughput.py",
        description="Loader and training-step throughput of fastairl next to the reference-style pipeline "
                    "and the compute ceiling. Writes <out>/<host>-<date>.md, .json and .png.")
    p.add_argument("--data", help="'demo', or an ImageNet-style folder (train/<class>/*) and/or a folder with "
                                  "train.beton (default: demo on CPU, a generated photo set on a GPU)")
    p.add_argument("--photos", type=int, metavar="N",
                   help="use N real photographs at ImageNet sizes (generated once into the cache) as --data")
    p.add_argument("--packed", help="a folder holding train.beton (+ classes.json) for the packed rows "
                                    "(default: --data's, else packed once from --data with write_ffcv)")
    p.add_argument("--max-pack", type=int, default=DEFAULT_MAX_PACK,
                   help=f"pack --data automatically only up to this many images (default {DEFAULT_MAX_PACK})")
    p.add_argument("--exp", help="experiment(s), comma-separated (default: moco_v2p; moco_v2p,byol,supervised "
                                 "on a GPU); the first one's recipe is used for the loader rows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny run: resnet18 at 64 px, a few batches")
    p.add_argument("--only", choices=["loaders", "train"], help="run one half of the benchmark")
    p.add_argument("--loaders", default=",".join(BACKENDS),
                   help=f"backends to try, comma-separated, from {','.join(BACKENDS)} (default: all)")
    p.add_argument("--workers", type=int, help="loader workers/threads per process for every backend (default: "
                                                "6 for the reference-style folder loader, all cores for the others)")
    p.add_argument("--batch-size", type=int,
                   help="batch per process (default 128 on a GPU, 32 on a CPU, 16 with --quick)")
    p.add_argument("--arch", help="backbone (default resnet50 on a GPU, resnet18 on a CPU)")
    p.add_argument("--image-size", type=int, help="crop size (default 224 on a GPU, 112 on a CPU, 64 --quick)")
    p.add_argument("--warmup", type=int, help="untimed batches before the windows")
    p.add_argument("--batches", type=int, help="training steps per timed window")
    p.add_argument("--loader-batches", type=int, help="loader batches per timed window")
    p.add_argument("--repeats", type=int, help="timed windows per row (median, min, max over them)")
    p.add_argument("--amp", default=",".join(AMP_CHOICES),
                   help="precisions of the ceiling matrix, comma-separated from bf16,fp16,off (default: all)")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help="memory layouts of the ceiling matrix, from channels_last,nchw (default: both)")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (CUDA)")
    p.add_argument("--nproc", type=int, default=1, help="also run the training rows in N processes under torchrun")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment field for every row, e.g. --set queue_size=4096")
    p.add_argument("--out", default=str(RESULTS_DIR), help="output folder (default outputs/bench)")
    p.add_argument("--name", help="output file name without suffix (default <host>-<date>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files of the same name")
    p.add_argument("--verbose", action="store_true", help="show fastairl's own INFO logs and tracebacks")
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    return p


def _configure_logging(rank: int = 0, verbose: bool = False) -> None:
    fmt = "[bench %(asctime)s" + (f" r{rank}" if rank else "") + "] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=fmt, datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    log.setLevel(logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING))


def make_settings(args: argparse.Namespace) -> tuple[Settings, torch.device]:
    """Validate the flags (one-line BenchError per bad value) and fill the device's defaults."""
    from fastairl.config import ConfigError, apply_overrides, load_experiment
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible to torch (use --device cpu or auto)")
    dev_type = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    preset = dict(PRESETS["quick" if args.quick else dev_type])
    for key in ("arch", "image_size", "batch_size", "warmup", "batches", "loader_batches", "repeats"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    for key, low in (("batch_size", 1), ("batches", 1), ("loader_batches", 1), ("repeats", 1), ("warmup", 0),
                     ("image_size", 32)):
        if preset[key] < low:
            raise BenchError(f"--{key.replace('_', '-')} {preset[key]}: must be >= {low}")
    if args.nproc < 1:
        raise BenchError(f"--nproc {args.nproc}: must be >= 1")
    if dev_type == "cuda" and args.nproc > torch.cuda.device_count():
        raise BenchError(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s) are visible")
    if args.workers is not None and args.workers < 0:
        raise BenchError(f"--workers {args.workers}: must be >= 0")
    if args.photos is not None and args.photos < 16:
        raise BenchError(f"--photos {args.photos}: give at least 16 images")
    if args.photos is not None and args.data is not None:
        raise BenchError("--photos and --data both name the data; give one of them")
    if args.max_pack < 0:
        raise BenchError(f"--max-pack {args.max_pack}: must be >= 0")
    loaders = _pick_list(args.loaders, BACKENDS, "--loaders")
    amps = _pick_list(args.amp, AMP_CHOICES, "--amp")
    layouts = _pick_list(args.layouts, LAYOUTS, "--layouts")
    exps = [x.strip() for x in args.exp.split(",") if x.strip()] if args.exp else list(DEFAULT_EXPS[dev_type])
    if not exps:
        raise BenchError(f"--exp {args.exp!r}: name at least one experiment")
    for e in exps:  # fail now, not after minutes of measuring
        try:
            apply_overrides(load_experiment(e), list(args.overrides) + [f"arch={preset['arch']}",
                                                                        f"image_size={preset['image_size']}"])
        except ConfigError as err:
            raise BenchError(f"--exp/--set/--arch/--image-size: {err}") from None
    cores = os.cpu_count() or 1
    fast = args.workers if args.workers is not None else max(1, cores // args.nproc)
    folder = args.workers if args.workers is not None else REFERENCE_WORKERS
    s = Settings(device=dev_type, exps=exps, arch=preset["arch"], image_size=preset["image_size"],
                 batch_size=preset["batch_size"], warmup=preset["warmup"], batches=preset["batches"],
                 loader_batches=preset["loader_batches"], repeats=preset["repeats"], folder_workers=folder,
                 fast_workers=fast, loaders=loaders, amps=amps, layouts=layouts, compile=args.compile,
                 quick=args.quick, nproc=args.nproc, only=args.only, overrides=list(args.overrides))
    return s, torch.device(dev_type)


def _pick_list(text: str, choices: Sequence[str], flag: str) -> list[str]:
    items = list(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
    if not items or any(x not in choices for x in items):
        raise BenchError(f"{flag} {text}: choose one or more of {','.join(choices)}, comma-separated")
    return items


def _output_paths(args: argparse.Namespace, created: datetime.datetime) -> dict[str, Path]:
    name = args.name or f"{_host()}-{created.strftime('%Y-%m-%d-%H%M')}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise BenchError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: is a file, expected a folder")
    paths = {k: out / f"{name}.{k}" for k in ("md", "json", "png")}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise BenchError(f"{existing[0]} already exists; pass --overwrite to replace it or --name to choose "
                         f"another name")
    return paths


def _machine() -> dict:
    import torchvision
    cuda = torch.cuda.is_available()
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": cuda,
            "cuda_version": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0}


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    s, device = make_settings(args)
    load_start = honesty.load_average()
    created = datetime.datetime.now()
    paths = _output_paths(args, created)
    root, kind = _resolve_data(args, s.device)
    s.data, s.data_kind = str(root), kind
    if args.packed is not None:
        pk = Path(args.packed).expanduser()
        if not (pk / "train.beton").is_file():
            raise BenchError(f"--packed {pk}: no train.beton there (pack with data_prep/write_ffcv.py)")
        s.packed = str(pk)
    else:
        wants_packed = any(b != "folder" for b in s.loaders)
        packed, why = ensure_packed(root, args.max_pack) if wants_packed else (None, "no packed backend selected")
        s.packed, s.packed_reason = (str(packed) if packed else None), why
    log.info("device %s; data %s (%s); packed: %s", device, s.data, kind, s.packed or s.packed_reason)

    res: dict = {"schema": SCHEMA, "created": created.isoformat(timespec="seconds"), "host": _host(),
                 "command": "python bench/throughput.py " + shlex.join(list(argv)), "machine": _machine(),
                 "settings": {**dataclasses.asdict(s), "default_amp": default_amp(device),
                              "headline": dict(zip(("amp", "channels_last"), headline_config(s, device)))},
                 "loaders": [], "augment": [], "train": [], "scaling": [], "outputs": {}}
    t_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="fastairl-bench-"))
    try:
        if s.only in (None, "loaders"):
            res["loaders"] = [bench_loader(v, s, device) for v in loader_variants(s.loaders)]
            recipes = []
            for e in s.exps:
                r = _exp_config(e, s, 1).recipe
                if r not in recipes:
                    recipes.append(r)
            res["augment"] = [bench_augment(r, s, device) for r in recipes]
        if s.only in (None, "train"):
            res["train"] = bench_train(s, device, workdir)
            if s.nproc > 1:
                res["scaling"] = run_scaling(s, res["train"], workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t_start
    res["load_average"] = {"start": load_start, "end": honesty.load_average()}
    compute_ratios(res)
    paths["md"].parent.mkdir(parents=True, exist_ok=True)
    ok, why = plot(res, paths["png"])
    res["outputs"] = {"markdown": str(paths["md"]), "json": str(paths["json"]),
                      "png": str(paths["png"]) if ok else None, "png_status": "ok" if ok else "skipped",
                      "png_reason": why}
    if not ok:
        log.warning("chart skipped: %s", why)
        paths["png"].unlink(missing_ok=True)  # with --overwrite: no stale chart beside the new report
    validate_result(res)
    res["wall_seconds"] = honesty.process_seconds()
    md = render_markdown(res)
    paths["md"].write_text(md + "\n")
    paths["json"].write_text(json.dumps(res, indent=1) + "\n")
    print(md, flush=True)
    log.info("wrote %s, %s%s in %.0f s", paths["md"], paths["json"], f", {paths['png']}" if ok else "",
             res["seconds"])
    failed = [r["name"] for sec in ("loaders", "augment", "train", "scaling") for r in res[sec]
              if r["status"] == "failed"]
    if failed:
        log.error("%d row(s) failed: %s", len(failed), "; ".join(failed))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker_spec:
        return worker_main(args.worker_spec)
    _configure_logging(0, args.verbose)
    from fastairl.config import ConfigError
    try:
        return run(args, argv)
    except (BenchError, ConfigError) as e:
        from fastairl.cli_util import error
        return error(e)
    except KeyboardInterrupt:
        print("bench/throughput.py: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
