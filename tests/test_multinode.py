"""Multi-node launch as on a cluster: two torchrun agents acting as two nodes meet through a
c10d rendezvous on 127.0.0.1 (gloo, one process each), train, and must end with identical
weights; the rank check that proves it catches a perturbed rank; the SLURM examples in
scripts/slurm/ are valid bash and hand torchrun and the tools flags they accept."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import REPO

SMALL = ["--set", "arch=resnet18", "--set", "image_size=32", "--set", "hidden_dim=64", "--set", "dim=32",
         "--set", "queue_size=64", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress",
         "--set", "warmup_epochs=0.01"]
SLURM = REPO / "scripts" / "slurm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, demo_root):
    """Two demo classes, 16 train images each: 4 steps of 8 per epoch."""
    root = tmp_path_factory.mktemp("tiny")
    for split, n in (("train", 16), ("val", 4)):
        for cls in sorted(p.name for p in (demo_root / split).iterdir())[:2]:
            (root / split / cls).mkdir(parents=True)
            for f in sorted((demo_root / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    return root


def _agent(node: int, port: int, args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}",
           "--node-rank", str(node), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("exp", ["moco_v1", "byol"])
def test_two_nodes_train_to_identical_weights(exp, tiny_data, tmp_path):
    from fastairl.checkpoint import strip_prefix
    from fastairl.rank_check import fingerprint_of_state

    port = _free_port()
    args = ["fastairl/train.py", "--exp", exp, "--data", str(tiny_data), "--output-dir", str(tmp_path),
            "--max-steps", "3", "--loader", "folder", *SMALL]
    agents = [_agent(node, port, args) for node in (0, 1)]
    outs = []
    try:
        for a in agents:
            outs.append(a.communicate(timeout=240))
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    for a, (_, err) in zip(agents, outs):
        assert a.returncode == 0, err[-3000:]
    ck = torch.load(tmp_path / exp / "last.pth", weights_only=True)
    extra = ck["fastairl"]
    assert extra["step"] == 3 and extra["world_size"] == 2
    check = extra["rank_check"]
    assert check["mode"] == "error" and len(check["fingerprints"]) == 2
    # the two nodes' digests of every parameter and buffer agree ...
    assert check["fingerprints"][0] == check["fingerprints"][1]
    # ... and they describe the weights that were saved (rank 0's, recomputed here)
    again = fingerprint_of_state(strip_prefix(ck["model"]), strip_prefix(ck["classifier"]), check["skipped"])
    assert again == check["fingerprints"][0]
    assert check["tensors"] > 100
    if exp == "moco_v1":
        # ShuffleBN across the nodes: per-process BN, whose running statistics differ by design
        assert check["skipped"] and all(n.endswith(("running_mean", "running_var")) for n in check["skipped"])
        assert int(ck["model"]["module.queue_ptr"]) == 3 * 8  # keys of both nodes were enqueued
        assert "ShuffleBN with one process is a no-op" not in outs[0][1] + outs[1][1]
    else:
        assert check["skipped"] == []  # SyncBN (all-reduce on CPU): statistics must agree too


def test_rank_check_catches_a_perturbed_rank(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rank_check_worker import worker

    mp.start_processes(worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for exp in ("moco_v1", "byol"):
        for r in (0, 1):  # both ranks reach the same verdict (no rank is left waiting in a collective)
            s = seen[r]
            assert s[f"{exp}/same"]["ok"] and s[f"{exp}/restored"]["ok"]
            fp = s[f"{exp}/same"]["fingerprints"]
            assert fp[0] == fp[1] == s[f"{exp}/recomputed"]
            assert s[f"{exp}/restored"]["fingerprints"] == fp
            ulp = s[f"{exp}/ulp"]
            assert not ulp["ok"]
            assert "after step 7 rank 1 holds different weights than rank 0" in ulp["error"]
            assert "1 of" in ulp["error"] and "model.online_encoder.layer3.1.conv2.weight" in ulp["error"]
            warn = s[f"{exp}/ulp_warn"]
            assert warn["ok"] and warn["fingerprints"][0] != warn["fingerprints"][1]
        stats = seen[0][f"{exp}/bn_stats"]
        if exp == "moco_v1":  # per-process BN: rank-local statistics are expected to differ
            assert stats["ok"] and "model.online_encoder.layer2.0.bn1.running_mean" in stats["skipped"]
        else:  # SyncBN: statistics are global, a difference is a fault
            assert not stats["ok"] and "model.online_encoder.layer2.0.bn1.running_mean" in stats["error"]
    assert not seen[0]["moco_v1/queue"]["ok"] and "model.queue" in seen[0]["moco_v1/queue"]["error"]


# ----------------------------------------------------------------------------- SLURM examples
@pytest.mark.parametrize("name", ["train.sbatch", "linear_eval.sbatch"])
def test_sbatch_examples_are_valid_bash(name):
    res = subprocess.run(["bash", "-n", str(SLURM / name)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = (SLURM / name).read_text()
    assert "#SBATCH --ntasks-per-node=1" in text  # one torchrun agent per node


def _dry_run(name: str, tmp_path: Path, env: dict, *args: str) -> list[str]:
    """Run an sbatch script with SLURM's variables set and stand-ins for ``scontrol`` (the
    node list) and ``srun`` (records its command line instead of starting job steps)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a01\\ngpu-a02\\n"\n')
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$SRUN_LOG"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    log = tmp_path / "srun.args"
    full = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SRUN_LOG=str(log),
                SLURM_JOB_NODELIST="gpu-a[01-02]", SLURM_NNODES="2", SLURM_JOB_ID="4242",
                SLURM_SUBMIT_DIR=str(REPO), **env)
    res = subprocess.run(["bash", str(SLURM / name), *args], capture_output=True, text=True, env=full, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return log.read_text().split("\0")[:-1]


def _split_srun(argv: list[str]):
    """(srun flags, torchrun's namespace) from a recorded srun command line."""
    from torch.distributed.run import get_args_parser
    i = next(k for k, a in enumerate(argv) if Path(a).name == "torchrun")
    return argv[:i], get_args_parser().parse_args(argv[i + 1:])


def _check_launch(srun_flags, tr):
    assert "--ntasks-per-node=1" in srun_flags
    assert (tr.nnodes, tr.nproc_per_node) == ("2", "8")
    assert (tr.rdzv_backend, tr.rdzv_endpoint, tr.rdzv_id) == ("c10d", "gpu-a01:29500", "4242")
    assert "SIGUSR1" in tr.signals_to_handle  # SLURM's warning signal reaches the trainer


def test_train_sbatch_hands_train_py_valid_flags(tmp_path):
    from fastairl.train import build_parser
    out = tmp_path / "runs"
    env = {"EXP": "byol", "DATA": "/data/in1k", "OUT": str(out)}
    srun_flags, tr = _split_srun(_dry_run("train.sbatch", tmp_path, env, "--epochs", "100"))
    _check_launch(srun_flags, tr)
    assert tr.training_script == "fastairl/train.py" and not tr.module
    args = build_parser().parse_args(tr.training_script_args)  # exits (fails the test) on an unknown flag
    assert (args.exp, args.data, args.output_dir, args.epochs, args.resume) == ("byol", "/data/in1k", str(out), 100, None)
    (out / "byol").mkdir(parents=True)
    (out / "byol" / "last.pth").write_bytes(b"")  # a requeued job continues its run
    _, tr = _split_srun(_dry_run("train.sbatch", tmp_path, env))
    assert build_parser().parse_args(tr.training_script_args).resume == "auto"


def test_linear_eval_sbatch_hands_linear_eval_valid_flags(tmp_path):
    from fastairl.linear_eval import build_parser
    env = {"CKPT": "outputs/moco_v2p/last.pth", "DATA": "/data/in1k", "OUT": str(tmp_path / "lin")}
    srun_flags, tr = _split_srun(_dry_run("linear_eval.sbatch", tmp_path, env, "--large-norm-config"))
    _check_launch(srun_flags, tr)
    assert tr.module and tr.training_script == "fastairl.linear_eval"
    args = build_parser().parse_args(tr.training_script_args)
    assert (args.ckpt, args.data, args.output_dir, args.name) == ("outputs/moco_v2p/last.pth", "/data/in1k",
                                                                 str(tmp_path / "lin"), "moco_v2p")
    assert args.large_norm_config and args.resume is None
    res = subprocess.run(["bash", str(SLURM / "linear_eval.sbatch")], capture_output=True, text=True,
                         env=dict(os.environ, SLURM_JOB_NODELIST="x", SLURM_NNODES="1", SLURM_JOB_ID="1"))
    assert res.returncode != 0 and "CKPT" in res.stderr  # says what is missing


def test_sbatch_flags_exist_in_the_help_of_their_tool():
    """Every long flag written in the examples (outside #SBATCH lines and srun's own) is one
    that torchrun, train.py or linear_eval accept: a renamed flag breaks this test."""
    from torch.distributed.run import get_args_parser

    from fastairl.linear_eval import build_parser as lin_parser
    from fastairl.train import build_parser as train_parser
    known = set()
    for p in (get_args_parser(), train_parser(), lin_parser()):
        for a in p._actions:
            known.update(a.option_strings)
    srun_own = {"--ntasks-per-node", "--kill-on-bad-exit"}
    for name in ("train.sbatch", "linear_eval.sbatch"):
        for ln in (SLURM / name).read_text().splitlines():
            if ln.lstrip().startswith("#"):
                continue
            for tok in shlex.split(ln.replace("\\", " "), comments=True, posix=True) if ln.strip() else []:
                flag = tok.split("=", 1)[0]
                if flag.startswith("--") and len(flag) > 2:
                    assert flag in known or flag in srun_own, f"{name}: {flag} is not a flag of torchrun or the tool"
