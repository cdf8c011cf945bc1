"""The pre-training optimizer of a config: SGD, or LARS with the reference's parameter
groups (no weight decay or adaptation for biases and BN), over the online encoder only."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .lars import LARS, lars_param_groups

if TYPE_CHECKING:
    from ..config import Config


def build_optimizer(cfg: Config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    online = model.online_encoder
    if cfg.optimizer == "lars":
        groups = lars_param_groups(online.named_parameters(), cfg.weight_decay)
        return LARS(groups, lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
    params = [p for p in online.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)
