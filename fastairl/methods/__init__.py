"""Method registry: the config's ``method`` field picks the class."""
from __future__ import annotations

import torch.nn as nn

from .byol import BYOL
from .moco import MoCo
from .supervised import Supervised

METHODS = ("moco", "byol", "supervised")


def build_method(cfg, device, num_classes: int) -> nn.Module:
    if cfg.method == "moco":
        return MoCo(cfg, device)
    if cfg.method == "byol":
        return BYOL(cfg, device)
    if cfg.method == "supervised":
        return Supervised(cfg, device, num_classes)
    raise ValueError(f"unknown method {cfg.method!r}; choose one of {METHODS}")
