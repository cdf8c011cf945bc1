"""Per-iteration learning-rate schedules of the reference.

* ``warmcos``: linear warm-up from 1e-6 to the base lr over ``warmup_iters``, then cosine
  from the base lr to 0 at ``total_iters``.
* ``multistep``: x0.1 at each milestone, milestones given as fractions of all iterations
  (the pre-training's [60, 80] means 60 % and 80 %).
* ``multistep_epochs``: x0.1 at each milestone *epoch*, constant within an epoch (the
  online probe and linear evaluation, as the reference's per-epoch schedulers).
* ``cosine``: from the base lr to 0, no warm-up; ``constant``: the base lr.

Every lr in fastairl (pre-training, probe, linear evaluation) comes from :func:`lr_at`, and
config validation reads its choices from the tuples below.
"""
from __future__ import annotations

import math

WARMUP_START_LR = 1e-6


def warmcos_lr(it: int, total_iters: int, warmup_iters: int, base_lr: float) -> float:
    if warmup_iters > 0 and it < warmup_iters:
        return WARMUP_START_LR + (base_lr - WARMUP_START_LR) * it / warmup_iters
    span = max(total_iters - warmup_iters, 1)
    t = min(max(it - warmup_iters, 0), span)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t / span))


def multistep_factor(it: int, total_iters: int, milestones: tuple[float, ...], gamma: float = 0.1) -> float:
    passed = sum(1 for m in milestones if it >= m * total_iters)
    return gamma ** passed


def epoch_multistep_lr(epoch: int, base_lr: float, milestones: tuple[int, ...], gamma: float = 0.1) -> float:
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


#: What ``Config.schedule`` (pre-training) and ``Config.probe_schedule`` may name.
PRETRAIN_SCHEDULES = ("warmcos", "multistep", "cosine", "constant")
PROBE_SCHEDULES = ("multistep_epochs", "cosine")


def lr_at(kind: str, it: int, total_iters: int, base_lr: float, warmup_iters: int = 0,
          milestones: tuple[float, ...] = (0.6, 0.8), epoch: int | None = None) -> float:
    """The lr at iteration ``it`` of ``total_iters`` (and, for ``multistep_epochs``, in
    ``epoch``, with ``milestones`` in epochs)."""
    if kind == "warmcos":
        return warmcos_lr(it, total_iters, warmup_iters, base_lr)
    if kind == "multistep":
        return base_lr * multistep_factor(it, total_iters, milestones)
    if kind == "multistep_epochs":
        if epoch is None:
            raise ValueError("lr schedule 'multistep_epochs' needs the epoch")
        return epoch_multistep_lr(epoch, base_lr, milestones)
    if kind == "cosine":
        return warmcos_lr(it, total_iters, 0, base_lr)
    if kind == "constant":
        return base_lr
    raise ValueError(f"unknown lr schedule {kind!r}; choose one of "
                     f"{', '.join(dict.fromkeys(PRETRAIN_SCHEDULES + PROBE_SCHEDULES))}")
