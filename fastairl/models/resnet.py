"""ResNet encoders with the reference's parameter names.

The reference keeps the projector (and, on the online side, the predictor) inside the
encoder as ``fc`` (an ``nn.Sequential``), so a checkpoint reads ``online_encoder.conv1...``,
``online_encoder.fc.3.weight`` etc. :class:`Encoder` is torchvision's ResNet with that
``fc`` and a forward that can also return the pooled backbone feature (the online probe
and the evaluation tools use it without a second pass).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class Encoder(ResNet):
    """torchvision ResNet whose ``fc`` is the method's head (any module)."""

    def __init__(self, arch: str):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        super().__init__(block, layers)
        self.arch = arch
        self.feat_dim = 512 * block.expansion
        self.fc = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled output of the last stage: (B, feat_dim), always at least
        fp32. Under autocast the stages run in bf16/fp16, but the 49-value mean is taken
        in fp32 (pooling is not an autocast op, so it would otherwise average in bf16):
        the online probe, linear evaluation and kNN all read these features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        out = self.fc(f)
        return (out, f) if return_features else out


def build_encoder(arch: str, head: nn.Module | None = None) -> Encoder:
    enc = Encoder(arch)
    if head is not None:
        enc.fc = head
    return enc
