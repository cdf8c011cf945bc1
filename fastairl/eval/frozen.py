"""The frozen-backbone check of linear evaluation: a "linear" number from a backbone that
moved would be a fine-tuning number in disguise, so every parameter and BN buffer is
hashed when loaded and compared bit for bit at each checkpoint and at the end."""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from fastairl.runtime import distributed as fdist


class BackboneChangedError(RuntimeError):
    """The frozen backbone differs from what was loaded: the evaluation is invalid."""


def tensor_fingerprint(module: nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer of ``module`` (its ``state_dict``), by name.

    Hashes the raw bytes together with dtype and shape, of a contiguous CPU copy, so the
    memory format (channels_last) and the device do not matter but any changed bit does.
    """
    out = {}
    for name, t in module.state_dict().items():
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def changed_tensors(reference: dict[str, str], module: nn.Module) -> list[str]:
    """Names whose bytes differ from ``reference`` (or that appeared / disappeared)."""
    now = tensor_fingerprint(module)
    names = sorted(set(reference) | set(now))
    return [n for n in names if reference.get(n) != now.get(n)]


def check_frozen(reference: dict[str, str], module: nn.Module) -> None:
    """Raise :class:`BackboneChangedError` naming the first changed tensor, if any changed.

    Collective under DDP: every rank checks its own copy and all ranks raise together,
    so no rank is left waiting in a collective.
    """
    bad = changed_tensors(reference, module)
    if fdist.world_size() > 1:
        import torch.distributed as dist
        per_rank: list = [None] * fdist.world_size()
        dist.all_gather_object(per_rank, bad)
        for r, b in enumerate(per_rank):
            if b:
                bad, rank = b, r
                break
        else:
            rank = None
    else:
        rank = 0 if bad else None
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        where = f" on rank {rank}" if fdist.world_size() > 1 else ""
        raise BackboneChangedError(f"the frozen backbone changed during linear evaluation: tensor "
                                   f"'{bad[0]}'{more} differs bit-for-bit from the loaded weights{where}; "
                                   f"the result is not a linear-evaluation result")
