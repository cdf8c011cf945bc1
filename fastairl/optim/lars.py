"""LARS as the reference uses it.

Conv and linear weights (tensors with ndim > 1) get weight decay and the layer-wise trust
ratio ``eta * ||w|| / (||g|| + wd * ||w||)``; BN weights/biases and linear biases (ndim 1)
get neither (weight decay 0, plain momentum SGD). The update for an adapted tensor is

    d = trust * (g + wd * w);  buf = momentum * buf + d;  w -= lr * buf
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch.optim import Optimizer


def lars_param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float):
    """Split parameters into the adapted group (weights) and the excluded one (BN, biases)."""
    adapted, excluded = [], []
    for _, p in named_params:
        if not p.requires_grad:
            continue
        (excluded if p.ndim <= 1 else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        if lr < 0:
            raise ValueError(f"LARS: invalid lr {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, mom, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        eta * w_norm / (g_norm + wd * w_norm),
                                        torch.ones_like(w_norm))
                    g = (g + wd * p) * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(mom).add_(g)
                p.add_(buf, alpha=-lr)
        return loss
