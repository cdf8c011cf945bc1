"""The method protocol, and what the momentum-target methods share.

:class:`Method` is everything the trainer may ask of a method, with the defaults it relies
on: a method overrides what differs and the trainer never checks names or attributes.
``forward(views, labels)`` returns ``(loss, metrics, probe_features)``; ``after_step``
runs what follows the optimizer step (target EMA, queue). :class:`SiameseMethod` adds the
online/target encoder pair and the momentum rule.
"""
from __future__ import annotations

import abc
import copy
import math

import torch
import torch.nn as nn

from ..models.heads import build_heads
from ..models.norm import convert_bn
from ..models.resnet import ARCHS, build_encoder


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Losses run in at least fp32: half-precision activations from autocast are upcast,
    fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def loss_precision(device_type: str):
    """Autocast switched off, for a loss: the reference computes everything in fp32, and
    autocast would cast the loss's matmuls (``q @ queue.t()``) back to bf16/fp16 whatever
    their input dtype (measured: InfoNCE logits off by up to 0.004 under bf16). Inputs
    must be upcast (:func:`upcast`) inside it."""
    return torch.autocast(device_type=device_type, enabled=False)


def cosine_momentum(base: float, step: int, total: int) -> float:
    """m = 1 - (1 - base) * (cos(pi k / K) + 1) / 2: base at k=0, 1 at k=K."""
    if total <= 0:
        return base
    k = min(max(step, 0), total)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total) + 1.0) / 2.0


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """p_t = m p_t + (1 - m) p_o for the *parameters* the target shares with the online
    encoder (by name); buffers (BN running statistics) are left alone."""
    online_params = dict(online.named_parameters())
    tp, op = [], []
    for name, p_t in target.named_parameters():
        tp.append(p_t)
        op.append(online_params[name].detach())
    if hasattr(torch, "_foreach_lerp_"):
        # lerp(p_t, p_o, 1-m) == m p_t + (1-m) p_o
        torch._foreach_lerp_(tp, [o.to(t.dtype) for t, o in zip(tp, op)], 1.0 - m)
    else:  # pragma: no cover - old torch
        for t, o in zip(tp, op):
            t.mul_(m).add_(o, alpha=1.0 - m)


class TargetBNTrainMode:
    """The target encoder computes batch statistics in its BN layers (train mode) while its
    other layers are in eval mode; it never receives gradients."""

    @staticmethod
    def set(target: nn.Module) -> None:
        target.eval()
        for mod in target.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.train()


class Method(nn.Module, metaclass=abc.ABCMeta):
    """The trainer's view of a method. Subclasses set :attr:`name` (the config's
    ``method`` value, the registry key) and implement :meth:`build` and :meth:`forward`."""

    name: str = ""
    #: a momentum target encoder exists (compiled with the online one; ``momentum`` logged)
    uses_target = False
    #: the loss is a sum of this many terms the trainer may back-propagate one at a time
    loss_parts = 1
    #: momentum of the last target update (NaN without a target)
    current_momentum = float("nan")
    #: the method's own head predicts the data's classes: the trainer measures val accuracy
    #: with it (``eval_every``) and trains no separate online probe
    classifies = False
    #: key of the class head's weight in :meth:`layout_state_dict`, read to size the
    #: classifier when a checkpoint is resumed (None: the method has no class head)
    class_head_key: str | None = None

    @classmethod
    @abc.abstractmethod
    def build(cls, cfg, device, num_classes: int) -> "Method":
        """The method for ``cfg`` on ``device``; ``num_classes`` sizes a class head."""

    @abc.abstractmethod
    def forward(self, views, labels=None):
        """``(loss, metrics, probe_features)`` for a batch of views."""

    @classmethod
    def reference_warnings(cls, cfg, world_size: int, local_batch: int) -> list[str]:
        """Why the reference's published numbers cannot come out of ``cfg`` on this many
        processes with this per-process batch (logged at start); none by default."""
        return []

    def after_step(self, step: int, total_steps: int) -> None:
        """Work that follows optimizer step ``step``; nothing by default."""
        return None

    def extra_state(self) -> dict | None:
        """State outside the tensors that exact resume needs (RNG streams); none by default."""
        return None

    def restore_extra_state(self, state: dict | None) -> None:
        """Inverse of :meth:`extra_state`; nothing to restore by default."""
        return None

    def layout_state_dict(self) -> dict:
        """State dict in the reference layout (without the ``module.`` prefix)."""
        return self.state_dict()

    def load_layout_state_dict(self, sd: dict, strict: bool = True):
        return self.load_state_dict(sd, strict=strict)


class SiameseMethod(Method):
    """Online encoder (projector [+ predictor] as ``fc``) and a momentum target encoder
    (projector only), built the reference's way: the target starts as a copy."""

    uses_target = True
    #: Which view's pooled backbone features the online probe trains on: the reference
    #: feeds its probe the features of the *last* online forward, view 2 for the
    #: symmetric methods (MoCo v2+, S-MoCo v2+, BYOL) and view 1 for MoCo v1/v2, whose
    #: only online forward is view 1. ``forward`` returns the features of this view.
    probe_view = 2

    @classmethod
    def build(cls, cfg, device, num_classes: int) -> "SiameseMethod":
        return cls(cfg, device)

    def __init__(self, cfg, device: torch.device | str):
        super().__init__()
        head, n_proj = build_heads(cfg.head, _feat_dim(cfg.arch), cfg.hidden_dim, cfg.dim,
                                   predictor=cfg.predictor, last_bias=cfg.last_bias)
        online = build_encoder(cfg.arch, head)
        target = copy.deepcopy(online)
        if not cfg.target_predictor:
            target.fc = nn.Sequential(*list(target.fc.children())[:n_proj])
        self.online_encoder = convert_bn(online, cfg.online_bn, device)
        self.target_encoder = convert_bn(target, cfg.target_bn, device)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.momentum_base = cfg.momentum_base
        self.momentum_schedule = cfg.momentum_schedule
        self.current_momentum = cfg.momentum_base

    def train(self, mode: bool = True):
        super().train(mode)
        TargetBNTrainMode.set(self.target_encoder)
        return self

    def momentum_at(self, step: int, total: int) -> float:
        if self.momentum_schedule == "cosine":
            return cosine_momentum(self.momentum_base, step, total)
        return self.momentum_base

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the target after optimizer step ``step`` (0-based) of ``total_steps``.

        The cosine momentum is evaluated at k = step + 1, the number of steps done after
        this one, as the reference does: the first EMA already uses k = 1 and the last one
        m = 1. ``step`` is the global step, so a resumed run continues the same sequence."""
        m = self.momentum_at(step + 1, total_steps)
        self.current_momentum = m
        momentum_update(self.target_encoder, self.online_encoder, m)


def _feat_dim(arch: str) -> int:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return 512 * ARCHS[arch][0].expansion
