"""The first hour of a new user (issue 16): Ctrl-C, failed starts, checkpoint read errors,
defaults that fit the machine and a discoverable configuration, each with real processes."""
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from test_reliability import SMALL, _cmd, _env, _model, _step_of, small_data  # noqa: F401 (fixture)

LINE = "interrupted at step "


def _log_steps(run: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines() if '"step"' in l]


def _wait_for_log_step(log: Path, step: int, proc, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.is_file():
            steps = [json.loads(l).get("step", 0) for l in log.read_text().splitlines() if l.strip()]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"no logged step >= {step} after {timeout} s")


# ------------------------------------------------------------------------------ item 1
def test_ctrl_c_checkpoints_exits_130_and_resumes_exactly(tmp_path, demo_root):
    """SIGINT to the whole process group (what Ctrl-C in a terminal does, DataLoader workers
    included) before the first epoch end (125 steps): exit 130, one line with the command
    that continues, and that command ends bit-exactly where an uninterrupted run ends."""
    extra = ("--until-step", "6", "--set", "log_every=1", "--workers", "2")
    straight = subprocess.run(_cmd("byol", "demo", tmp_path / "a", *extra), cwd=REPO, capture_output=True,
                              text=True, env=_env(), timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run_b = tmp_path / "b" / "byol"
    proc = subprocess.Popen(_cmd("byol", "demo", tmp_path / "b", *extra), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True)
    try:
        _wait_for_log_step(run_b / "log.jsonl", 1, proc)
        assert not (run_b / "last.pth").exists()  # no checkpoint before the signal: it writes the first
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    lines = [l for l in err.splitlines() if LINE in l]
    assert len(lines) == 1, err[-2000:]
    step = int(lines[0].split(LINE)[1].split(";")[0])
    assert 1 <= step <= 6 and _step_of(run_b / "last.pth") == step
    cmd = shlex.split(lines[0].split("continue with: ")[1])
    assert cmd[0] == "python" and cmd[-1] == "--resume" and "--output-dir" in cmd
    resumed = subprocess.run([sys.executable] + cmd[1:], cwd=REPO, capture_output=True, text=True, env=_env(),
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _step_of(run_b / "last.pth") == 6
    a, b = _model(tmp_path / "a" / "byol" / "last.pth"), _model(run_b / "last.pth")
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    drop = ("images_per_s", "data_wait")  # wall-clock values
    rec = lambda run: [{k: v for k, v in json.loads(l).items() if k not in drop}  # noqa: E731
                       for l in (run / "log.jsonl").read_text().splitlines()]
    assert rec(run_b) == rec(tmp_path / "a" / "byol")


# ------------------------------------------------------------------------------ item 2
def test_failed_start_leaves_nothing_that_blocks_the_rerun(small_data, tmp_path):  # noqa: F811
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(small_data, bad)
    for cls in (bad / "train").iterdir():
        for f in sorted(cls.iterdir())[:8]:
            f.write_bytes(b"not a jpeg" * 20)
    out = tmp_path / "o"
    res = subprocess.run(_cmd("byol", bad, out, "--max-steps", "2"), cwd=REPO, capture_output=True, text=True,
                         env=_env(), timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    run = out / "byol"
    assert not run.exists() or {p.name for p in run.iterdir()} <= {"config.json", "log.jsonl", "tb"}
    # the rerun with good data needs neither --overwrite nor --resume
    res = subprocess.run(_cmd("byol", small_data, out, "--max-steps", "1"), cwd=REPO, capture_output=True,
                         text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _step_of(run / "last.pth") == 1 and _log_steps(run) == [1]


def test_leftovers_of_a_killed_start_are_treated_as_empty_and_resume_says_drop_it(small_data, tmp_path):  # noqa: F811
    run = tmp_path / "byol"
    (run / "tb").mkdir(parents=True)  # what a start killed before its first checkpoint leaves
    (run / "config.json").write_text("{}")
    (run / "log.jsonl").write_text("")
    res = run_cli(_cmd("byol", small_data, tmp_path, "--max-steps", "1", "--resume")[1:])
    assert res.returncode == 2
    err = [l for l in res.stderr.splitlines() if l.startswith("fastairl: error:")]
    assert len(err) == 1 and "no checkpoint" in err[0] and "drop --resume" in err[0], res.stderr[-2000:]
    res = run_cli(_cmd("byol", small_data, tmp_path / "none", "--max-steps", "1", "--resume")[1:])
    assert res.returncode == 2 and "drop --resume" in res.stderr and not (tmp_path / "none").exists()
    res = run_cli(_cmd("byol", small_data, tmp_path, "--max-steps", "1")[1:])
    assert res.returncode == 0, res.stderr[-2000:]
    assert _step_of(run / "last.pth") == 1


@pytest.mark.parametrize("extra", [["--data", "/does/not/exist"], ["--set", "colour=1"], ["--bogus-flag"],
                                   ["--loader", "ffcv_typo"]])
def test_bad_starts_create_no_run_folder(extra, tmp_path, demo_root):
    res = run_cli(["fastairl/train.py", "--exp", "byol", "--device", "cpu", "--output-dir", str(tmp_path / "o"),
                   "--max-steps", "1", *extra])
    assert res.returncode == 2
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ item 6
def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["text"] = tmp_path / "notes.pth"
    files["text"].write_text("this is a text file, not weights\n" * 10)
    files["empty"] = tmp_path / "empty.pth"
    files["empty"].write_bytes(b"")
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(5000)}}, good)
    files["truncated"] = tmp_path / "truncated.pth"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["detectron2"] = tmp_path / "r50.pkl"
    with open(files["detectron2"], "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)},
                     "__author__": "torchvision", "matching_heuristics": True}, f, protocol=4)
    return files


