"""Batch-norm kinds of the reference, usable on GPU (NCCL) and CPU (gloo).

* ``bn``: plain per-process BatchNorm.
* ``syncbn``: torch's :class:`torch.nn.SyncBatchNorm` (fast, CUDA only). torch refuses it on
  CPU tensors, so on CPU it is mapped to ``plainsync`` and the log says so once.
* ``plainsync``: the reference's all-gather ("plain") SyncBN. Statistics are the exact
  global-batch mean/variance, computed from per-rank sums reduced with a differentiable
  ``all_reduce``; this gives the same forward and gradients as one process holding the
  whole global batch, and runs with any backend, gloo included.

All kinds keep BatchNorm's state-dict keys (weight, bias, running_mean, running_var,
num_batches_tracked), so checkpoints do not depend on the kind.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)
BN_KINDS = ("bn", "syncbn", "plainsync")
_warned_cpu_syncbn = False


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks: every rank's loss depends
    on every rank's statistics, so each rank's share of the gradient is the sum of all."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class PlainSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics span every rank of the default process group."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"PlainSyncBatchNorm expects 2D-5D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in >= fp32
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device, dtype=xf.dtype)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def resolve_bn_kind(kind: str, device: torch.device | str) -> str:
    """The kind that will really run on ``device`` (syncbn -> plainsync on CPU, said once)."""
    global _warned_cpu_syncbn
    if kind not in BN_KINDS:
        raise ValueError(f"unknown BN kind {kind!r}; choose one of {BN_KINDS}")
    if kind == "syncbn" and torch.device(device).type != "cuda":
        if not _warned_cpu_syncbn:
            log.warning("syncbn: torch.nn.SyncBatchNorm only runs on CUDA; using the all-reduce "
                        "'plainsync' BatchNorm on %s (same statistics, works with gloo)", device)
            _warned_cpu_syncbn = True
        return "plainsync"
    return kind


def convert_bn(module: nn.Module, kind: str, device: torch.device | str) -> nn.Module:
    """Replace every BatchNorm of ``module`` by ``kind``, keeping parameters and buffers."""
    kind = resolve_bn_kind(kind, device)
    if kind == "bn":
        return module
    if kind == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_plainsync(module)


def _to_plainsync(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, PlainSyncBatchNorm):
        new = PlainSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_plainsync(child))
    return module
