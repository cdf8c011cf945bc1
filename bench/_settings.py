"""The bench's settings: the defaults per mode, the flags' choices, and the one
:class:`Settings` record that every measurement reads, that the JSON stores and that a
torchrun worker is handed. :func:`make_settings` checks the flags before anything is
measured, so a bad value costs one line, not minutes."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from bench._backends import BACKENDS
from bench._common import BenchError

#: The reference's DataLoader workers per process.
REFERENCE_WORKERS = 6
#: ``--data`` packed automatically only up to this many training images (``--max-pack``).
DEFAULT_MAX_PACK = 50_000
RESULTS_DIR = Path("outputs") / "bench"  # default --out: git-ignored, out of the source tree
AMP_CHOICES = ("bf16", "fp16", "off")
LAYOUTS = ("channels_last", "nchw")

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
