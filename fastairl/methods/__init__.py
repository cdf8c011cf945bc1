"""Method registry: the config's ``method`` field picks the class; config validation and
the trainer read this one table."""
from __future__ import annotations

from .base import Method, SiameseMethod
from .byol import BYOL
from .moco import MoCo
from .supervised import Supervised

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (MoCo, BYOL, Supervised)}
METHODS = tuple(REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; a clear error for an unknown name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {METHODS}") from None


def build_method(cfg, device, num_classes: int) -> Method:
    return method_class(cfg.method).build(cfg, device, num_classes)


__all__ = ["BYOL", "METHODS", "Method", "MoCo", "REGISTRY", "SiameseMethod", "Supervised",
           "build_method", "method_class"]
