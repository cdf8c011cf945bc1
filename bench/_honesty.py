"""Keeping the bench honest: the ceiling measured around the rows it bounds, a loud note
when a row still beats it, and the machine's load and the run's wall time in the report.

Why it exists: the ceiling (``Trainer.train_step`` fed synthetic views already on the
device) is an upper bound of every end-to-end row of the same experiment, precision,
layout and compile setting: the same step with a loader that costs nothing. A report
in which an end-to-end row beats its ceiling is wrong about something. It happened
(``bench/results/vm-2026-11-27-2143.md``: a ceiling of 34.1 images/s, measured first,
under end-to-end rows of 35.6-40.0 measured a minute later), because on a small shared
CPU the machine drifts during a run. So:

* **The bounding ceiling brackets its rows.** The plan (``plan_train_rows``) puts that
  ceiling right before the first and again right after the last end-to-end row it bounds;
  :func:`measure_bracketed` splits its ``--repeats`` windows between the two brackets
  (more before) and merges them into one row, so the ceiling sees the same drift as the
  rows between. Both brackets are fresh Trainers built like every other row, with the same
  batch, image size, precision, layout and torch threads (recorded per row and compared).
* **A row above its ceiling is reported, never hidden.** :func:`check_ceilings` compares
  every end-to-end row's median with its ceiling's; one above it is named in the
  Markdown and the JSON (``ceiling_check``) as measured on a noisy machine, with by how
  much. The reference-style row is not bounded: it augments in its loader workers,
  outside the step the ceiling times.
* **The load average at start and end** (``os.getloadavg``) and the wall time of the whole
  command are in the report, so a reader can tell an idle run from a shared one.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

from bench._stats import summarize

_IMPORTED = time.monotonic()

#: Row fields that must agree between an end-to-end row and its ceiling (same step).
SAME_SETTINGS = ("batch_size_per_process", "torch_threads", "nproc")


# --------------------------------------------------------------------------------------
# Machine load and wall time
# --------------------------------------------------------------------------------------

def load_average() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 minutes) as a list, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def process_seconds() -> float:
    """Seconds since this process started (``/proc``: includes the imports of torch), or
    since this module was imported where ``/proc`` is not available."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return max(0.0, up - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def _fmt_load(la: Sequence[float] | None) -> str:
    return "not available" if la is None else ", ".join(f"{x:.2f}" for x in la)


def load_line(res: dict) -> str:
    """The report's header line with the load average at the start and end of the run."""
    la = res.get("load_average") or {}
    cores = res.get("machine", {}).get("cpu_count")
    on = f" on {cores} cores" if cores else ""
    return (f"Load average (1, 5, 15 min){on}: {_fmt_load(la.get('start'))} at start, "
            f"{_fmt_load(la.get('end'))} at end (an idle machine starts near 0: a higher start means other "
            f"work shared the cores, and the numbers are lower and noisier).")


def wall_line(res: dict) -> str:
    wall, measured = res.get("wall_seconds"), res.get("seconds")
    parts = [f"Wall time: {wall:.0f} s for the whole command" if wall is not None else "Wall time: not recorded"]
    if measured is not None:
        parts.append(f"{measured:.0f} s of it measuring")
    return ", ".join(parts) + "."


# --------------------------------------------------------------------------------------
# The bounding ceiling, measured in two brackets
# --------------------------------------------------------------------------------------

def split_repeats(repeats: int) -> tuple[int, int]:
    """Windows of the bounding ceiling before and after its end-to-end rows (more before:
    a single window is measured before them)."""
    before = (repeats + 1) // 2
    return before, repeats - before


def _key(p) -> tuple:
    return p.exp, p.amp, p.channels_last, p.compile


def measure_bracketed(plans: Sequence, settings, measure: Callable[[object, object, int], dict]) -> list[dict]:
    """Rows of ``plans`` in table order; ``measure(plan, settings, index)`` measures one.

    A plan with ``bracket == "before"`` is measured with the first share of the windows
    and stands in the table; its ``"after"`` twin (same key) is measured where it sits in
    the plan, with the rest, and merged into it (:func:`merge_bracket`).
    """
    before_n, after_n = split_repeats(settings.repeats)
    rows: list[dict] = []
    open_: dict[tuple, dict] = {}
    for i, p in enumerate(plans):
        bracket = getattr(p, "bracket", None)
        if bracket is None:
            rows.append(measure(p, settings, i))
        elif bracket == "before":
            row = measure(p, dataclasses.replace(settings, repeats=before_n), i)
            row["bracket"] = {"before": before_n, "after": 0}
            open_[_key(p)] = row
            rows.append(row)
        else:
            first = open_.pop(_key(p), None)
            if first is None or after_n == 0 or first["status"] != "ok":
                continue
            merge_bracket(first, measure(p, dataclasses.replace(settings, repeats=after_n), i), after_n)
    return rows


def merge_bracket(first: dict, second: dict, windows: int) -> None:
    """Fold the after-bracket ``second`` into the before-bracket row ``first``, in place."""
    if second["status"] != "ok":
        first.update(status=second["status"],
                     reason=f"its windows after the end-to-end rows: {second['reason']}")
        return
    for k in ("images_per_s", "step_ms", "data_wait_share"):
        first[k] = summarize(first[k]["values"] + second[k]["values"])
    mems = [m for m in (first.get("peak_device_mem_mb"), second.get("peak_device_mem_mb")) if m is not None]
    first["peak_device_mem_mb"] = max(mems) if mems else None
    first["bracket"]["after"] = windows
    if first.get("torch_threads") != second.get("torch_threads"):
        first["torch_threads"] = f"{first.get('torch_threads')} before, {second.get('torch_threads')} after"


