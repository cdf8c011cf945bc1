"""Data: recipes, loader backends and the batched augmentation module.

``resolve_data(arg)`` turns ``--data`` into a folder; ``build_loader(name, spec)`` picks
the backend. ``auto`` prefers the fastest backend that can run here and logs why.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
LOADERS = ("auto", "folder", "ffcv", "nvjpeg", "dali")


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
    if name not in LOADERS:
        raise ValueError(f"--loader {name}: unknown; choose one of {LOADERS}")
    if name != "auto":
        return name
    if device_type == "cuda":
        from .dali_loader import dali_problem
        why = dali_problem("cuda")
        if why is None:
            log.info("--loader auto: GPU present and NVIDIA DALI usable: decoding on the GPU with DALI (dali loader)")
            return "dali"
        log.info("--loader auto: GPU present but DALI cannot run (%s): decoding with torchvision's nvJPEG "
                 "(nvjpeg loader)", why)
        return "nvjpeg"
    if has_packed(root):
        try:
            import ffcv  # noqa: F401
            log.info("--loader auto: using ffcv (found %s/train.beton)", root)
            return "ffcv"
        except ImportError:
            log.warning("--loader auto: %s/train.beton exists but ffcv is not installed", root)
    log.info("--loader auto: using folder (reference-style PIL loader)")
    return "folder"


def build_loader(name: str, spec):
    """The loader ``name`` for one rank, from a :class:`fastairl.data.base.LoaderSpec`."""
    if name == "folder":
        from .folder import FolderLoader
        return FolderLoader(spec)
    if name == "ffcv":
        from .ffcv_loader import build_ffcv_loader
        return build_ffcv_loader(spec)
    if name == "nvjpeg":
        from .nvjpeg_loader import build_nvjpeg_loader
        return build_nvjpeg_loader(spec)
    if name == "dali":
        from .dali_loader import build_dali_loader
        return build_dali_loader(spec)
    raise ValueError(f"--loader {name}: unknown; choose one of {LOADERS}")
