"""Supervised baseline: one view, cross-entropy, ``fc`` = Sequential(Linear(feat, classes))
as in the reference layout (``module.fc.0.weight``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.norm import convert_bn
from ..models.resnet import build_encoder
from .base import Method, loss_precision, upcast


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the logits upcast to fp32, autocast off (the reference is fp32)."""
    with loss_precision(logits.device.type):
        return F.cross_entropy(upcast(logits), labels)


def topk_acc(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[float]:
    k = min(max(ks), logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return [float(hit[:, :min(kk, k)].any(1).float().mean() * 100.0) for kk in ks]


class Supervised(Method):
    name = "supervised"
    classifies = True
    class_head_key = "fc.0.weight"

    @classmethod
    def build(cls, cfg, device, num_classes: int) -> "Supervised":
        return cls(cfg, device, num_classes)

    def __init__(self, cfg, device, num_classes: int):
        super().__init__()
        enc = build_encoder(cfg.arch)
        enc.fc = nn.Sequential(nn.Linear(enc.feat_dim, num_classes))
        self.encoder = convert_bn(enc, cfg.online_bn, device)
        self.online_encoder = self.encoder  # what evaluation tools read

    def forward(self, views, labels):
        logits = self.encoder(views[0])
        loss = supervised_loss(logits, labels)
        acc1, acc5 = topk_acc(logits.detach(), labels)
        return loss, {"acc1": acc1, "acc5": acc5}, None

    def layout_state_dict(self) -> dict:
        return self.encoder.state_dict()

    def load_layout_state_dict(self, sd: dict, strict: bool = True):
        return self.encoder.load_state_dict(sd, strict=strict)
