"""Reliability with real processes and real signals: exact resume after SIGKILL,
pre-emption by SIGTERM, torchrun restarts, bad images, non-finite numbers, a full disk,
and ranks that disagree."""
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli, torchrun

SMALL = ["--set", "arch=resnet18", "--set", "image_size=32", "--set", "hidden_dim=64", "--set", "dim=32",
         "--set", "queue_size=64", "--batch-size", "8", "--workers", "1", "--device", "cpu", "--no-progress",
         "--set", "warmup_epochs=0.01"]


def _cmd(exp, data, out, *extra):
    return [sys.executable, "fastairl/train.py", "--exp", exp, "--data", str(data), "--output-dir", str(out),
            *SMALL, *extra]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1")


def _step_of(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, weights_only=True, mmap=True)["fastairl"]["step"])
    except Exception:
        return -1


def _wait_for_step(ckpt: Path, step: int, proc, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ckpt.is_file() and _step_of(ckpt) >= step:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode}")
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint with step >= {step} after {timeout} s")


def _model(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=True)["model"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, demo_root):
    """Two demo classes, 16 train images each: an epoch is 4 steps of 8."""
    root = tmp_path_factory.mktemp("small")
    for split, n in (("train", 16), ("val", 4)):
        for cls in sorted(p.name for p in (demo_root / split).iterdir())[:2]:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((demo_root / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.mark.parametrize("exp", ["moco_v2p", "byol"])
def test_sigkill_then_resume_equals_uninterrupted(exp, small_data, tmp_path):
    straight = subprocess.run(_cmd(exp, small_data, tmp_path / "a", "--until-step", "7"), cwd=REPO,
                              capture_output=True, text=True, env=_env(), timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    ck_b = tmp_path / "b" / exp / "last.pth"
    proc = subprocess.Popen(_cmd(exp, small_data, tmp_path / "b", "--until-step", "7", "--save-every-steps", "1"),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        _wait_for_step(ck_b, 3, proc)  # mid-epoch (4 steps per epoch)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _step_of(ck_b)
    assert 3 <= killed_at < 7
    resumed = subprocess.run(_cmd(exp, small_data, tmp_path / "b", "--until-step", "7", "--resume"), cwd=REPO,
                             capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _model(tmp_path / "a" / exp / "last.pth"), _model(ck_b)
    assert _step_of(ck_b) == 7
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ after resume from step {killed_at}, e.g. {differing[:3]}"


def test_sigterm_checkpoints_and_exits_zero(small_data, tmp_path):
    ck = tmp_path / "byol" / "last.pth"
    proc = subprocess.Popen(_cmd("byol", small_data, tmp_path, "--save-every-steps", "1"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for_step(ck, 1, proc)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "writing a checkpoint, then exiting" in err
    assert time.time() - t0 < 120
    step = _step_of(ck)
    assert step >= 1
    assert torch.load(ck, weights_only=True)["fastairl"]["batch_in_epoch"] == step % 4 or step % 4 == 0


def _worker_pids(out_dir: Path, rank: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(out_dir).encode() == c for c in cmd) and f"RANK={rank}".encode() in env \
                and any(c.endswith(b"fastairl/train.py") for c in cmd):
            pids.append(int(d.name))

    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return -1

    # the rank process itself, not its DataLoader workers (forked children with the same command)
    return [p for p in pids if parent(p) not in pids]


def test_torchrun_restart_resumes_by_itself(small_data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts", "2",
           *_cmd("byol", small_data, out, "--until-step", "6", "--save-every-steps", "1")[1:]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for_step(out / "byol" / "last.pth", 2, proc)
        victims = _worker_pids(out, 1)
        assert victims, "rank 1 worker not found"
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "torchrun restart #1: resuming from" in err
    assert _step_of(out / "byol" / "last.pth") == 6


def test_corrupt_jpeg_is_replaced_then_too_many_stop(small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    cls = sorted((data / "train").iterdir())[0]
    victim = sorted(cls.iterdir())[0]
    victim.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    res = run_cli(["fastairl/train.py", "--exp", "byol", "--data", str(data), "--output-dir", str(tmp_path / "o"),
                   *SMALL, "--until-step", "4", "--set", "max_bad_share=0.1"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "unreadable image" in res.stderr and victim.name in res.stderr
    res = run_cli(["fastairl/train.py", "--exp", "byol", "--data", str(data), "--output-dir", str(tmp_path / "o2"),
                   *SMALL, "--until-step", "4", "--set", "max_bad_share=0.01"])
    assert res.returncode == 2
    assert "1 unreadable images" in res.stderr and "max_bad_share" in res.stderr


def test_nonfinite_loss_stops_and_keeps_checkpoint(small_data, tmp_path):
    args = ["fastairl/train.py", "--exp", "byol", "--data", str(small_data), *SMALL, "--until-step", "6",
            "--save-every-steps", "1", "--set", "lr=1e30"]
    res = run_cli(args + ["--output-dir", str(tmp_path / "a")])
    assert res.returncode == 3, res.stderr[-2000:]
    assert "non-finite loss or gradient at step" in res.stderr and "is intact" in res.stderr
    ck = tmp_path / "a" / "byol" / "last.pth"
    failed_at = int(res.stderr.split("at step ")[1].split()[0])
    assert _step_of(ck) <= failed_at  # nothing written after the bad step
    res = run_cli(args + ["--output-dir", str(tmp_path / "b"), "--skip-nonfinite", "2"])
    assert res.returncode == 3
    assert res.stderr.count("step skipped") == 2


def test_full_disk_keeps_previous_checkpoint(small_data, tmp_path):
    base = ["fastairl/train.py", "--exp", "byol", "--data", str(small_data), "--output-dir", str(tmp_path), *SMALL]
    assert run_cli(base + ["--max-steps", "1"]).returncode == 0
    ck = tmp_path / "byol" / "last.pth"
    before = ck.read_bytes()
    limit = len(before) // 2

    def small_disk():  # writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable] + base + ["--max-steps", "1", "--resume"], cwd=REPO, capture_output=True,
                          text=True, env=_env(), preexec_fn=small_disk, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not write checkpoint" in proc.stderr and "previous checkpoint is intact" in proc.stderr
    assert ck.read_bytes() == before
    assert not [p for p in ck.parent.iterdir() if p.name.endswith(".tmp")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_with_different_flags_are_refused(small_data, tmp_path):
    port = _free_port()
    procs = []
    for rank, bs in ((0, "8"), (1, "16")):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        cmd = _cmd("byol", small_data, tmp_path, "--max-steps", "1")
        cmd[cmd.index("--batch-size") + 1] = bs
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 2 for p in procs), [o[1][-1500:] for o in outs]
    assert "rank 1 disagrees with rank 0 on batch_size" in outs[0][1]
