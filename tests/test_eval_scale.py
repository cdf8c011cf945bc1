"""Issue 16 item 3: the evaluation tools at demo scale.

``linear_eval``, ``knn`` and ``preview`` take the image size (and arch, and kNN k) of a
checkpoint from the config stored in it, say where each value came from, and run a
demo-sized linear-eval schedule on ``--data demo``; explicit flags win, and a reference
checkpoint (no stored config) keeps the protocol's 224 px. Everything here is tiny: a
ResNet-18 checkpoint written directly (no training) and a 2-class folder of 48 px JPEGs,
so the two end-to-end runs take seconds.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FASTAIRL_CACHE", str(REPO / ".cache" / "fastairl"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

from fastairl import eval_scale  # noqa: E402
from fastairl.config import DEMO_SCALE, LINEAR_EVAL_DEMO_SCALE, apply_overrides, load_experiment  # noqa: E402

SIZE = 40  # the tiny checkpoint's training size: neither 64 (demo) nor 224 (protocol)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _save_ckpt(path: Path, with_config: bool, **overrides) -> Path:
    """A pre-training checkpoint in the layout the trainer writes (reference keys + a
    ``fastairl`` entry with the config), optionally without that entry (a reference one)."""
    from fastairl.checkpoint import add_prefix
    from fastairl.methods import build_method
    sets = [f"{k}={v}" for k, v in {"arch": "resnet18", "image_size": SIZE, "hidden_dim": 32, "dim": 16,
                                     "queue_size": 32, "knn_k": 3, **overrides}.items()]
    cfg = apply_overrides(load_experiment("moco_v2p"), sets)
    torch.manual_seed(0)
    model = build_method(cfg, "cpu", 2)
    ck = {"start_epoch": 1, "model": add_prefix(model.layout_state_dict()), "optimizer": {}}
    if with_config:
        ck["fastairl"] = {"step": 1, "config": cfg.to_dict()}
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return _save_ckpt(tmp_path_factory.mktemp("ck") / "last.pth", True)


@pytest.fixture(scope="module")
def reference_ckpt(tmp_path_factory) -> Path:
    return _save_ckpt(tmp_path_factory.mktemp("ref") / "ref.pth.tar", False)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """2 classes x 4 train / 2 val real JPEGs, 48 px, one flat colour per class."""
    from PIL import Image
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for ci, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        for split, n in (("train", 4), ("val", 2)):
            d = root / split / f"c{ci}"
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(np.array(colour) + rng.integers(-20, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.jpg", quality=90)
    return root


def _args(tool: str, *argv: str):
    if tool == "knn":
        from fastairl.knn import build_parser
    else:
        from fastairl.linear_eval import build_parser
    return build_parser().parse_args(list(argv))


def _messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- where values come from
@pytest.mark.parametrize("tool", ["knn", "linear_eval"])
def test_checkpoint_config_gives_size_and_k_and_says_so(tool, tiny_ckpt, tiny_data, caplog):
    args = _args(tool, "--ckpt", str(tiny_ckpt), "--data", str(tiny_data))
    with caplog.at_level(logging.INFO, logger="fastairl"):
        cfg = eval_scale.prepare_eval_args(args, tool)
    assert cfg["image_size"] == SIZE and args.image_size == SIZE
    text = _messages(caplog)
    assert f"{tool}: image size {SIZE} px from the config stored in {tiny_ckpt}" in text
    if tool == "knn":
        assert args.k == 3 and f"knn: k 3 from the config stored in {tiny_ckpt}" in text
    else:  # not the demo data: the reference schedule stays
        assert (args.epochs, args.batch_size, args.lr) == (None, None, None)


def test_explicit_flags_win_over_the_checkpoint(tiny_ckpt, caplog):
    args = _args("knn", "--ckpt", str(tiny_ckpt), "--data", "demo", "--image-size", "96", "--k", "7")
    with caplog.at_level(logging.INFO, logger="fastairl"):
        eval_scale.prepare_eval_args(args, "knn")
    assert (args.image_size, args.k) == (96, 7)
    assert "knn: image size 96 px from --image-size" in _messages(caplog)


def test_reference_checkpoint_keeps_224_and_the_protocol_k(reference_ckpt, tiny_data, caplog):
    args = _args("knn", "--ckpt", str(reference_ckpt), "--data", str(tiny_data))
    with caplog.at_level(logging.INFO, logger="fastairl"):
        assert eval_scale.prepare_eval_args(args, "knn") is None
    assert (args.image_size, args.k) == (224, 200)
    assert "image size 224 px from the protocol's default" in _messages(caplog)


def test_demo_data_without_checkpoint_config_gets_demo_size_and_arch(caplog):
    args = _args("knn", "--random-init", "--data", "demo")
    with caplog.at_level(logging.INFO, logger="fastairl"):
        eval_scale.prepare_eval_args(args, "knn")
    assert (args.image_size, args.arch) == (DEMO_SCALE["image_size"], DEMO_SCALE["arch"])
    assert "knn: arch resnet18 from demo scale" in _messages(caplog)


def test_arch_is_reported_from_the_config_and_a_disagreement_warns(tiny_ckpt, caplog):
    args = _args("knn", "--ckpt", str(tiny_ckpt), "--data", "demo")
    with caplog.at_level(logging.INFO, logger="fastairl"):
        cfg = eval_scale.prepare_eval_args(args, "knn")
        enc, desc = eval_scale.load_eval_encoder(args, cfg, "knn")
        assert desc["arch"] == "resnet18"
        eval_scale.report_arch(desc, "auto", dict(cfg, arch="resnet50"), "knn")
    text = _messages(caplog)
    assert f"knn: arch resnet18 from the config stored in {tiny_ckpt} (its weights agree)" in text
    assert "says arch resnet50 but its weights are a resnet18" in text


# ----------------------------------------------------------------------------- the linear-eval demo schedule
def test_linear_eval_demo_data_gets_the_demo_schedule_unless_flags_say_otherwise(caplog):
    from fastairl.linear_eval import resolve_settings
    args = _args("linear_eval", "--random-init", "--data", "demo")
    with caplog.at_level(logging.INFO, logger="fastairl"):
        eval_scale.prepare_eval_args(args, "linear_eval")
    s = resolve_settings(args)
    d = LINEAR_EVAL_DEMO_SCALE
    assert (s.epochs, s.batch_size, s.lr, s.milestones, s.eval_every) == (
        d["epochs"], d["batch_size"], d["lr"], tuple(d["milestones"]), d["eval_every"])
    assert "is the demo dataset: demo-scale --epochs" in _messages(caplog)
    assert args.image_size == DEMO_SCALE["image_size"]

    args = _args("linear_eval", "--random-init", "--data", "demo", "--epochs", "3", "--lr", "2.5")
    eval_scale.prepare_eval_args(args, "linear_eval")
    s = resolve_settings(args)
    assert (s.epochs, s.lr, s.batch_size) == (3, 2.5, d["batch_size"])

    args = _args("linear_eval", "--random-init", "--data", "demo", "--large-norm-config")
    eval_scale.prepare_eval_args(args, "linear_eval")
    s = resolve_settings(args)  # the preset keeps its own lr rule and cosine schedule
    assert (s.epochs, s.batch_size, s.schedule) == (d["epochs"], d["batch_size"], "cosine")
    assert s.lr * s.batch_size / 256 == pytest.approx(0.2 * d["batch_size"] / 256)

    args = _args("linear_eval", "--random-init", "--data", "/data/in1k")
    eval_scale.prepare_eval_args(args, "linear_eval")
    s = resolve_settings(args)
    assert (s.epochs, s.batch_size, s.lr, args.image_size) == (100, 256, 30.0, 224)


def test_a_demo_folder_given_by_path_is_the_demo(tmp_path):
    from fastairl.data.cache import DONE_NAME
    from fastairl.data.demo import DEMO_KIND
    (tmp_path / DONE_NAME).write_text(json.dumps({"kind": DEMO_KIND}))
    assert eval_scale.is_demo(tmp_path) and eval_scale.is_demo("demo")
    assert not eval_scale.is_demo(tmp_path / "other") and not eval_scale.is_demo(None)


# ----------------------------------------------------------------------------- preview
def test_preview_ckpt_uses_the_stored_config(tiny_ckpt, reference_ckpt, caplog):
    from fastairl.preview import PreviewOptions, _resolve_settings
    with caplog.at_level(logging.INFO, logger="fastairl"):
        st = _resolve_settings(PreviewOptions(ckpt=str(tiny_ckpt), data="demo"))
    assert st["image_size"] == SIZE and st["recipe_name"] == load_experiment("moco_v2p").recipe
    assert f"preview: image size {SIZE} px from the config stored in {tiny_ckpt}" in _messages(caplog)
    assert _resolve_settings(PreviewOptions(ckpt=str(tiny_ckpt), image_size=72))["image_size"] == 72
    # --exp without --ckpt on the demo: demo scale, not the experiment's 224
    assert _resolve_settings(PreviewOptions(exp="moco_v2p", data="demo"))["image_size"] == DEMO_SCALE["image_size"]
    with pytest.raises(ValueError, match="no fastairl config stored"):
        _resolve_settings(PreviewOptions(ckpt=str(reference_ckpt)))


# ----------------------------------------------------------------------------- end to end
def test_knn_and_linear_eval_cli_on_a_demo_scale_checkpoint(tiny_ckpt, tiny_data, tmp_path):
    dev = ["--device", "cpu", "--workers", "0", "--no-channels-last"]
    knn = _run(["-m", "fastairl.knn", "--ckpt", str(tiny_ckpt), "--data", str(tiny_data), "--batch-size", "4"]
               + dev)
    assert f"image size {SIZE} px from the config stored in" in knn.stderr
    assert "kNN (k=3," in knn.stdout and "resnet18 online" in knn.stdout
    lin = _run(["-m", "fastairl.linear_eval", "--ckpt", str(tiny_ckpt), "--data", str(tiny_data),
                "--batch-size", "4", "--epochs", "1", "--output-dir", str(tmp_path), "--no-progress"] + dev)
    assert f"image size {SIZE} px from the config stored in" in lin.stderr
    ck = torch.load(next(tmp_path.glob("*/last.pth")), map_location="cpu", weights_only=False)
    recs = [json.loads(ln) for ln in next(tmp_path.glob("*/log.jsonl")).read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in recs if "loss" in r)
    assert ck["backbone"]["arch"] == "resnet18"
    assert json.loads(next(tmp_path.glob("*/args.json")).read_text())["image_size"] == SIZE
