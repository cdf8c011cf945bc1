"""Row bookkeeping of :class:`fastairl.data.augment.GPUAugment`: which rows get which op.

Why its own module: the parameters drawn per sample are turned once per view batch into
host-side row choices (:func:`flags`) and fused jitter-blend coefficients
(:func:`jitter_plan`), and :func:`_select` / :func:`_on_rows` run a kernel of
:mod:`fastairl.data.augment_ops` on exactly the chosen rows (slices where they are runs,
``index_select`` / ``index_copy_`` otherwise) without waiting for the device. Which op
plans and applies what is declared per op in :mod:`fastairl.data.ops`. Split out of
``augment.py`` (issue #15).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastairl.data.recipes import ViewRecipe

#: Jitter op indices inside ``params["order"]`` (torchvision ColorJitter's numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

#: At most this many runs of consecutive rows are processed as slices (views, no gather).
_MAX_RUNS = 2


def _select(flags: list[bool], start: int, stop: int, device: torch.device):
    """Rows ``start:stop`` whose flag is set, local to that range.

    ``None``: no rows; an empty tensor: every row; a list of ``(a, b)`` pairs: that many
    runs of consecutive rows (at most :data:`_MAX_RUNS`, the usual case for the CPU's
    small chunks: slices are views, no gather or scatter); else an index tensor on
    ``device``. The flags are host-side Python booleans, so choosing rows never waits for
    the device.
    """
    local = [i - start for i in range(start, stop) if flags[i]]
    if not local:
        return None
    if len(local) == stop - start:
        return torch.empty(0, dtype=torch.long)
    runs: list[tuple[int, int]] = []
    for i in local:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    if len(runs) <= _MAX_RUNS:
        return runs
    return torch.tensor(local, dtype=torch.long).to(device, non_blocking=True)


def _on_rows(x: torch.Tensor, rows, fn, *per_row: torch.Tensor) -> torch.Tensor:
    """Apply ``fn(x_rows, *per_row_rows)`` to the selected rows of ``x`` (see :func:`_select`).

    ``fn`` must not write into its input (it may get a view of ``x``)."""
    if rows is None:
        return x
    if isinstance(rows, list):
        for a, b in rows:
            x[a:b] = fn(x[a:b], *(p[a:b] for p in per_row))
        return x
    if rows.numel() == 0:
        return fn(x, *per_row)
    out = fn(x.index_select(0, rows), *(p.index_select(0, rows) for p in per_row))
    return x.index_copy_(0, rows, out.to(x.dtype))


def flags(params: dict[str, torch.Tensor], key: str, used: bool) -> list[bool]:
    """``params[key]`` as host-side booleans, or no rows when the op is not ``used``."""
    return [bool(f) for f in params[key].bool().tolist()] if used else []


def jitter_plan(params: dict[str, torch.Tensor], v: ViewRecipe, device: torch.device
                ) -> tuple[list[tuple[Optional[torch.Tensor], list[bool], list[bool], list[bool]]],
                           Optional[torch.Tensor]]:
    """The colour jitter of a view batch as four fused passes, for a recipe with jitter on.

    Returns, per position k of the drawn orders, (blend coefficients ``(3, B, 1, 1, 1)`` on
    ``device`` or None, blend flags, flags of the rows that need gray, hue flags), and the
    hue shifts on ``device`` (None when the recipe has no hue part).
    """
    positions: list[tuple[Optional[torch.Tensor], list[bool], list[bool], list[bool]]] = []
    hue_shift: Optional[torch.Tensor] = None
    strength = v.jitter
    on = params["jitter"].bool().cpu()
    order = params["order"].to("cpu", torch.long)
    factors = torch.stack([params["brightness"], params["contrast"], params["saturation"]], 1).cpu().float()
    if strength[3] > 0:
        hue_shift = params["hue"].to(device, torch.float32, non_blocking=True)
    for k in range(4):
        op = order[:, k]
        # Coefficients of the fused blend; a disabled part (strength 0) is an identity.
        is_b = on & (op == BRIGHTNESS) & (strength[0] > 0)
        is_c = on & (op == CONTRAST) & (strength[1] > 0)
        is_s = on & (op == SATURATION) & (strength[2] > 0)
        blend = is_b | is_c | is_s
        coef = None
        if bool(blend.any()):
            f = factors.gather(1, op.clamp(max=2).view(-1, 1)).squeeze(1)
            a = torch.where(blend, f, torch.ones_like(f))
            cg = torch.where(is_s, 1.0 - f, torch.zeros_like(f))
            cm = torch.where(is_c, 1.0 - f, torch.zeros_like(f))
            coef = torch.stack([a, cg, cm]).to(device, non_blocking=True).view(3, -1, 1, 1, 1)
        hue = (on & (op == HUE)) if strength[3] > 0 else torch.zeros_like(on)
        positions.append((coef, blend.tolist(), (is_c | is_s).tolist(), hue.tolist()))
    return positions, hue_shift
