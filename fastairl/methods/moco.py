"""MoCo v1/v2 (one direction, ShuffleBN) and MoCo v2+/S-MoCo v2+ (symmetric, predictor).

Loss: InfoNCE with the positive at index 0, features L2-normalised, logits / T, negatives
from a queue of keys of shape (K, dim) (the reference layout's ``queue``). After each step
the keys (gathered from all ranks, normalised) are written at ``queue_ptr``, wrapping.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import distributed as fdist
from .base import SiameseMethod, loss_precision, upcast


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float):
    """Cross-entropy of the positive (q.k) against the queue negatives (q.queue).

    ``q``, ``k``: (B, D) normalised; ``queue``: (K, D) normalised. Returns (loss, logits).
    Computed in (at least) fp32 with autocast off, as the fp32 reference."""
    with loss_precision(q.device.type):
        q, k, queue = upcast(q), upcast(k), upcast(queue)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ queue.t()
        logits = torch.cat([l_pos, l_neg], 1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels), logits


def topk_positive_acc(logits: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Share of rows whose positive (column 0) is within the top-k logits, in %."""
    rank = (logits > logits[:, :1]).sum(1)  # number of logits strictly above the positive
    return [float((rank < k).float().mean() * 100.0) for k in ks]


@torch.no_grad()
def shuffle_batch(x: torch.Tensor, generator: torch.Generator | None = None):
    """ShuffleBN: gather the key batch from all ranks, shuffle it with a permutation
    shared by every rank (drawn on rank 0 and broadcast), keep this rank's slice.
    Returns (this rank's shuffled slice, the permutation)."""
    x_all = fdist.gather_cat(x)
    n = x_all.shape[0]
    perm = torch.randperm(n, generator=generator, device="cpu").to(x.device)
    fdist.broadcast_(perm, 0)
    w, r = fdist.world_size(), fdist.rank()
    idx = perm.view(w, -1)[r]
    return x_all[idx], perm


@torch.no_grad()
def unshuffle_batch(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`shuffle_batch` for the encoded slice ``y``."""
    y_all = fdist.gather_cat(y)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    w, r = fdist.world_size(), fdist.rank()
    idx = inv.view(w, -1)[r]
    return y_all[idx]


class MoCo(SiameseMethod):
    """MoCo with a queue. ``symmetric=False``: v1/v2 (q from view 1, k from view 2,
    ShuffleBN when ``shuffle_bn``); ``symmetric=True``: v2+ (both directions, keys of one
    randomly chosen view enqueued)."""

    name = "moco"

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.temperature = cfg.temperature
        self.symmetric = cfg.symmetric
        self.probe_view = 2 if cfg.symmetric else 1  # the last online forward's view
        self.shuffle_bn = cfg.shuffle_bn
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None
        self._k1: torch.Tensor | None = None
        # identical on every rank: decides which view's keys are enqueued (v2+)
        self._view_gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self._shuffle_gen = torch.Generator().manual_seed(cfg.seed + 104729)

    @classmethod
    def reference_warnings(cls, cfg, world_size: int, local_batch: int) -> list[str]:
        out = []
        if cfg.shuffle_bn and world_size == 1:
            out.append("ShuffleBN with one process is a no-op: the key encoder's BN batch is the whole batch "
                       "either way (the reference shuffles across GPUs)")
        if cfg.shuffle_bn and local_batch != 32:
            out.append(f"{cfg.name or 'this experiment'}: {local_batch} images per process; the reference's "
                       f"published MoCo v1/v2 numbers used 32 per process (8 GPUs x 32), and ShuffleBN's "
                       f"statistics depend on it")
        return out

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle_bn:
            xs, perm = shuffle_batch(x, self._shuffle_gen)
            k = self.target_encoder(xs)
            k = unshuffle_batch(k, perm)
        else:
            k = self.target_encoder(x)
        return F.normalize(upcast(k), dim=1)

    @property
    def loss_parts(self) -> int:
        """The symmetric loss is a sum of two terms, each depending on one online view only,
        so the trainer may run forward+backward per term: same gradients, half the
        activation memory (see :meth:`forward`)."""
        return 2 if self.symmetric else 1

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None, part: int | None = None):
        """``part=None``: the whole loss. ``part=0``: encodes the keys of both views and
        returns the first term (online view 1 vs target view 2); ``part=1`` (after part 0's
        backward): the second term (online view 2 vs target view 1). The queue is read, not
        copied: it only changes in :meth:`after_step`, after every backward. The probe
        features are those of :attr:`probe_view` (view 2 when symmetric, returned by
        part 1 when split; view 1 otherwise)."""
        x1, x2 = views[0], views[1]
        queue = self.queue.detach()
        if part == 1:
            q2, feat2 = self.online_encoder(x2, return_features=True)
            loss2, _ = info_nce(F.normalize(upcast(q2), dim=1), self._k1, queue, self.temperature)
            self._k1 = None
            return loss2, {}, feat2.detach()
        q1, feat1 = self.online_encoder(x1, return_features=True)
        q1 = F.normalize(upcast(q1), dim=1)
        if not self.symmetric:
            k2 = self._keys(x2)
            loss, logits = info_nce(q1, k2, queue, self.temperature)
            self._pending_keys = k2
        else:
            k1, k2 = self._keys(x1), self._keys(x2)
            loss, logits = info_nce(q1, k2, queue, self.temperature)
            pick = int(torch.randint(2, (1,), generator=self._view_gen))
            self._pending_keys = (k1, k2)[pick]
            if part is None:
                q2, feat2 = self.online_encoder(x2, return_features=True)
                loss = loss + info_nce(F.normalize(upcast(q2), dim=1), k1, queue, self.temperature)[0]
            else:
                self._k1 = k1
        acc1, acc5 = topk_positive_acc(logits.detach())
        metrics = {"inst_acc1": acc1, "inst_acc5": acc5}
        if self.probe_view == 1:
            return loss, metrics, feat1.detach()
        return loss, metrics, (feat2.detach() if part is None else None)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = fdist.gather_cat(keys.contiguous())
        n, kq = keys.shape[0], self.queue.shape[0]
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=keys.device)) % kq
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % kq

    def extra_state(self) -> dict:
        """RNG states that decide view choice and shuffles (for exact resume)."""
        return {"view_gen": self._view_gen.get_state(), "shuffle_gen": self._shuffle_gen.get_state()}

    def restore_extra_state(self, state: dict | None) -> None:
        if state:
            self._view_gen.set_state(state["view_gen"])
            self._shuffle_gen.set_state(state["shuffle_gen"])

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None

