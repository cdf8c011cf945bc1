"""The statistics table: how often each op was applied, next to the recipe's probability.

Why: a loader that silently drops an op, or applies it twice, still trains, only worse;
counting is the cheapest check that the recipe is what the loader does. Which ops are
counted, and what the recipe expects of each, comes from :data:`fastairl.preview.ops.OPS`.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from fastairl.preview.ops import OPS, reported


def compute_stats(data: Mapping) -> list[dict]:
    """Per view: share of views with each op applied next to the recipe's probability,
    crop scale summary, brightness and saturation mean/std.

    ``data`` is a dump (or :meth:`PreviewResult.as_dump`). An op's share is "ok" when it
    lies within 4 binomial standard deviations of the recipe's probability (exactly equal
    for probabilities 0 and 1), the band a correct sampler leaves in 1 of ~16,000 checks.
    Ops the loader drew without reporting them have ``share None``.
    """
    meta = data["meta"]
    out = []
    for v, (p, m, view) in enumerate(zip(data["params"], data["measures"], meta["recipe_views"])):
        n = int(p["jitter"].shape[0])
        ops = []
        for op in OPS:
            if op.stat is None:
                continue
            label, expected = op.stat
            prob = expected(view)
            share = float(p[op.name].float().mean()) if reported(op, meta, v) and n else None
            sd = math.sqrt(prob * (1 - prob) / n) if n else 0.0
            lo, hi = max(0.0, prob - 4 * sd), min(1.0, prob + 4 * sd)
            ops.append({"op": label, "share": share, "p": prob, "n": n, "band": (lo, hi),
                        "ok": None if share is None else (lo - 1e-12 <= share <= hi + 1e-12)})
        scale = p["scale"][~torch.isnan(p["scale"])]
        scale_row = None
        if scale.numel():
            scale_row = {"mean": float(scale.mean()), "min": float(scale.min()), "max": float(scale.max()),
                         "recipe": tuple(float(s) for s in view["crop_scale"])}
        out.append({"view": v + 1, "n": n, "ops": ops, "scale": scale_row,
                    "brightness": (float(m["brightness"].mean()), float(m["brightness"].std()) if n > 1 else 0.0),
                    "saturation": (float(m["saturation"].mean()), float(m["saturation"].std()) if n > 1 else 0.0)})
    return out


def format_stats(stats: list[dict], meta: Mapping) -> str:
    """The statistics as a fixed-width table (one row per op and view)."""
    n = stats[0]["n"] if stats else 0
    lines = [f"augmentation statistics: {n} pairs, recipe {meta['recipe']}, loader {meta['loader']}, "
             f"seed {meta['seed']}",
             f"{'op':<12}{'view':>5}{'applied':>10}{'recipe p':>10}   {'4-sigma band':<16}{'check':<8}"]
    for s in stats:
        for o in s["ops"]:
            if o["share"] is None:
                lines.append(f"{o['op']:<12}{s['view']:>5}{'-':>10}{o['p']:>10.3f}   "
                             f"{'':<16}{'n/a: drawn inside ' + str(meta['loader'])}")
                continue
            band = f"[{o['band'][0]:.3f}, {o['band'][1]:.3f}]"
            lines.append(f"{o['op']:<12}{s['view']:>5}{o['share']:>10.3f}{o['p']:>10.3f}   {band:<16}"
                         f"{'ok' if o['ok'] else 'OFF'}")
    lines.append(f"{'':<12}{'view':>5}{'mean':>10}{'std':>10}   note")
    for s in stats:
        sc = s["scale"]
        if sc is None:
            lines.append(f"{'crop scale':<12}{s['view']:>5}{'-':>10}{'-':>10}   drawn inside {meta['loader']}")
        else:
            lines.append(f"{'crop scale':<12}{s['view']:>5}{sc['mean']:>10.3f}{'':>10}   "
                         f"min {sc['min']:.3f} max {sc['max']:.3f}; recipe U({sc['recipe'][0]:g}, {sc['recipe'][1]:g})")
    for key in ("brightness", "saturation"):
        for s in stats:
            mean, std = s[key]
            note = "mean luma of the denormalised view" if key == "brightness" else "mean HSV saturation"
            lines.append(f"{key:<12}{s['view']:>5}{mean:>10.3f}{std:>10.3f}   {note}")
    return "\n".join(lines)
