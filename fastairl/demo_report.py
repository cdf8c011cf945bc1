"""What ``make demo`` shows: per-epoch curves from a run's ``log.jsonl``, ``result.json``, ``summary.png``.

Why a module: the demo's claim (pre-training beats a random backbone by a wide margin)
should be visible at a glance and checkable by a program, so the numbers it prints are
also written as JSON and drawn as one figure, and tests can read both. The per-epoch
kNN points come from the trainer's kNN monitor (``knn_every``), which logs records of
the form ``{"epoch": e, "knn_acc1": ..., "knn_acc5": ...}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

#: Train-record keys drawn per epoch, in panel order, with their axis titles.
CURVES = (("loss", "training loss"), ("inst_acc1", "instance accuracy (%)"),
          ("acc1", "train top-1 (%)"), ("probe_acc1", "online probe top-1 (%)"))


def read_log(path: Path) -> list[dict]:
    """The records of a ``log.jsonl`` (a torn last line, from a killed run, is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def per_epoch(records: list[dict]) -> list[dict]:
    """One row per epoch: the mean of each train curve over the steps logged in it, and the
    kNN monitor's top-1/top-5 where it ran at that epoch's end."""
    rows: dict[int, dict] = {}
    sums: dict[tuple[int, str], list[float]] = {}
    for r in records:
        if "knn_acc1" in r:
            e = int(r["epoch"])
            rows.setdefault(e, {"epoch": e}).update(knn_acc1=r["knn_acc1"], knn_acc5=r.get("knn_acc5"))
        elif "step" in r and "loss" in r:
            e = max(1, math.ceil(float(r["epoch"]) - 1e-9))
            rows.setdefault(e, {"epoch": e})
            for key, _ in CURVES:
                if isinstance(r.get(key), (int, float)):
                    sums.setdefault((e, key), []).append(float(r[key]))
    for (e, key), vals in sums.items():
        rows[e][key] = sum(vals) / len(vals)
    return [rows[e] for e in sorted(rows)]


def write_json_atomic(obj: dict, path: Path) -> Path:
    """``obj`` as indented JSON at ``path``, through the one atomic writer."""
    from .runtime.atomic_io import atomic_write_text
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def draw_summary(result: dict, path: Path) -> Path:
    """A PNG with one panel per logged curve and one for kNN top-1, the random-init kNN and
    chance drawn as horizontal lines. Needs matplotlib (a requirement of the venv)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["per_epoch"]
    curves = [(k, t) for k, t in CURVES if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(curves) + 1, figsize=(4.2 * (len(curves) + 1), 3.6))
    for ax, (key, title) in zip(axes, curves):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    pts = [(r["epoch"], r["knn_acc1"]) for r in rows if r.get("knn_acc1") is not None]
    if pts:
        ax.plot(*zip(*pts), marker="o", ms=4, label="pre-trained")
    ax.axhline(result["random_init"]["acc1"], color="tab:red", ls="--", label="random init")
    ax.axhline(result["chance"], color="grey", ls=":", label="chance")
    ax.set_title(f"kNN top-1 on val (%), k={result['knn_k']}")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"fastairl demo: {result['exp']}, seed {result['seed']}: pre-trained "
                 f"{result['pretrained']['acc1']:.2f} vs random init {result['random_init']['acc1']:.2f}")
    fig.tight_layout()
    from .runtime.atomic_io import atomic_write
    try:
        path = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


__all__ = ["read_log", "per_epoch", "write_json_atomic", "draw_summary"]