def test_load_checkpoint_names_what_the_file_is(tmp_path):
    from fastairl.backbone_io import CheckpointError, load_checkpoint
    files = _bad_checkpoints(tmp_path)
    expect = {"text": "not a torch checkpoint", "empty": "is empty", "truncated": "truncated",
              "detectron2": "detectron2"}
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert str(path) in msg and expect[kind] in msg, msg
        assert "\n" not in msg and "weights_only" not in msg.lower() and "\x1b" not in msg, msg


def _tool_cmds(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "train": ["fastairl/train.py", "--exp", "byol", "--device", "cpu", "--output-dir", str(tmp_path / "t"),
                  "--resume", str(path), *SMALL],
        "knn": ["-m", "fastairl.knn", "--ckpt", str(path), "--device", "cpu"],
        "linear_eval": ["-m", "fastairl.linear_eval", "--ckpt", str(path), "--device", "cpu",
                        "--output-dir", str(tmp_path / "l")],
        "convert_detectron2": ["-m", "fastairl.convert_detectron2", str(path), str(tmp_path / "o.pkl")],
        "export_backbone": ["-m", "fastairl.export_backbone", str(path), str(tmp_path / "o.pth")],
        "norm_rescale": ["-m", "fastairl.norm_rescale", "--norm-from", str(path), "--weights-from", str(path),
                         "--out", str(tmp_path / "n.pth")],
    }


@pytest.mark.parametrize("tool", ["train", "knn", "linear_eval", "convert_detectron2", "export_backbone",
                                  "norm_rescale"])
def test_every_tool_gives_one_clean_line_for_a_bad_checkpoint(tool, tmp_path, demo_root):
    files = _bad_checkpoints(tmp_path)
    # norm_rescale reads detectron2 pickles by design, so a truncated torch file is its bad input
    kinds = {"train": ["detectron2", "truncated"], "norm_rescale": ["truncated"]}.get(tool, ["detectron2"])
    for kind in kinds:
        res = run_cli(_tool_cmds(files[kind], tmp_path)[tool])
        assert res.returncode == 2, (kind, res.stderr[-2000:])
        lines = [l for l in res.stderr.splitlines() if l.strip() and "fastairl" in l and "error" in l]
        assert len(lines) == 1 and lines[0].startswith("fastairl: error:"), (kind, res.stderr[-2000:])
        assert str(files[kind]) in lines[0] and ("detectron2" in lines[0] or kind != "detectron2")
        assert "Traceback" not in res.stderr and "weights_only" not in res.stderr.lower(), res.stderr[-2000:]
    assert not (tmp_path / "t").exists() and not (tmp_path / "l").exists()


