"""BYOL: symmetric normalised-L2 loss between the online prediction and the target
projection of the other view, 2 - 2 cos(p, z), averaged over the batch, both directions
summed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SiameseMethod, upcast


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    p = F.normalize(upcast(p), dim=1)
    z = F.normalize(upcast(z), dim=1)
    return (2.0 - 2.0 * (p * z).sum(1)).mean()


class BYOL(SiameseMethod):
    def forward(self, views, labels=None):
        x1, x2 = views[0], views[1]
        p1, feat1 = self.online_encoder(x1, return_features=True)
        p2 = self.online_encoder(x2)
        with torch.no_grad():
            z1 = self.target_encoder(x1)
            z2 = self.target_encoder(x2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return loss, {}, feat1.detach()
