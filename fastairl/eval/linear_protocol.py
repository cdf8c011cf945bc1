"""The reference's linear protocol as data: its two presets, the flags on top of them, the
lr rule, the run's default name, and the classifier (Linear, then an optional affine BN)
with the checkpoint layout it is saved in. ``fastairl.eval.linear`` runs it."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fastairl.eval.flags import check_positive_flags
from fastairl.eval.scale import DEFAULT_IMAGE_SIZE

log = logging.getLogger("fastairl")

#: The two settings of the reference. ``lr`` is per 256 images of global batch.
PRESETS: dict[str, dict] = {
    "default": {"lr": 30.0, "batch_size": 256, "epochs": 100, "momentum": 0.9, "weight_decay": 0.0,
                "nesterov": False, "schedule": "multistep", "milestones": (60, 80)},
    "large_norm": {"lr": 0.2, "batch_size": 256, "epochs": 80, "momentum": 0.9, "weight_decay": 0.0,
                   "nesterov": True, "schedule": "cosine", "milestones": ()},
}
EVAL_EVERY = 20

#: Checkpoint stems too generic to name a run by themselves; the parent folder is prepended.
_GENERIC_STEMS = {"last", "best", "checkpoint", "model", "final"}

#: Layout tag of the classifier in linear-eval checkpoints (``linear.*`` then ``bn.*``).
HEAD_LAYOUT = "linear_then_bn"


class LinearClassifier(nn.Module):
    """Linear -> [affine BatchNorm1d(classes)], as the reference's linear protocol: the
    Linear keeps PyTorch's default init and ``--bn`` normalises the logits, not the
    features."""

    def __init__(self, feat_dim: int, num_classes: int, bn: bool = False):
        super().__init__()
        self.linear = nn.Linear(feat_dim, num_classes)
        self.bn = nn.BatchNorm1d(num_classes) if bn else None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        out = self.linear(f)
        return self.bn(out) if self.bn is not None else out


def check_head_layout(ck: dict, path) -> None:
    """Refuse, in one line, a linear-eval checkpoint whose ``--bn`` classifier has the old
    layout (affine-free BN on the features before the Linear); without ``--bn`` the layout
    never changed, so those checkpoints resume as before."""
    from fastairl.runtime.errors import UserError
    if ck.get("bn") and "bn.weight" not in ck.get("classifier", {}):
        raise UserError(f"--resume: {path} was written by an older fastairl whose --bn put an affine-free BN "
                        f"before the Linear; --bn now follows the reference (BN after the Linear), so that "
                        f"run cannot be continued: start a new run (another --name, or --overwrite)")


def lr_for(schedule: str, base_lr: float, epoch: int, step: int, total_steps: int,
           milestones: tuple[int, ...]) -> float:
    """``multistep``: x0.1 at each milestone epoch (constant within an epoch, as the
    reference's per-epoch scheduler); ``cosine``: per iteration from ``base_lr`` to 0."""
    from fastairl.optim.schedules import lr_at
    kind = "cosine" if schedule == "cosine" else "multistep_epochs"
    return lr_at(kind, step, total_steps, base_lr, milestones=milestones, epoch=epoch)


def default_run_name(ckpt: str | None, encoder: str, arch: str) -> str:
    """``<ckpt-stem>-<encoder>``; generic stems (``last.pth``) get their folder's name in front."""
    if ckpt is None:
        return f"random-{arch}"
    p = Path(ckpt)
    stem = p.stem
    if stem.lower() in _GENERIC_STEMS and p.resolve().parent.name:
        stem = f"{p.resolve().parent.name}-{stem}"
    return f"{stem}-{encoder}"


@dataclass
class Settings:
    lr: float
    batch_size: int
    epochs: int
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str
    milestones: tuple[int, ...]
    eval_every: int


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The preset, then any explicitly given flag on top of it."""
    from fastairl.runtime.errors import UserError
    pre = dict(PRESETS["large_norm" if args.large_norm_config else "default"])
    for key in ("lr", "batch_size", "epochs", "weight_decay"):
        v = getattr(args, key)
        if v is not None:
            pre[key] = v
    if args.milestones is not None:
        if pre["schedule"] != "multistep":
            raise UserError("--milestones: the --large-norm-config schedule is cosine and has no milestones")
        try:
            pre["milestones"] = tuple(int(s) for s in args.milestones.split(",") if s.strip())
        except ValueError:
            raise UserError(f"--milestones {args.milestones}: expected comma-separated epochs, e.g. 60,80") from None
    s = Settings(eval_every=EVAL_EVERY if args.eval_every is None else args.eval_every, **pre)
    if args.large_norm_config and args.batch_size is not None and args.lr is None:
        log.info("--large-norm-config with --batch-size %d: lr 0.2 x %d/256 = %.4g (the reference ran 0.2 at "
                 "batch 256)", s.batch_size, s.batch_size, s.lr * s.batch_size / 256.0)
    size = DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size  # None: eval_scale decides later
    check_positive_flags((("--batch-size", s.batch_size), ("--epochs", s.epochs), ("--image-size", size)), size)
    if s.lr <= 0:
        raise UserError(f"--lr {s.lr}: must be > 0")
    if s.weight_decay < 0:
        raise UserError(f"--weight-decay {s.weight_decay}: must be >= 0")
    if s.eval_every < 0:
        raise UserError(f"--eval-every {s.eval_every}: must be >= 0 (0: only at the end)")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps {args.max_steps}: must be > 0")
    if args.workers < 0:
        raise UserError(f"--workers {args.workers}: must be >= 0")
    if args.skip_nonfinite < 0:
        raise UserError(f"--skip-nonfinite {args.skip_nonfinite}: must be >= 0")
    return s