# --------------------------------------------------------------------------------------
# The check and its report
# --------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x * 100:.1f} %" if abs(x) < 0.1 else f"{x * 100:.0f} %"


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else (f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}")


def _bounding_ceiling(r: dict, train: Sequence[dict]) -> dict | None:
    same = [c for c in train if c["kind"] == "ceiling" and c["status"] == "ok"
            and (c["exp"], c["amp"], c["channels_last"], c["compile"]) ==
            (r["exp"], r["amp"], r["channels_last"], r["compile"])]
    return next((c for c in same if c.get("bracket")), same[0] if same else None)


def check_ceilings(train: Sequence[dict]) -> dict:
    """Compare every measured end-to-end row with the ceiling that bounds it.

    Returns ``{"status", "rows", "message"}``: status ``ok`` (all at or below), ``noisy``
    (one or more above: the machine was noisy; ``message`` says which and by how much) or
    ``nothing to check``. Each end-to-end row also gets ``ceiling_excess`` (its median over
    the ceiling's, minus 1; above 0 means above the ceiling) in place.
    """
    out = []
    for r in train:
        if r["kind"] != "end_to_end" or r["status"] != "ok":
            continue
        c = _bounding_ceiling(r, train)
        r["ceiling_excess"] = None
        if c is None:
            out.append({"row": r["name"], "ceiling": None, "above": False, "excess": None, "mismatch": []})
            continue
        v, cv = r["images_per_s"]["median"], c["images_per_s"]["median"]
        excess = v / cv - 1.0 if cv > 0 else None
        r["ceiling_excess"] = excess
        mismatch = [f"{k} {r.get(k)} vs {c.get(k)}" for k in SAME_SETTINGS if r.get(k) != c.get(k)]
        out.append({"row": r["name"], "ceiling": c["name"], "images_per_s": v, "ceiling_images_per_s": cv,
                    "row_range": [r["images_per_s"]["min"], r["images_per_s"]["max"]],
                    "ceiling_range": [c["images_per_s"]["min"], c["images_per_s"]["max"]],
                    "bracket": c.get("bracket"), "excess": excess, "above": excess is not None and excess > 0,
                    "mismatch": mismatch})
    noisy = [e for e in out if e["above"]]
    status = "noisy" if noisy else ("ok" if out else "nothing to check")
    return {"status": status, "rows": out, "message": " ".join(_noisy_sentence(e) for e in noisy) or None}


def _noisy_sentence(e: dict) -> str:
    lo, hi = e["ceiling_range"]
    s = (f"{e['row']} is {_pct(e['excess'])} above its ceiling ({_fmt(e['images_per_s'])} vs "
         f"{_fmt(e['ceiling_images_per_s'])} images/s, ceiling windows {_fmt(lo)}-{_fmt(hi)}): "
         f"the machine was noisy.")
    if e["mismatch"]:
        s += f" Its ceiling also ran with other settings ({'; '.join(e['mismatch'])}): a bench bug, please report it."
    return s


def ceiling_cell(r: dict) -> str:
    """The "of ceiling" cell of the training table, flagged where a row is above it."""
    f = r.get("fraction_of_ceiling")
    if f is None:
        return "-"
    ex = r.get("ceiling_excess")
    return f"{f:.0%}" + (" (above: noisy)" if ex is not None and ex > 0 else "")


def check_lines(res: dict) -> list[str]:
    """The report's "Ceiling check" section (nothing when no end-to-end row was measured)."""
    chk = res.get("ceiling_check") or {}
    rows = chk.get("rows") or []
    if not rows:
        return []
    L = ["## Ceiling check", ""]
    br = next((e["bracket"] for e in rows if e.get("bracket")), None)
    where = (f" (measured in {br['before']} window(s) right before and {br['after']} right after them)"
             if br else "")
    if chk.get("status") == "noisy":
        n = sum(1 for e in rows if e["above"])
        L += [f"**The machine was noisy**: {n} end-to-end row(s) measured above the ceiling that bounds them"
              f"{where}. The ceiling is the same step, batch, threads, precision and layout with data that "
              f"costs nothing, so no row can truly beat it; read those rows as at their ceiling, and rerun "
              f"on an idle machine for exact numbers.", ""]
        L += [f"- {_noisy_sentence(e)}" for e in rows if e["above"]]
    else:
        L.append(f"Every end-to-end row is at or below the ceiling that bounds it{where}.")
    odd = [e for e in rows if e["mismatch"] and not e["above"]]
    if odd:
        L += ["", "Ran with other settings than their ceiling (a bench bug, please report it): "
              + "; ".join(f"{e['row']} ({', '.join(e['mismatch'])})" for e in odd) + "."]
    orphans = [e["row"] for e in rows if e["ceiling"] is None]
    if orphans:
        L += ["", f"No measured ceiling bounds: {', '.join(orphans)} (see the skipped rows)."]
    L += ["", "The reference-style row augments in its loader workers, outside the step the ceiling "
              "times, so no ceiling bounds it.", ""]
    return L
