"""bench/throughput.py: its statistics and ratios, the report it writes (Markdown, JSON, PNG),
scaling under torchrun, and how it names the rows it cannot run. CPU only, tiny real runs,
no timing assertions (the numbers themselves are whatever this machine gives)."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import throughput as tp  # noqa: E402

from conftest import hidden_packages_env, run_cli  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: A run small enough for CI: 32 px crops, batches of 8, one or two batches per window,
#: a small queue and projector (the step is still the experiment's real step).
TINY = ["--device", "cpu", "--quick", "--image-size", "32", "--batch-size", "8", "--warmup", "1", "--batches", "1",
        "--loader-batches", "2", "--repeats", "2", "--workers", "1", "--set", "queue_size=256",
        "--set", "hidden_dim=64", "--amp", "off,fp16", "--layouts", "channels_last"]


# ----------------------------------------------------------------------------- pure logic

def test_summarize_median_min_max():
    st = tp.summarize([3.0, 1.0, 2.0])
    assert (st["median"], st["min"], st["max"], st["n"]) == (2.0, 1.0, 3.0, 3)
    assert st["values"] == [3.0, 1.0, 2.0]  # kept in window order
    assert tp.summarize([4, 1, 3, 2])["median"] == 2.5  # even count: mean of the middle two
    with pytest.raises(ValueError):
        tp.summarize([])
    with pytest.raises(ValueError):
        tp.summarize([1.0, float("nan")])


def _stats(*vals):
    return tp.summarize(vals)


def _train_row(exp, kind, ips, amp="off", cl=True, compile_=False, status="ok"):
    return {"name": f"{exp}-{kind}-{amp}-{cl}", "exp": exp, "kind": kind, "amp": amp, "channels_last": cl,
            "compile": compile_, "status": status, "reason": None if status == "ok" else "why",
            "images_per_s": _stats(*ips) if status == "ok" else None}


def test_ratios_to_reference_and_ceiling():
    res = {
        "loaders": [
            {"name": "folder", "backend": "folder", "status": "ok", "full_path": _stats(100.0, 90.0, 110.0)},
            {"name": "ffcv", "backend": "ffcv", "status": "ok", "full_path": _stats(300.0, 250.0, 350.0)},
            {"name": "dali", "backend": "dali", "status": "skipped", "reason": "x", "full_path": None},
        ],
        "train": [
            _train_row("a", "ceiling", [40.0, 50.0, 60.0], amp="bf16"),
            _train_row("a", "ceiling", [20.0], amp="off", cl=False),
            _train_row("a", "end_to_end", [30.0, 45.0], amp="bf16"),
            _train_row("a", "end_to_end", [10.0], amp="fp16"),          # no fp16 ceiling: no fraction
            _train_row("a", "reference", [5.0, 4.0, 6.0], amp="off", cl=False),
            _train_row("b", "ceiling", [8.0], amp="bf16"),             # other experiment, no reference
            _train_row("a", "ceiling", [], amp="fp16", status="skipped"),
        ],
    }
    tp.compute_ratios(res)
    ld = {r["name"]: r for r in res["loaders"]}
    assert ld["folder"]["ratio_to_reference"] == pytest.approx(1.0)
    assert ld["ffcv"]["ratio_to_reference"] == pytest.approx(300.0 / 100.0)
    assert ld["dali"]["ratio_to_reference"] is None
    t = res["train"]
    assert t[0]["ratio_to_reference"] == pytest.approx(50.0 / 5.0)
    assert t[1]["ratio_to_reference"] == pytest.approx(20.0 / 5.0)
    assert t[2]["ratio_to_reference"] == pytest.approx(37.5 / 5.0)
    assert t[2]["fraction_of_ceiling"] == pytest.approx(37.5 / 50.0)   # the bf16 channels_last ceiling
    assert t[3]["fraction_of_ceiling"] is None
    assert t[4]["ratio_to_reference"] == pytest.approx(1.0)
    assert t[4]["fraction_of_ceiling"] == pytest.approx(5.0 / 20.0)    # the fp32 NCHW ceiling
    assert t[0]["fraction_of_ceiling"] is None                         # ceilings are not fractions of themselves
    assert t[5]["ratio_to_reference"] is None
    assert t[6]["ratio_to_reference"] is None and t[6]["fraction_of_ceiling"] is None


def test_validate_result_rejects_bad_rows():
    good = {"schema": tp.SCHEMA, "created": "x", "host": "h", "command": "c", "machine": {}, "settings": {},
            "loaders": [], "augment": [], "train": [], "scaling": [], "outputs": {}}
    tp.validate_result(good)
    no_reason = dict(good, train=[{"name": "r", "status": "skipped", "reason": ""}])
    with pytest.raises(ValueError, match="without a reason"):
        tp.validate_result(no_reason)
    bad_stats = dict(good, train=[{"name": "r", "status": "ok", "reason": None,
                                   "images_per_s": {"median": 5.0, "min": 6.0, "max": 7.0, "n": 1, "values": [5.0]},
                                   "step_ms": _stats(1.0), "data_wait_share": _stats(0.0)}])
    with pytest.raises(ValueError, match="inconsistent"):
        tp.validate_result(bad_stats)
    with pytest.raises(ValueError, match="schema"):
        tp.validate_result(dict(good, schema="other/0"))


def test_rss_counts_only_new_worker_processes():
    before = set(tp.child_pids(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        for _ in range(200):  # until the child has touched its 64 MB
            kb = tp._status_kb(child.pid, "VmHWM")
            if kb is not None and kb > 60 << 10:
                break
            time.sleep(0.05)
        assert child.pid in tp.child_pids(os.getpid())
        rss = tp.loader_rss(True, before)
        assert rss["worker_processes"] == 1
        assert rss["workers_mb"] > 60
        assert rss["total_mb"] == pytest.approx(rss["main_mb"] + rss["workers_mb"])
        assert tp.loader_rss(True, before | {child.pid})["worker_processes"] == 0
    finally:
        child.kill()
        child.wait()


def _settings(**kw) -> tp.Settings:
    base = dict(device="cpu", exps=["moco_v2p", "byol"], arch="resnet18", image_size=32, batch_size=8, warmup=1,
                batches=1, loader_batches=1, repeats=1, folder_workers=6, fast_workers=2,
                loaders=list(tp.BACKENDS), amps=list(tp.AMP_CHOICES), layouts=list(tp.LAYOUTS), compile=False,
                quick=False, nproc=1, only=None, data="/x", packed="/x/packed")
    base.update(kw)
    return tp.Settings(**base)


def test_plan_always_has_the_reference_row_and_names_cpu_skips():
    cpu = tp.torch.device("cpu")
    rows = tp.plan_train_rows(_settings(amps=["bf16"], layouts=["channels_last"], compile=True), cpu)
    for exp in ("moco_v2p", "byol"):
        ref = [r for r in rows if r.exp == exp and r.kind == "reference"]
        assert len(ref) == 1 and (ref[0].amp, ref[0].channels_last, ref[0].compile) == ("off", False, False)
        assert ref[0].variant.backend == "folder"
    e2e = [r for r in rows if r.kind == "end_to_end" and r.exp == "moco_v2p"]
    assert [r.variant.name for r in e2e] == [v.name for v in tp.loader_variants(tp.BACKENDS)]
    assert all((r.amp, r.channels_last) == ("bf16", True) for r in e2e)  # the only precision asked for
    ceil = [r for r in rows if r.kind == "ceiling" and r.exp == "moco_v2p"]
    assert {(r.amp, r.channels_last, r.compile) for r in ceil} == {("bf16", True, False), ("bf16", True, True)}
    compiled = [r for r in ceil if r.compile]
    assert compiled and all(r.skip_reason and "CUDA" in r.skip_reason for r in compiled)
    full = tp.plan_train_rows(_settings(), cpu)
    first = {(r.amp, r.channels_last) for r in full if r.kind == "ceiling" and r.exp == "moco_v2p"}
    assert first == {(a, cl) for a in tp.AMP_CHOICES for cl in (True, False)}  # the whole matrix
    fp16 = [r for r in full if r.amp == "fp16"]
    assert fp16 and all("CUDA" in r.skip_reason for r in fp16)
    quick = tp.plan_train_rows(_settings(quick=True), cpu)
    q_e2e = [r.variant.name for r in quick if r.kind == "end_to_end" and r.exp == "moco_v2p"]
    assert q_e2e == ["ffcv", "dali (packed)", "nvjpeg (packed)"]  # one per backend, folder only as reference


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, demo_root):
    """One tiny end-to-end run: folder + nvjpeg loaders, training rows, and 2-process scaling."""
    out = tmp_path_factory.mktemp("bench")
    args = ["bench/throughput.py", "--data", "demo", *TINY, "--loaders", "folder,nvjpeg", "--max-pack", "0",
            "--nproc", "2", "--out", str(out), "--name", "tiny"]
    proc = run_cli(args, timeout=600)
    return proc, out


def test_tiny_run_writes_report_json_and_png(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, js, png = (out / "tiny.md"), (out / "tiny.json"), (out / "tiny.png")
    res = json.loads(js.read_text())
    tp.validate_result(res)
    assert res["schema"] == tp.SCHEMA
    # the Markdown report is printed and written
    assert md.read_text().strip() == proc.stdout.strip()
    assert "## Training step" in proc.stdout and "**reference-style**" in proc.stdout
    assert "## Loaders" in proc.stdout and "## Scaling: 2 processes" in proc.stdout
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    assert res["outputs"]["png_status"] == "ok"
    # progress was shown while it ran
    assert "window 1/2" in proc.stderr


def test_tiny_run_statistics_and_ratios(tiny_run):
    proc, out = tiny_run
    res = json.loads((out / "tiny.json").read_text())
    ok_train = [r for r in res["train"] if r["status"] == "ok"]
    kinds = {r["kind"] for r in ok_train}
    assert {"ceiling", "end_to_end", "reference"} <= kinds
    ref = next(r for r in ok_train if r["kind"] == "reference")
    assert (ref["loader"], ref["amp"], ref["channels_last"], ref["compile"]) == ("folder", "off", False, False)
    ref_ips = statistics.median(ref["images_per_s"]["values"])
    for r in ok_train:
        vals = r["images_per_s"]["values"]
        assert len(vals) == 2 and all(v > 0 and math.isfinite(v) for v in vals)
        assert r["images_per_s"]["median"] == pytest.approx(statistics.median(vals))
        assert r["images_per_s"]["min"] == min(vals) and r["images_per_s"]["max"] == max(vals)
        assert r["ratio_to_reference"] == pytest.approx(statistics.median(vals) / ref_ips)
        assert 0.0 <= r["data_wait_share"]["median"] <= 1.0
        # step time and images/s describe the same windows
        for ips, ms in zip(vals, r["step_ms"]["values"]):
            assert ips * ms / 1000.0 == pytest.approx(8, rel=1e-6)
    e2e = next(r for r in ok_train if r["kind"] == "end_to_end")
    ceil = next(r for r in ok_train if r["kind"] == "ceiling" and r["amp"] == e2e["amp"]
                and r["channels_last"] == e2e["channels_last"])
    assert e2e["fraction_of_ceiling"] == pytest.approx(e2e["images_per_s"]["median"] / ceil["images_per_s"]["median"])
    ld = {r["name"]: r for r in res["loaders"]}
    assert ld["folder"]["status"] == "ok" and ld["nvjpeg (folder)"]["status"] == "ok"
    assert ld["folder"]["full_path_same"] is True  # the reference path augments in its workers
    assert ld["nvjpeg (folder)"]["full_path"] != ld["nvjpeg (folder)"]["loader_only"]
    assert ld["nvjpeg (folder)"]["ratio_to_reference"] == pytest.approx(
        ld["nvjpeg (folder)"]["full_path"]["median"] / ld["folder"]["full_path"]["median"])
    assert ld["folder"]["peak_rss"]["worker_processes"] == 1  # --workers 1
    assert res["augment"] and res["augment"][0]["status"] == "ok"
    # scaling: per-process = total / 2, efficiency against the one-process row
    sc = [r for r in res["scaling"] if r["status"] == "ok"]
    assert sc
    for r in sc:
        assert r["per_process_images_per_s"]["median"] == pytest.approx(r["total_images_per_s"]["median"] / 2)
        assert r["efficiency"] == pytest.approx(r["per_process_images_per_s"]["median"]
                                                / r["single_process_images_per_s"]["median"])


def test_tiny_run_brackets_its_ceiling_and_reports_load_and_noise(tiny_run):
    """The bounding ceiling ran right before and after the end-to-end row with its settings
    (threads included); the report carries the ceiling check, the load averages and the
    wall time, in the Markdown and the JSON."""
    proc, out = tiny_run
    res = json.loads((out / "tiny.json").read_text())
    e2e = next(r for r in res["train"] if r["kind"] == "end_to_end" and r["status"] == "ok")
    ceil = [r for r in res["train"] if r["kind"] == "ceiling" and r["status"] == "ok"
            and (r["amp"], r["channels_last"], r["compile"]) == (e2e["amp"], e2e["channels_last"], e2e["compile"])]
    assert len(ceil) == 1 and ceil[0]["bracket"] == {"before": 1, "after": 1}
    assert ceil[0]["torch_threads"] == e2e["torch_threads"] >= 1
    assert ceil[0]["batch_size_per_process"] == e2e["batch_size_per_process"]
    chk = res["ceiling_check"]
    assert chk["status"] in ("ok", "noisy") and [e["row"] for e in chk["rows"]] == [e2e["name"]]
    assert not chk["rows"][0]["mismatch"]
    assert "## Ceiling check" in proc.stdout
    if chk["status"] == "noisy":
        assert "the machine was noisy" in proc.stdout and chk["message"] in proc.stdout
    la = res["load_average"]
    assert len(la["start"]) == 3 and len(la["end"]) == 3
    assert f"{la['start'][0]:.2f}" in next(ln for ln in proc.stdout.splitlines() if ln.startswith("Load average"))
    assert res["wall_seconds"] >= res["seconds"] > 0
    assert proc.stdout.rstrip().splitlines()[-1].startswith("Wall time: ")


def test_tiny_run_names_every_skipped_row(tiny_run):
    proc, out = tiny_run
    res = json.loads((out / "tiny.json").read_text())
    rows = res["loaders"] + res["train"] + res["scaling"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert all(r["reason"] for r in skipped)
    fp16 = [r for r in res["train"] if r["amp"] == "fp16"]
    assert fp16 and all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in fp16)
    packed = [r for r in rows if r.get("source") == "packed"]
    assert packed and all(r["status"] == "skipped" and "--max-pack" in r["reason"] for r in packed)
    for r in skipped:  # and the report lists each with its reason
        assert r["reason"] in proc.stdout


def test_missing_ffcv_and_matplotlib_are_skipped_with_reasons(tmp_path, demo_root):
    """An environment where `import ffcv` and `import matplotlib` fail (real package
    directories that raise, put first on PYTHONPATH): the ffcv rows and the chart are named
    skipped with the reason, everything else still runs."""
    env = hidden_packages_env(tmp_path, ["ffcv", "matplotlib"], "tests/test_bench.py")
    out = tmp_path / "out"
    proc = run_cli(["bench/throughput.py", "--data", "demo", *TINY, "--amp", "off", "--loaders", "ffcv",
                    "--out", str(out), "--name", "noffcv"], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "noffcv.json").read_text())
    tp.validate_result(res)
    for row in [r for r in res["loaders"] + res["train"] if r.get("backend") == "ffcv"]:
        assert row["status"] == "skipped"
        assert "ffcv" in row["reason"] and "ImportError" in row["reason"]
        assert "hidden by tests/test_bench.py" in row["reason"]
        assert row["reason"] in proc.stdout
    ok = [r for r in res["train"] if r["status"] == "ok"]
    assert {r["kind"] for r in ok} == {"ceiling", "reference"}  # ran without ffcv and matplotlib
    assert res["outputs"]["png_status"] == "skipped"
    assert "matplotlib" in res["outputs"]["png_reason"] and "ImportError" in res["outputs"]["png_reason"]
    assert not (out / "noffcv.png").exists()
    assert "Chart: skipped" in proc.stdout and (out / "noffcv.md").is_file()


@pytest.mark.parametrize("extra, needle", [
    (["--device", "cuda"], "--device cuda"),
    (["--data", "/nonexistent/imagenet"], "/nonexistent/imagenet"),
    (["--loaders", "folder,turbo"], "--loaders folder,turbo"),
    (["--exp", "moco_v9"], "moco_v9"),
    (["--batches", "0"], "--batches 0"),
    (["--amp", "fp8"], "--amp fp8"),
])
def test_bad_input_gives_one_line_error(extra, needle, tmp_path):
    proc = run_cli(["bench/throughput.py", "--device", "cpu", "--out", str(tmp_path), *extra], timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("fastairl: error:") and needle in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_existing_report_is_not_overwritten(tmp_path):
    (tmp_path / "mine.md").write_text("keep me\n")
    proc = run_cli(["bench/throughput.py", "--data", "demo", *TINY, "--out", str(tmp_path), "--name", "mine"],
                   timeout=120)
    assert proc.returncode == 2
    assert "mine.md already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert (tmp_path / "mine.md").read_text() == "keep me\n"
    assert not (tmp_path / "mine.json").exists()


def test_photo_set_on_a_machine_without_photographs(tmp_path):
    """--photos where scikit-image and matplotlib are unimportable: with exported source
    photographs (FASTAIRL_PHOTO_SOURCES) the photo set is cut as usual; without them there is
    no stand-in (the demo data is cut from the same photographs): one line, exit 2, nothing
    written."""
    from fastairl.data.photos import export_source_photos
    export_source_photos(tmp_path / "src")
    env = hidden_packages_env(tmp_path, ["skimage", "matplotlib"], "tests/test_bench.py")
    base = ["bench/throughput.py", "--photos", "16", *TINY, "--only", "loaders", "--loaders", "folder"]

    proc = run_cli(base + ["--out", str(tmp_path / "a"), "--name", "r"], timeout=300,
                   env={**env, "FASTAIRL_PHOTO_SOURCES": str(tmp_path / "src"), "FASTAIRL_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("Data: "))
    assert "photos-v1-n16" in data_line and "(photos)" in data_line

    proc = run_cli(base + ["--out", str(tmp_path / "b"), "--name", "r"], timeout=300,
                   env={**env, "FASTAIRL_CACHE": str(tmp_path / "empty")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("fastairl: error: --photos 16: no source photographs found")
    assert "FASTAIRL_PHOTO_SOURCES" in lines[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_gpu_session_smoke_rehearses_on_cpu(tmp_path, demo_root):
    """bench/gpu_session.sh smoke with DEVICE=cpu (its rehearsal): every check ends rc=0."""
    out = tmp_path / "gpu-out"
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable, "TESTS": "tests/test_nvjpeg.py"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_session.sh"), "smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "session.log").read_text()
    for check in ("nvjpeg check rc=0", "train nvjpeg rc=0", "pytest tests/test_nvjpeg.py rc=0"):
        assert check in log, log
    assert "ok" == (out / "nvjpeg_check.txt").read_text().strip().splitlines()[-1]


def test_a_failing_row_fails_a_torchrun_worker(tmp_path, monkeypatch):
    """In one process a row that raises becomes a failed row; in a torchrun worker it
    raises, so torchrun stops the other ranks instead of leaving them in a collective."""
    plan = tp.TrainRowPlan("no_such_exp", "ceiling", "off", False, False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    row = tp.bench_train_row(plan, _settings(), torch.device("cpu"), tmp_path, 0)
    assert row["status"] == "failed" and "no_such_exp" in row["reason"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exception, match="no_such_exp"):
        tp.bench_train_row(plan, _settings(), torch.device("cpu"), tmp_path, 1)


def test_bench_modules_form_no_import_cycle_and_stay_small():
    """bench/ is a package of small modules under one command line: no two of them import
    each other (function-level imports included), and each stays within the line limit."""
    from test_layering import cycles, import_graph
    graph = import_graph(REPO / "bench")
    assert "bench._backends" in graph and "bench.throughput" in graph
    assert not cycles(graph), cycles(graph)
    assert not any("bench.throughput" in deps for deps in graph.values())  # the script is imported by no part
    long = [f.name for f in (REPO / "bench").glob("*.py") if len(f.read_text().splitlines()) > 400]
    assert not long, long
