"""Window statistics of the bench and how the report writes them (pure functions, no
torch): kept apart from ``bench/throughput.py`` so that its helper modules can use them
without importing the script itself, which also runs as ``__main__``."""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def summarize(values: Sequence[float]) -> dict:
    """``{"median", "min", "max", "n", "values"}`` of the per-window measurements.

    The median, not the mean, because one window disturbed by another process on a shared
    machine should not move the headline number; min and max show how much it moved.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("summarize() needs at least one measurement")
    if any(not math.isfinite(v) for v in vals):
        raise ValueError(f"non-finite measurement in {vals}")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either side is missing or the denominator is not positive."""
    if num is None or den is None or den <= 0:
        return None
    return float(num) / float(den)


def _median(stats: dict | None) -> float | None:
    return None if not stats else stats.get("median")


def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_stats(st: dict | None) -> str:
    if not st:
        return "-"
    return f"{fmt_num(st['median'])} [{fmt_num(st['min'])}-{fmt_num(st['max'])}]"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


def fmt_pct(st: dict | None) -> str:
    return "-" if not st else f"{st['median'] * 100:.0f}%"
