"""Data: recipes, loader backends and the batched augmentation module.

``resolve_data(arg)`` turns ``--data`` into a folder; ``build_loader(name, spec)`` picks
the backend. ``auto`` prefers the fastest backend that can run here and logs why. What
each backend is lives in :mod:`fastairl.data.registry`; the names here are read from it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import registry

log = logging.getLogger(__name__)


def loader_names() -> tuple[str, ...]:
    """``--loader`` choices: ``auto`` and every registered backend."""
    return ("auto",) + registry.names()


def __getattr__(name: str):
    if name == "LOADERS":  # read when asked, so that a backend registered later is a choice too
        return loader_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_data(arg: str) -> Path:
    """``demo`` -> the built-in demo dataset (generated on first use); else an existing path."""
    if arg == "demo":
        from .demo import ensure_demo_data
        return ensure_demo_data()
    p = Path(arg).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"--data {arg}: no such folder (give an ImageNet-style folder with train/ "
                                f"and val/, a folder with train.beton/val.beton, or 'demo')")
    if not p.is_dir():
        raise NotADirectoryError(f"--data {arg}: is a file, expected a folder")
    return p


def has_packed(root: Path) -> bool:
    return (Path(root) / "train.beton").is_file()


def choose_loader(name: str, root: Path, device_type: str) -> str:
    if name not in loader_names():
        raise ValueError(f"--loader {name}: unknown; choose one of {loader_names()}")
    if name != "auto":
        return name
    if device_type == "cuda":
        ok, why = registry.available("dali", "cuda")
        if ok:
            log.info("--loader auto: GPU present and NVIDIA DALI usable: decoding on the GPU with DALI (dali loader)")
            return "dali"
        log.info("--loader auto: GPU present but DALI cannot run (%s): decoding with torchvision's nvJPEG "
                 "(nvjpeg loader)", why)
        return "nvjpeg"
    if has_packed(root):
        ok, why = registry.available("ffcv", device_type)
        if ok:
            log.info("--loader auto: using ffcv (found %s/train.beton)", root)
            return "ffcv"
        log.warning("--loader auto: %s/train.beton exists but ffcv cannot run here: %s", root, why)
    log.info("--loader auto: using folder (reference-style PIL loader)")
    return "folder"


def build_loader(name: str, spec):
    """The loader ``name`` for one rank, from a :class:`fastairl.data.base.LoaderSpec`."""
    if name not in registry.names():
        raise ValueError(f"--loader {name}: unknown; choose one of {loader_names()}")
    return registry.build(name, spec)
