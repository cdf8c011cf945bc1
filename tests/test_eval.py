"""kNN and linear evaluation: the vote against hand-computed answers, the CLIs end to end on
real JPEG folders (single process and 2 gloo processes), the frozen-backbone check, and the
user-error paths.

The end-to-end tests run on a small folder cut from the demo dataset (101 train / 31 val
JPEGs, both odd so that 2 processes need a padded eval shard) whose val images are copies
of train images: with k=1 every query's nearest neighbour is its own copy, so the kNN answer
is known (100 % top-1) whatever the backbone is.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FASTAIRL_CACHE", str(REPO / ".cache" / "fastairl"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

from fastairl.knn import gather_unique, knn_predict, load_encoder, shard_indices  # noqa: E402
from fastairl.linear_eval import (BackboneChangedError, changed_tensors, check_frozen,  # noqa: E402
                                  tensor_fingerprint)
from fastairl.models.resnet import Encoder  # noqa: E402

TRAIN_PER_CLASS, VAL_PER_CLASS = 10, 3
N_TRAIN, N_VAL = 10 * TRAIN_PER_CLASS + 1, 10 * VAL_PER_CLASS + 1  # 101, 31: odd on purpose


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    return run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + args)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("fastairl: error:")]
    assert len(errs) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in errs[0], errs[0]
    return errs[0]


def parse_topk(stdout: str) -> tuple[float, float]:
    m = re.search(r"top-1 ([\d.]+) top-5 ([\d.]+)", stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def mini_data(tmp_path_factory) -> Path:
    """101 train / 31 val real JPEGs from the demo set; val files are copies of train files."""
    from fastairl.data import resolve_data
    demo = resolve_data("demo")
    root = tmp_path_factory.mktemp("mini")
    classes = sorted(p.name for p in (demo / "train").iterdir() if p.is_dir())
    for ci, c in enumerate(classes):
        files = sorted((demo / "train" / c).iterdir())
        n_train = TRAIN_PER_CLASS + (1 if ci == 0 else 0)
        n_val = VAL_PER_CLASS + (1 if ci == 0 else 0)
        (root / "train" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for f in files[:n_train]:
            shutil.copy(f, root / "train" / c / f.name)
        for f in files[:n_val]:
            shutil.copy(f, root / "val" / c / ("copy_" + f.name))
    return root


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, mini_data) -> Path:
    """A real fastairl pre-training checkpoint: 2 steps of moco_v2p (resnet18, 64 px)."""
    out = tmp_path_factory.mktemp("pre")
    ok(run(["fastairl/train.py", "--exp", "moco_v2p", "--data", str(mini_data), "--device", "cpu",
            "--set", "arch=resnet18", "--set", "image_size=64", "--set", "queue_size=256", "--set", "hidden_dim=256",
            "--batch-size", "16", "--max-steps", "2", "--workers", "1", "--output-dir", str(out), "--no-progress"]))
    ck = out / "moco_v2p" / "last.pth"
    assert ck.is_file()
    return ck


@pytest.fixture(scope="session")
def reference_ckpt(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A checkpoint in the reference layout (module. prefix, queue, empty optimizer) whose
    target encoder differs from its online encoder."""
    from fastairl.config import apply_overrides, load_experiment
    from fastairl.methods import build_method
    cfg = apply_overrides(load_experiment("moco_v2p"), ["arch=resnet18", "hidden_dim=32", "dim=16", "queue_size=32"])
    torch.manual_seed(3)
    model = build_method(cfg, "cpu", 10)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ref") / "ref_r18.pth.tar"
    torch.save({"start_epoch": 1, "model": {"module." + k: v for k, v in model.state_dict().items()},
                "optimizer": {}}, path)
    return path, model


