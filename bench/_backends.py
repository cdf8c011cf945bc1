"""Everything the bench knows about fastairl's loader backends, in one place: their names in
table order, the sources each reads, the package each needs, where each decodes, and why one
cannot run here. The rest of the bench asks this module (and names only ``folder``, as the
reference-style row), so that the package's own backend registry can replace these facts
here without touching the measurements."""
from __future__ import annotations

from bench._common import _one_line

#: Loader backends the bench knows how to ask for, in table order.
BACKENDS = ("folder", "ffcv", "dali", "nvjpeg")
#: The sources each backend reads, in table order: "folder" (train/<class>/*) or "packed" (train.beton).
SOURCES = {"folder": ("folder",), "ffcv": ("packed",), "dali": ("folder", "packed"),
           "nvjpeg": ("folder", "packed")}
#: The backend of the ceiling rows' Trainer: it hands over uint8 views (so the Trainer builds
#: GPUAugment), needs nothing beyond torch and reads either source. It is never iterated.
CEILING_LOADER = "nvjpeg"
#: The package an optional backend imports.
_PACKAGES = {"ffcv": "ffcv", "dali": "nvidia.dali"}


def sources(backend: str) -> tuple[str, ...]:
    """The sources ``backend`` reads (empty for a name the bench does not know)."""
    return SOURCES.get(backend, ())


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


def decode_where(backend: str, device: str) -> str:
    """Where ``backend`` decodes on ``device`` ("cpu" or "cuda"), as the loader table says it."""
    if backend == "folder":
        return "CPU (PIL)"
    if backend == "ffcv":
        return "CPU (ffcv)"
    gpu = device == "cuda"
    if backend == "nvjpeg":
        return "GPU (nvJPEG)" if gpu else "CPU (torchvision)"
    return "GPU (DALI)" if gpu else "CPU (DALI)"