# ------------------------------------------------------------------------------ item 8
def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_log_has_no_duplicate_steps_and_every_stop_says_where(small_data, tmp_path):  # noqa: F811
    """A crash after steps its checkpoint does not hold is simulated by putting back an older
    last.pth (mid-epoch step 2, epoch-end step 4); the resumed log has each step once. The
    folder loader caps --workers at the CPUs; the progress bar shows log.jsonl's epoch."""
    out = tmp_path / "o"
    run = out / "byol"
    many = str(_usable_cpus() + 2)

    def train(*extra, progress=False):
        cmd = _cmd("byol", small_data, out, "--set", "log_every=1", *extra)
        cmd[cmd.index("--workers") + 1] = many
        if progress:
            cmd.remove("--no-progress")
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    res = train("--until-step", "2")
    assert f"{many} workers requested, {_usable_cpus()} CPUs usable" in res.stderr
    assert "freeze" not in res.stderr, res.stderr[-2000:]
    assert f"run folder {run.resolve()}: config.json, log.jsonl, tb/, last.pth" in res.stderr
    assert "stopped at step 2; continue with: python fastairl/train.py" in res.stderr
    ck2 = (run / "last.pth").read_bytes()
    train("--until-step", "4", "--resume")
    ck4 = (run / "last.pth").read_bytes()
    train("--until-step", "6", "--resume")
    assert _log_steps(run) == [1, 2, 3, 4, 5, 6]
    for older in (ck2, ck4):
        (run / "last.pth").write_bytes(older)
        res = train("--until-step", "6", "--resume", progress=True)
        assert _log_steps(run) == [1, 2, 3, 4, 5, 6]
    last_epoch = json.loads((run / "log.jsonl").read_text().splitlines()[-1])["epoch"]
    assert f"epoch={last_epoch:.2f}" in res.stderr, res.stderr[-1500:]
    # a finished run says so, and how to evaluate it
    res = train("--epochs", "2", "--resume")
    assert "the run is complete (step 8)" in res.stderr and "fastairl.linear_eval --ckpt" in res.stderr


# ------------------------------------------------------------------------------ item 9
def test_print_config_shows_the_resolved_config_and_creates_nothing(tmp_path):
    from fastairl.config import Config, load_experiment
    import dataclasses
    res = run_cli(["fastairl/train.py", "--exp", "moco_v2p", "--data", "demo", "--output-dir", str(tmp_path / "o"),
                   "--print-config", "--set", "lr=0.1", "--epochs", "3", "--batch-size", "16"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "o").exists()
    rows = {}
    for ln in res.stdout.splitlines():
        if ln.startswith("#") or "=" not in ln:
            continue
        key, rest = ln.split("=", 1)
        value, meta = rest.split("#", 1)
        rows[key.strip()] = (value.strip(), meta.strip())
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name != "name"}
    assert set(rows) == set(fields)
    assert rows["lr"][0] == "0.1" and rows["lr"][1].startswith("float, default 0.03") and "--set" in rows["lr"][1]
    assert rows["epochs"][0] == "3" and rows["batch_size"][0] == "16"
    assert rows["arch"][0] == "resnet18" and "demo scale" in rows["arch"][1]  # demo scale, not given by the user
    exp = load_experiment("moco_v2p")
    assert rows["queue_size"][0] == str(exp.queue_size) and rows["head"][0] == exp.head
    for name, f in fields.items():
        assert rows[name][1].startswith(f"{type(f.default).__name__}, default "), rows[name]


def test_help_lists_experiments_defaults_and_examples():
    from fastairl.config import EXP_DIR, available_experiments
    res = run_cli(["fastairl/train.py", "--help"])
    assert res.returncode == 0
    for name in available_experiments():
        first = (EXP_DIR / f"{name}.py").read_text().splitlines()[0].lstrip("#").strip()
        line = next(l for l in res.stdout.splitlines() if l.strip().startswith(name + " "))
        assert first[:40] in line, (name, line)
    assert "examples:" in res.stdout and "--print-config" in res.stdout
    assert "(default: outputs)" in res.stdout and "(default: demo)" in res.stdout


@pytest.mark.parametrize("tool", [["fastairl/train.py", "--exp", "byol"], ["-m", "fastairl.linear_eval"],
                                  ["-m", "fastairl.knn"], ["-m", "fastairl.convert_detectron2", "a", "b"],
                                  ["-m", "fastairl.export_backbone", "a", "b"],
                                  ["-m", "fastairl.norm_rescale", "--norm-from", "a", "--weights-from", "b",
                                   "--out", "c"],
                                  ["-m", "fastairl.preview"], ["data_prep/write_ffcv.py", "--data", "x", "--out", "y"],
                                  
                                  ["bench/throughput.py"]])
def test_every_tool_uses_one_error_prefix(tool):
    res = run_cli([*tool, "--no-such-flag"])
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("fastairl: error: ") and "--no-such-flag" in lines[-1], res.stderr[-1000:]
