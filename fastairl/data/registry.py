"""The loader backends: one entry per backend, the single source every part of fastairl reads.

Why: what a backend is (its output, where it decodes, the package it needs and how to
install it, whether it reads packed files) used to be spread over name tuples, if-chains
and a second table in the bench, and the copies drifted. Training, the eval tools, the
preview and the bench ask this module instead, and a new backend is one :func:`register`.

Entries name their module and the registry imports it on first use: ``import
fastairl.data`` stays free of the optional packages (ffcv changes torch's thread count
when imported, DALI is large), and the backend modules can build their own "package
missing" message here without this module depending on them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Backend", "OUTPUTS", "available", "base_check", "build", "decode_label", "get", "missing_message",
           "names", "needs_packed", "package_error", "register", "sources"]

#: The two batch kinds of the contract in :mod:`fastairl.data.base`.
OUTPUTS = ("uint8", "normalized")


def _device_type(device) -> str:
    """``"cuda"`` for ``cuda``, ``cuda:1`` or a ``torch.device``; else the type as written."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


@dataclass(frozen=True)
class Backend:
    """What fastairl knows about one loader backend.

    ``factory(spec)`` builds the loader for one rank from a
    :class:`~fastairl.data.base.LoaderSpec`; ``check(backend, device)`` says whether it
    can run on ``device`` here, as ``(ok, reason)`` with ``reason`` None when ok.
    ``package`` is the import name of the optional package the backend needs (None: only
    the base requirements), ``pip`` its requirement and ``install`` the command that
    installs it.
    """

    name: str
    output: str                  # one of OUTPUTS
    decode_cpu: str              # where it decodes on a CPU run, as the bench reports it
    decode_cuda: str             # ... and on a GPU run
    packed: bool                 # reads only packed (.beton) files, never an image folder
    module: str                  # the module holding the backend
    factory: Callable[[Any], Any]
    check: Callable[["Backend", str], "tuple[bool, str | None]"]
    title: str = ""              # the package as people call it, in messages
    package: str | None = None
    pip: str | None = None
    install: str | None = None
    orders: tuple[str, ...] = ("random",)  # the config's sample_order values it can draw
    reads_packed: bool = True    # can read packed files (False: image folders only)

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"backend {self.name!r}: output {self.output!r} is not one of {OUTPUTS}")
        if self.name == "auto" or not self.name:
            raise ValueError(f"backend name {self.name!r} is reserved")
        if self.package and not self.install:
            raise ValueError(f"backend {self.name!r} needs {self.package} but names no install command")


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend, replace: bool = False) -> Backend:
    """Add ``backend`` (after the built-in ones, in the order of registration)."""
    if backend.name in _BACKENDS and not replace:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def names() -> tuple[str, ...]:
    """The registered backend names, in registration order (``auto`` is not a backend)."""
    return tuple(_BACKENDS)


def get(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown loader backend {name!r}; registered: {', '.join(_BACKENDS)}") from None


def package_error(name: str) -> BaseException | None:
    """Why the package backend ``name`` needs does not import (None: it does, or it needs none).
    Any exception counts: a broken install raises more than ImportError."""
    pkg = get(name).package
    if not pkg:
        return None
    try:
        importlib.import_module(pkg)
    except Exception as e:
        return e
    return None


def missing_message(name: str, device=None, error: BaseException | None = None) -> str | None:
    """The one message for "the package backend ``name`` needs is missing, install it so".

    ``error``: the import error the caller already holds; without it the package is
    imported here. ``device`` (optional) is named in the message. None when the package
    imports (or the backend needs none).
    """
    b = get(name)
    if not b.package:
        return None
    err = error if error is not None else package_error(name)
    if err is None:
        return None
    others = "/".join(n for n in _BACKENDS if n != name)
    on = f" --device {device}" if device is not None else ""
    return (f"--loader {name}{on}: {b.title or b.package} is not importable ({type(err).__name__}: "
            f"{_one_line(err)}); install it: {b.install}; or choose --loader {others}")


def available(name: str, device="cpu") -> tuple[bool, str | None]:
    """``(True, None)`` if backend ``name`` can run on ``device`` here, else ``(False, why)``."""
    b = get(name)
    return b.check(b, _device_type(device))


def decode_label(name: str, device) -> str:
    """Where backend ``name`` decodes on ``device``, e.g. ``"GPU (nvJPEG)"``."""
    b = get(name)
    return b.decode_cuda if _device_type(device) == "cuda" else b.decode_cpu


def sources(name: str) -> tuple[str, ...]:
    """What backend ``name`` reads: ``"folder"`` (train/<class>/*.jpg), ``"packed"`` (train.beton)."""
    b = get(name)
    return ("packed",) if b.packed else ("folder", "packed") if b.reads_packed else ("folder",)


def needs_packed(name: str) -> bool:
    """Whether backend ``name`` reads only packed files (``--data demo`` is packed for it)."""
    return get(name).packed


def build(name: str, spec):
    """The loader of backend ``name`` for one rank."""
    return get(name).factory(spec)


# ---------------------------------------------------------------------------- built-in backends

def _lazy(module: str, attr: str) -> Callable:
    """``module.attr``, imported on the first call."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)
    call.__qualname__ = call.__name__ = f"{module}.{attr}"
    return call


def base_check(backend: Backend, device: str) -> tuple[bool, str | None]:
    """Runs wherever its package (if any) imports."""
    why = missing_message(backend.name, device)
    return (why is None), why


_dali_problem = _lazy("fastairl.data.dali_loader", "dali_problem")


def _dali_check(backend: Backend, device: str) -> tuple[bool, str | None]:
    ok, why = base_check(backend, device)
    if not ok:
        return ok, why
    try:
        why = _dali_problem(device)
    except Exception as e:
        return False, f"{backend.module} cannot be imported ({type(e).__name__}: {_one_line(e)})"
    return (why is None), (_one_line(why) if why else None)


register(Backend("folder", "normalized", decode_cpu="CPU (PIL)", decode_cuda="CPU (PIL)", packed=False,
                 module="fastairl.data.folder", factory=_lazy("fastairl.data.folder", "FolderLoader"),
                 check=base_check, reads_packed=False))
register(Backend("ffcv", "uint8", decode_cpu="CPU (ffcv)", decode_cuda="CPU (ffcv)", packed=True,
                 module="fastairl.data.ffcv_loader", factory=_lazy("fastairl.data.ffcv_loader", "build_ffcv_loader"),
                 check=base_check, title="ffcv", package="ffcv", pip="ffcv==1.0.2",
                 install="run `make venv` (it installs the system packages pkg-config libopencv-dev "
                         "libturbojpeg0-dev with apt and then pip install ffcv==1.0.2)",
                 orders=("random", "quasi_random")))
register(Backend("nvjpeg", "uint8", decode_cpu="CPU (torchvision)", decode_cuda="GPU (nvJPEG)", packed=False,
                 module="fastairl.data.nvjpeg_loader",
                 factory=_lazy("fastairl.data.nvjpeg_loader", "build_nvjpeg_loader"), check=base_check))
register(Backend("dali", "uint8", decode_cpu="CPU (DALI)", decode_cuda="GPU (DALI)", packed=False,
                 module="fastairl.data.dali_loader", factory=_lazy("fastairl.data.dali_loader", "build_dali_loader"),
                 check=_dali_check, title="NVIDIA DALI", package="nvidia.dali", pip="nvidia-dali-cuda130",
                 install="pip install nvidia-dali-cuda130 (or run `make venv`)"))