# ----------------------------------------------------------------------------- the vote
def brute_force_knn(bank, bank_y, queries, num_classes, k, t):
    """Independent reference: Python loops over cosine similarities."""
    out = []
    for q in queries:
        sims = []
        for i, b in enumerate(bank):
            sims.append((float(torch.dot(q, b) / (q.norm() * b.norm())), int(bank_y[i])))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, y in sims[:k]:
            votes[y] += math.exp(s / t)
        out.append(votes)
    return torch.tensor(out, dtype=torch.float64)


def test_knn_predict_hand_computed_scores():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = torch.tensor([3.0, 3.0])  # unnormalised on purpose: cosine 0.7071 to e0
    bank = torch.stack([e0 * 5, e1, diag])
    labels = torch.tensor([0, 1, 1])
    scores = knn_predict(bank, labels, e0[None], num_classes=2, k=2, t=0.5)
    # the two nearest of e0: itself (sim 1, class 0) and diag (sim 1/sqrt 2, class 1); e1 (sim 0) is out
    assert torch.allclose(scores[0], torch.tensor([math.exp(2.0), math.exp(2 ** -0.5 / 0.5)]), rtol=1e-5)


def test_knn_predict_weighting_beats_majority():
    """One very close neighbour of class 0 outvotes three moderately close ones of class 1."""
    q = torch.tensor([[1.0, 0.0, 0.0]])
    bank = torch.tensor([[1.0, 0.01, 0.0], [0.5, 0.866, 0.0], [0.5, 0.0, 0.866], [0.5, -0.866, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    s = knn_predict(bank, labels, q, num_classes=2, k=4, t=0.07)
    assert s[0].argmax() == 0
    s_flat = knn_predict(bank, labels, q, num_classes=2, k=4, t=100.0)  # ~unweighted: majority wins
    assert s_flat[0].argmax() == 1


def test_knn_predict_matches_brute_force_and_k1_is_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(60, 8, generator=g)
    labels = torch.randint(0, 5, (60,), generator=g)
    queries = torch.randn(17, 8, generator=g)
    for k, t in ((1, 0.07), (7, 0.1), (200, 0.5)):
        got = knn_predict(bank, labels, queries, num_classes=5, k=k, t=t, chunk_size=4)
        want = brute_force_knn(bank, labels, queries, 5, min(k, 60), t)
        assert torch.allclose(got.double(), want, rtol=1e-4), (k, t)
    # k=1: the predicted class is exactly the label of the most cosine-similar bank entry
    cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    nn_label = labels[cos.argmax(1)]
    assert torch.equal(knn_predict(bank, labels, queries, 5, k=1).argmax(1), nn_label)
    # chunking does not change the answer
    assert torch.allclose(knn_predict(bank, labels, queries, 5, k=7, chunk_size=1),
                          knn_predict(bank, labels, queries, 5, k=7))


def test_knn_predict_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), torch.randn(2, 3), num_classes=3)
    with pytest.raises(ValueError, match="dim"):
        knn_predict(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(2, 4), num_classes=3)


def test_eval_shards_cover_each_image_once(mini_data):
    """3 ranks over 31 val images: the eval sampler pads one duplicate; the carried indices
    let gather_unique drop it (the gather itself runs in the torchrun tests below)."""
    from fastairl.data.base import LoaderSpec
    from fastairl.data.folder import FolderLoader
    all_idx = []
    for r in range(3):
        loader = FolderLoader(LoaderSpec(root=str(mini_data), split="val", recipe="eval", image_size=32,
                                         batch_size=4, rank=r, world_size=3, workers=0, train=False))
        idx, n = shard_indices(loader, r, 3)
        assert n == N_VAL and len(idx) == math.ceil(N_VAL / 3)
        all_idx += idx
    assert len(all_idx) == N_VAL + 2 and len(set(all_idx)) == N_VAL
    feats = torch.tensor(all_idx, dtype=torch.float32)[:, None] * 10
    idx, f = gather_unique(torch.tensor(all_idx), feats)
    assert idx.tolist() == list(range(N_VAL))
    assert torch.equal(f[:, 0], idx.float() * 10)  # rows stay with their index


# ----------------------------------------------------------------------------- checkpoints
def test_load_encoder_reference_layout_picks_the_right_encoder(reference_ckpt):
    path, model = reference_ckpt
    for name, src in (("target", model.target_encoder), ("online", model.online_encoder)):
        enc, desc = load_encoder(str(path), name)
        assert desc == {"ckpt": str(path), "encoder": name, "arch": "resnet18"}
        for k, v in enc.state_dict().items():
            assert torch.equal(v, src.state_dict()[k]), (name, k)
    assert not torch.equal(load_encoder(str(path), "target")[0].conv1.weight, model.online_encoder.conv1.weight)
    with pytest.raises(ValueError, match="resnet18"):
        load_encoder(str(path), "online", arch="resnet50")
    with pytest.raises(ValueError, match="supervised"):
        load_encoder(str(path), "supervised")
    with pytest.raises(ValueError, match="--arch"):
        load_encoder(None, random_init=True)


# ----------------------------------------------------------------------------- frozen check
def test_frozen_check_names_the_changed_tensor():
    torch.manual_seed(0)
    enc = Encoder("resnet18").eval()
    ref = tensor_fingerprint(enc)
    # a layout change, eval-mode forward passes and a device copy change no bit
    enc = enc.to(memory_format=torch.channels_last)
    with torch.no_grad():
        enc.features(torch.randn(2, 3, 32, 32))
    check_frozen(ref, enc)
    # one value in one BN buffer, by the smallest float step
    with torch.no_grad():
        rm = enc.layer3[1].bn2.running_mean
        rm[5] = torch.nextafter(rm[5], torch.tensor(1.0))
    with pytest.raises(BackboneChangedError, match=r"'layer3\.1\.bn2\.running_mean'"):
        check_frozen(ref, enc)
    # a forward in train mode moves every BN buffer: caught too
    enc2 = Encoder("resnet18").eval()
    ref2 = tensor_fingerprint(enc2)
    enc2.train()
    enc2.features(torch.randn(2, 3, 32, 32))
    bad = changed_tensors(ref2, enc2)
    assert "bn1.running_var" in bad and "layer1.0.bn1.num_batches_tracked" in bad
    assert not any(n.endswith("weight") and "bn" not in n for n in bad)  # conv weights untouched


# ----------------------------------------------------------------------------- kNN CLI
KNN = ["-m", "fastairl.knn", "--device", "cpu", "--image-size", "64", "--batch-size", "16", "--workers", "1"]


def test_knn_cli_k1_finds_the_copies_single_and_two_processes(pretrained, mini_data):
    single = run(KNN + ["--ckpt", str(pretrained), "--data", str(mini_data), "--k", "1"])
    assert parse_topk(ok(single)) == (100.0, 100.0)
    assert "resnet18 online" in single.stdout  # arch detected from the checkpoint
    assert f"bank {N_TRAIN} train images, {N_VAL} val queries" in single.stderr
    two = torchrun(KNN + ["--ckpt", str(pretrained), "--data", str(mini_data), "--k", "1"])
    assert parse_topk(ok(two)) == (100.0, 100.0)
    # padded duplicates of both odd splits were dropped after the all-gather
    assert f"bank {N_TRAIN} train images, {N_VAL} val queries" in two.stderr
    assert two.stdout.count("top-1") == 1  # only rank 0 prints


def test_knn_cli_reference_layout_matches_in_process(reference_ckpt, mini_data):
    from fastairl.knn import knn_eval_encoder
    path, model = reference_ckpt
    out = ok(run(KNN + ["--ckpt", str(path), "--data", str(mini_data), "--encoder", "target", "--k", "20",
                        "--no-channels-last"]))
    assert "resnet18 target" in out
    cli1, cli5 = parse_topk(out)
    enc = Encoder("resnet18")
    sd = {k: v for k, v in model.target_encoder.state_dict().items() if not k.startswith("fc.")}
    enc.load_state_dict(sd)
    res = knn_eval_encoder(enc, mini_data, 64, 16, "cpu", workers=1, k=20)
    one = 100.0 / N_VAL + 1e-6  # float noise between processes may move at most one query
    assert abs(res["acc1"] - cli1) <= one and abs(res["acc5"] - cli5) <= one
    assert 0.0 <= cli1 <= cli5 <= 100.0


def test_knn_cli_bad_checkpoint_path(tmp_path):
    missing = tmp_path / "nope.pth"
    one_line_error(run(KNN + ["--ckpt", str(missing), "--data", "demo"]), str(missing))
    one_line_error(run(KNN + ["--data", "demo"]), "--ckpt")


# ----------------------------------------------------------------------------- linear eval
LIN = ["-m", "fastairl.linear_eval", "--device", "cpu", "--image-size", "64", "--batch-size", "8",
       "--workers", "1", "--no-progress"]


def test_linear_eval_ddp_two_steps_resume_and_no_overwrite(pretrained, mini_data, tmp_path):
    out_dir = tmp_path / "lin"
    args = LIN + ["--ckpt", str(pretrained), "--data", str(mini_data), "--output-dir", str(out_dir)]
    proc = torchrun(args + ["--max-steps", "2"])
    top1, top5 = parse_topk(ok(proc))
    assert 0.0 <= top1 <= top5 <= 100.0
    run_dir = out_dir / "moco_v2p-last-online"  # generic stem "last" gets its folder's name
    ck = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=False)
    assert ck["kind"] == "fastairl_linear_eval" and ck["step"] == 2 and ck["batch_in_epoch"] == 2
    assert ck["classifier"]["linear.weight"].shape == (10, 512)  # resnet18: 512-d pooled features
    assert ck["backbone"]["arch"] == "resnet18" and ck["backbone"]["encoder"] == "online"
    assert ck["settings"]["lr"] == 30.0 and ck["settings"]["milestones"] == [60, 80]
    recs = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    val = [r for r in recs if "acc5" in r]
    assert train[-1]["step"] == 2 and math.isfinite(train[-1]["loss"])
    assert train[-1]["lr"] == pytest.approx(30.0 * 8 / 256)
    assert len(val) == 1 and val[0]["images"] == N_VAL  # 2 ranks, padded shard, each image once
    assert val[0]["acc1"] == pytest.approx(top1, abs=0.006)  # printed with 2 decimals
    assert any((run_dir / "tb").iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["last_acc1"] == pytest.approx(val[0]["acc1"])

    # refuses to touch the existing run without --overwrite / --resume
    before = (run_dir / "last.pth").read_bytes()
    one_line_error(run(args + ["--max-steps", "1"]), str(run_dir), "--overwrite")
    assert (run_dir / "last.pth").read_bytes() == before

    # resume in one process continues at step 3 with the saved classifier and momentum
    ok(run(args + ["--max-steps", "1", "--resume"]))
    ck2 = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=False)
    assert ck2["step"] == 3 and ck2["batch_in_epoch"] == 3
    assert not torch.equal(ck2["classifier"]["linear.weight"], ck["classifier"]["linear.weight"])
    recs2 = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs2 if "loss" in r][-1] == 3

    # a resume against a different backbone is refused
    one_line_error(run(LIN + ["--random-init", "--arch", "resnet18", "--data", str(mini_data), "--output-dir",
                              str(out_dir), "--name", run_dir.name, "--resume", "--max-steps", "1"]),
                   "another backbone")


