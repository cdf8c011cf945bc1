"""Optimizers and per-iteration schedules."""
from .lars import LARS, lars_param_groups
from .schedules import lr_at, multistep_factor, warmcos_lr

__all__ = ["LARS", "lars_param_groups", "lr_at", "multistep_factor", "warmcos_lr"]
