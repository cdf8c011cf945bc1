"""BYOL: symmetric normalised-L2 loss between the online prediction and the target
projection of the other view, 2 - 2 cos(p, z), averaged over the batch, both directions
summed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SiameseMethod, loss_precision, upcast


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), batch mean, in (at least) fp32 with autocast off."""
    with loss_precision(p.device.type):
        p = F.normalize(upcast(p), dim=1)
        z = F.normalize(upcast(z), dim=1)
        return (2.0 - 2.0 * (p * z).sum(1)).mean()


class BYOL(SiameseMethod):
    name = "byol"
    #: the loss is a sum of two terms, each depending on one online view: the trainer runs
    #: forward+backward per term (same gradients, half the activation memory)
    loss_parts = 2

    def forward(self, views, labels=None, part: int | None = None):
        """``part=None``: the whole loss; ``part=0``: both target projections and the
        first term; ``part=1`` (after part 0's backward): the second term. The probe
        features returned are view 2's (:attr:`probe_view`), by part 1 when split."""
        x1, x2 = views[0], views[1]
        if part == 1:
            p2, feat2 = self.online_encoder(x2, return_features=True)
            loss2 = byol_loss(p2, self._z1)
            self._z1 = None
            return loss2, {}, feat2.detach()
        p1 = self.online_encoder(x1)
        with torch.no_grad():
            z1 = self.target_encoder(x1)
            z2 = self.target_encoder(x2)
        loss = byol_loss(p1, z2)
        if part is not None:
            self._z1 = z1
            return loss, {}, None
        p2, feat2 = self.online_encoder(x2, return_features=True)
        return loss + byol_loss(p2, z1), {}, feat2.detach()