def test_linear_eval_nonfinite_loss_stops_or_skips_as_pretraining_does(mini_data, tmp_path):
    """The shared loop's non-finite policy: stop naming the intact checkpoint, or skip up to
    --skip-nonfinite N steps (an infinite lr makes the classifier non-finite after one step)."""
    args = LIN + ["--random-init", "--arch", "resnet18", "--data", str(mini_data), "--lr", "inf",
                  "--max-steps", "8", "--eval-every", "0"]
    res = run(args + ["--output-dir", str(tmp_path / "a")])
    assert res.returncode == 3, res.stderr[-2000:]
    assert "non-finite loss or gradient at step" in res.stderr and "lower --lr" in res.stderr
    assert "is intact" in res.stderr and "Traceback" not in res.stderr
    res = run(args + ["--output-dir", str(tmp_path / "b"), "--skip-nonfinite", "2"])
    assert res.returncode == 3, res.stderr[-2000:]
    assert res.stderr.count("step skipped") == 2


def test_linear_eval_bad_input(tmp_path):
    missing = tmp_path / "missing.pth"
    one_line_error(run(LIN + ["--ckpt", str(missing), "--output-dir", str(tmp_path)]), str(missing))
    one_line_error(run(LIN + ["--random-init", "--arch", "resnet18", "--batch-size", "0"]), "--batch-size")
    assert not any(tmp_path.iterdir())  # nothing written


