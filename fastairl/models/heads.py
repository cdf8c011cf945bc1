"""Projector / predictor heads, laid out as the reference's ``fc`` Sequential.

Indices matter: checkpoints name ``fc.0``, ``fc.1`` (BN), ``fc.3`` ... so each head is
one flat ``nn.Sequential`` and the predictor is appended to the online projector.
"""
from __future__ import annotations

import torch.nn as nn

HEADS = ("linear", "mlp", "mlp_bn")


def projector(kind: str, in_dim: int, hidden: int, out: int, last_bias: bool = True) -> list[nn.Module]:
    """Layers of a projector: ``linear`` (v1), ``mlp`` (Linear-ReLU-Linear, v2),
    ``mlp_bn`` (Linear-BN-ReLU-Linear, v2+/BYOL)."""
    if kind == "linear":
        return [nn.Linear(in_dim, out, bias=last_bias)]
    if kind == "mlp":
        return [nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out, bias=last_bias)]
    if kind == "mlp_bn":
        return [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                nn.Linear(hidden, out, bias=last_bias)]
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


def build_heads(kind: str, in_dim: int, hidden: int, out: int, predictor: bool,
                last_bias: bool = True) -> tuple[nn.Sequential, int]:
    """Online head (projector [+ predictor]) and the number of projector layers, which is
    where the target encoder's copy of the head is cut."""
    proj = projector(kind, in_dim, hidden, out, last_bias)
    layers = list(proj)
    if predictor:
        layers += projector("mlp_bn", out, hidden, out, last_bias)
    return nn.Sequential(*layers), len(proj)
