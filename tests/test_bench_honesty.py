"""bench/_honesty.py through bench/throughput.py: the ceiling that bounds the end-to-end rows
is planned right before and after them with their exact settings, a row above its ceiling
is reported as noise (Markdown and JSON), and the report carries the load average at start
and end and the wall time. Pure logic on constructed numbers: no timing, nothing measured."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import throughput as tp  # noqa: E402

CPU = torch.device("cpu")


def _settings(**kw) -> tp.Settings:
    base = dict(device="cpu", exps=["moco_v2p"], arch="resnet18", image_size=64, batch_size=16, warmup=2,
                batches=3, loader_batches=8, repeats=3, folder_workers=6, fast_workers=2,
                loaders=list(tp.BACKENDS), amps=list(tp.AMP_CHOICES), layouts=list(tp.LAYOUTS), compile=False,
                quick=True, nproc=1, only=None, data="/x", packed="/x/packed")
    base.update(kw)
    return tp.Settings(**base)


def _row(kind, ips, loader="synthetic (on device)", amp="off", cl=True, threads=2, batch=16, bracket=None):
    config = tp.config_label(amp, cl, False)
    st = tp.summarize(ips)
    return {"name": f"moco_v2p {kind} {loader} {config}", "exp": "moco_v2p", "kind": kind, "loader": loader,
            "amp": amp, "channels_last": cl, "compile": False, "config": config, "status": "ok", "reason": None,
            "nproc": 1, "batch_size_per_process": batch, "torch_threads": threads, "images_per_s": st,
            "step_ms": tp.summarize([batch / v * 1000 for v in ips]), "data_wait_share": tp.summarize([0.01]),
            "peak_device_mem_mb": None, "bracket": bracket}


def _result(train, load=None) -> dict:
    settings = {**tp.dataclasses.asdict(_settings()), "data_kind": "demo"}
    return {"schema": tp.SCHEMA, "created": "2026-12-03T11:00:00", "host": "vm", "command": "python bench/x",
            "machine": {"cpu_count": 2, "gpu": None, "gpu_count": 0, "python": "3.11", "torch": "2", "torchvision": "0"},
            "settings": settings, "loaders": [], "augment": [], "train": train, "scaling": [], "outputs": {},
            "seconds": 80.0, "wall_seconds": 91.0,
            "load_average": load if load is not None else {"start": [0.31, 0.2, 0.1], "end": [1.72, 0.9, 0.4]}}


# ----------------------------------------------------------------------------- the plan

@pytest.mark.parametrize("amps", [list(tp.AMP_CHOICES), ["bf16"]])
def test_quick_cpu_plans_the_bounding_ceiling_right_around_its_rows(amps):
    """--quick on a CPU: the ceiling with the end-to-end rows' exact step settings (precision,
    layout, compile) sits right before the first and right after the last of them, and is
    measured (not skipped), also where --quick leaves bf16 out of the ceiling matrix."""
    s = _settings(amps=amps)
    rows = tp.plan_train_rows(s, CPU)
    idx = [i for i, r in enumerate(rows) if r.kind == "end_to_end"]
    assert idx == list(range(idx[0], idx[-1] + 1)) and len(idx) == 3
    e2e = rows[idx[0]]
    before, after = rows[idx[0] - 1], rows[idx[-1] + 1]
    for c, where in ((before, "before"), (after, "after")):
        assert c.kind == "ceiling" and c.variant is None and c.bracket == where
        assert (c.exp, c.amp, c.channels_last, c.compile) == (e2e.exp, e2e.amp, e2e.channels_last, e2e.compile)
        assert c.skip_reason is None
    assert all((r.amp, r.channels_last, r.compile) == (e2e.amp, e2e.channels_last, e2e.compile)
               for r in rows if r.kind == "end_to_end")
    # the bounding ceiling is planned only in its two brackets, not a third time in the matrix
    same = [r for r in rows if r.kind == "ceiling" and (r.amp, r.channels_last) == (e2e.amp, e2e.channels_last)]
    assert [r.bracket for r in same] == ["before", "after"]


def test_bracketed_ceiling_splits_its_windows_and_merges_them():
    """The ceiling's --repeats windows are split before/after the end-to-end rows (same batch,
    same Settings otherwise) and folded into one table row at the "before" position."""
    from bench import _honesty as honesty
    s = _settings(loaders=["nvjpeg"])
    plans = tp.plan_train_rows(s, CPU)
    calls = []
    values = (40.0 + i for i in itertools.count())

    def measure(p, s_, i):
        calls.append((p.kind, p.bracket, s_.repeats, s_.batch_size))
        ips = [next(values) for _ in range(s_.repeats)]
        r = _row(p.kind, ips, loader=p.loader_name, amp=p.amp, cl=p.channels_last)
        return r if not p.skip_reason else dict(r, status="skipped", reason=p.skip_reason)

    rows = honesty.measure_bracketed(plans, s, measure)
    br = [c for c in calls if c[1]]
    assert [c[:3] for c in br] == [("ceiling", "before", 2), ("ceiling", "after", 1)]
    assert all(c[3] == s.batch_size for c in calls) and all(c[2] == 3 for c in calls if not c[1])
    assert len(rows) == len(plans) - 1  # the "after" twin is merged, not a row of its own
    ceil = next(r for r in rows if r.get("bracket"))
    assert ceil["bracket"] == {"before": 2, "after": 1}
    assert ceil["images_per_s"]["n"] == 3 and len(ceil["step_ms"]["values"]) == 3
    kinds = [r["kind"] for r in rows]
    assert kinds.index("end_to_end") == rows.index(ceil) + 1


# ----------------------------------------------------------------------------- the report

def test_a_row_above_its_ceiling_is_reported_as_noise():
    train = [_row("ceiling", [50.0, 49.0, 51.0], bracket={"before": 2, "after": 1}),
             _row("end_to_end", [52.0, 51.5, 53.0], loader="ffcv"),            # 4 % above
             _row("end_to_end", [45.0, 44.0, 46.0], loader="nvjpeg (packed)"),  # below
             _row("reference", [40.0, 41.0, 39.0], loader="folder", cl=False)]
    res = _result(train)
    tp.compute_ratios(res)
    chk = res["ceiling_check"]
    assert chk["status"] == "noisy"
    above = [e for e in chk["rows"] if e["above"]]
    assert [e["row"] for e in above] == [train[1]["name"]]
    assert above[0]["excess"] == pytest.approx(0.04)
    assert "4.0 % above its ceiling" in chk["message"] and "the machine was noisy" in chk["message"]
    assert train[1]["ceiling_excess"] == pytest.approx(0.04) and train[2]["ceiling_excess"] < 0
    md = tp.render_markdown(res)
    assert "## Ceiling check" in md and "**The machine was noisy**" in md
    assert f"{train[1]['name']} is 4.0 % above its ceiling (52.0 vs 50.0 images/s" in md
    assert "104% (above: noisy)" in md and "90% |" in md
    assert "2 window(s) right before and 1 right after them" in md
    tp.validate_result(res)


def test_rows_under_their_ceiling_say_so_and_a_mismatch_is_named():
    train = [_row("ceiling", [50.0, 49.0, 51.0], bracket={"before": 2, "after": 1}),
             _row("end_to_end", [45.0, 44.0, 46.0], loader="nvjpeg (packed)", threads=1)]
    res = _result(train)
    tp.compute_ratios(res)
    assert res["ceiling_check"]["status"] == "ok" and res["ceiling_check"]["message"] is None
    md = tp.render_markdown(res)
    assert "Every end-to-end row is at or below the ceiling that bounds it" in md
    assert "noisy" not in md
    assert "torch_threads 1 vs 2" in md  # not silently compared with a ceiling of other settings


def test_report_has_the_load_average_at_start_and_end_and_the_wall_time():
    res = _result([_row("ceiling", [50.0])])
    tp.compute_ratios(res)
    md = tp.render_markdown(res)
    line = next(ln for ln in md.splitlines() if ln.startswith("Load average"))
    assert "on 2 cores" in line and "0.31, 0.20, 0.10 at start" in line and "1.72, 0.90, 0.40 at end" in line
    assert md.rstrip().splitlines()[-1] == "Wall time: 91 s for the whole command, 80 s of it measuring."
    res["load_average"] = {"start": None, "end": None}
    assert "not available at start" in tp.render_markdown(res)


def test_load_average_and_process_time_come_from_the_os():
    from bench import _honesty as honesty
    la = honesty.load_average()
    assert la is None or (len(la) == 3 and all(x >= 0 for x in la))
    t = honesty.process_seconds()
    assert 0.0 < t < 24 * 3600
