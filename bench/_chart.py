"""The PNG beside the report: images/s per training row, one panel per experiment, the
default-setting ceiling as a dashed line. matplotlib is optional: without it the chart
is skipped with the reason."""
from __future__ import annotations

from pathlib import Path

from bench._common import _one_line
from bench._stats import fmt_num


def plot(res: dict, path: Path) -> tuple[bool, str | None]:
    """Bar chart of images/s per training configuration, one panel per experiment, with the
    default-setting ceiling as a dashed line. Returns (written, reason if not)."""
    rows = [r for r in res["train"] if r["status"] == "ok"]
    if not rows:
        return False, "no training row was measured"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return False, f"matplotlib is not importable ({type(e).__name__}: {_one_line(e)})"
    exps = list(dict.fromkeys(r["exp"] for r in rows))
    heights = [max(2.0, 0.42 * sum(1 for r in rows if r["exp"] == e) + 1.2) for e in exps]
    fig, axes = plt.subplots(len(exps), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colours = {"ceiling": "#4c72b0", "end_to_end": "#55a868", "reference": "#c44e52"}
    head = res["settings"].get("headline", {"amp": "off", "channels_last": True})
    for ax, exp in zip(axes[:, 0], exps):
        rs = [r for r in rows if r["exp"] == exp]
        labels = [f"{r['kind'].replace('_', ' ')}: {r['loader']}, {r['config']}" for r in rs]
        vals = [r["images_per_s"]["median"] for r in rs]
        errs = [[v - r["images_per_s"]["min"] for v, r in zip(vals, rs)],
                [r["images_per_s"]["max"] - v for v, r in zip(vals, rs)]]
        y = list(range(len(rs)))[::-1]
        ax.barh(y, vals, xerr=errs, color=[colours[r["kind"]] for r in rs], capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        for yy, v, r in zip(y, vals, rs):
            ax.text(r["images_per_s"]["max"], yy, f"  {fmt_num(v)}", va="center", fontsize=7)
        ceilings = [r for r in rs if r["kind"] == "ceiling"]
        ceil = next((r for r in ceilings if r["amp"] == head["amp"] and r["channels_last"] == head["channels_last"]
                     and not r["compile"]), ceilings[0] if ceilings else None)
        if ceil is not None:
            cv = ceil["images_per_s"]["median"]
            ax.axvline(cv, color="k", linestyle="--", linewidth=1,
                       label=f"ceiling ({ceil['config']}): {fmt_num(cv)} images/s")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{exp}: {res['settings']['arch']}/{res['settings']['image_size']} px, batch "
                     f"{res['settings']['batch_size']} per process", fontsize=9)
        ax.set_xlabel("images/s (median, whiskers min-max)", fontsize=8)
        ax.margins(x=0.15)
    m = res["machine"]
    fig.suptitle(f"fastairl training throughput on {res['host']} ({m['gpu'] or 'CPU only'})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True, None