# ----------------------------------------------------------------------------- reference presets (issue 14)
def _settings(*argv):
    from fastairl.linear_eval import build_parser, resolve_settings
    return resolve_settings(build_parser().parse_args(list(argv)))


def test_large_norm_preset_is_what_the_reference_runs(caplog):
    """REFERENCE.md: lr 0.2 (not scaled), batch 256, 80 epochs, Nesterov, cosine."""
    s = _settings("--large-norm-config")
    assert (s.lr * s.batch_size / 256, s.batch_size, s.epochs, s.nesterov, s.schedule) == (0.2, 256, 80, True, "cosine")
    import logging
    with caplog.at_level(logging.INFO, logger="fastairl"):
        s = _settings("--large-norm-config", "--batch-size", "1024")
    assert s.lr * s.batch_size / 256 == pytest.approx(0.8)
    assert any("0.2 x 1024/256" in r.getMessage() for r in caplog.records)
    d = _settings()
    assert (d.lr, d.batch_size, d.epochs, d.schedule, d.milestones) == (30.0, 256, 100, "multistep", (60, 80))


def test_classifier_is_default_linear_then_affine_bn():
    from fastairl.linear_eval import LinearClassifier
    torch.manual_seed(7)
    head = LinearClassifier(64, 10, bn=True)
    torch.manual_seed(7)
    ref = torch.nn.Linear(64, 10)  # PyTorch's default init, drawn the same way
    assert torch.equal(head.linear.weight, ref.weight) and torch.equal(head.linear.bias, ref.bias)
    assert isinstance(head.bn, torch.nn.BatchNorm1d) and head.bn.num_features == 10 and head.bn.affine
    head.train()
    f = torch.randn(16, 64)
    out = head(f)
    z = ref(f)
    want = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + head.bn.eps)  # BN of the logits
    assert torch.allclose(out, want, atol=1e-5)
    assert set(LinearClassifier(64, 10).state_dict()) == {"linear.weight", "linear.bias"}


def test_old_bn_before_linear_checkpoint_is_refused_clearly(tmp_path):
    from fastairl.engine import UserError
    from fastairl.linear_eval import check_head_layout
    old = {"bn": True, "classifier": {"bn.running_mean": torch.zeros(64), "bn.running_var": torch.ones(64),
                                      "bn.num_batches_tracked": torch.tensor(0), "linear.weight": torch.zeros(10, 64),
                                      "linear.bias": torch.zeros(10)}}
    with pytest.raises(UserError, match=r"old\.pth.*older fastairl.*BN after the Linear.*new run"):
        check_head_layout(old, tmp_path / "old.pth")
    check_head_layout({"bn": False, "classifier": {"linear.weight": torch.zeros(10, 64)}}, tmp_path / "a.pth")
