"""LARS as the reference uses it.

Conv and linear weights (tensors with ndim > 1) get weight decay and the layer-wise trust
ratio ``eta * ||w|| / (||g|| + wd * ||w||)``; BN weights/biases and linear biases (ndim 1)
get neither (weight decay 0, plain momentum SGD). The update, as the reference's, keeps
the learning rate *inside* the momentum buffer:

    d = trust * (g + wd * w);  buf = momentum * buf + lr * d;  w -= buf

At a constant lr this equals ``buf = momentum * buf + d; w -= lr * buf``; the two differ
whenever the lr changes (warm-up, cosine tail), and the reference's is the one kept.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch.optim import Optimizer

log = logging.getLogger("fastairl")

#: Param-group keys only fastairl's LARS writes. A reference optimizer state lacks them;
#: :meth:`LARS.load_state_dict` rebuilds them from the parameters.
_FASTAIRL_KEYS = ("lars_exclude", "lr_in_buffer")


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
                                      lars_exclude=False, lr_in_buffer=True))

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an optimizer state, also one whose param groups lack fastairl's own keys
        (a reference checkpoint's): ``lars_exclude`` is rebuilt from the parameters (ndim
        <= 1: excluded; a group mixing both decides per tensor), missing hyper-parameters
        come from this optimizer's groups. A fastairl state from before the lr moved into
        the buffer (``lars_exclude`` but no ``lr_in_buffer``) has its buffers multiplied
        by the group's last lr, which continues its update exactly at that lr."""
        own = [dict((k, v) for k, v in g.items() if k != "params") for g in self.param_groups]
        saved = state_dict["param_groups"]
        old_rule = [("lars_exclude" in g and "lr_in_buffer" not in g) for g in saved]
        super().load_state_dict(state_dict)
        for i, group in enumerate(self.param_groups):
            for k, v in (own[i] if i < len(own) else self.defaults).items():
                if k not in _FASTAIRL_KEYS:
                    group.setdefault(k, v)
            if "lars_exclude" not in group:
                kinds = {p.ndim <= 1 for p in group["params"]}
                group["lars_exclude"] = kinds.pop() if len(kinds) == 1 else None
            if old_rule[i] if i < len(old_rule) else False:
                for p in group["params"]:
                    buf = self.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(group["lr"])
                log.warning("LARS: optimizer state from an older fastairl (lr outside the momentum buffer); "
                            "its buffers were rescaled by lr %g to the reference's rule", group["lr"])
            group["lr_in_buffer"] = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, mom, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
            group_exclude = group.get("lars_exclude")
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                exclude = (p.ndim <= 1) if group_exclude is None else group_exclude
                if not exclude:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        eta * w_norm / (g_norm + wd * w_norm),
                                        torch.ones_like(w_norm))
                    g = (g + wd * p) * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.mul(g, lr).detach()
                else:
                    buf.mul_(mom).add_(g, alpha=lr)
                p.sub_(buf)
        return loss
