"""Transfer tools: backbone extraction, detectron2 conversion, NormRescale, torchvision export.

Checkpoints here are built in the reference layout (``module.online_encoder.*``,
``module.target_encoder.*``, queue, an ``fc.0..fc.7`` projector+predictor in the
online encoder, probe classifier) from real torchvision ResNets with random weights,
so every tensor is distinct and a mix-up of keys or encoders shows as a value
mismatch. The CLIs run as real subprocesses, as a user would run them.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from fastairl import convert_detectron2, export_backbone, norm_rescale
from fastairl.backbone_io import (
    CheckpointError,
    atomic_pickle,
    atomic_save,
    available_encoders,
    detect_arch,
    extract_backbone,
    load_checkpoint,
    model_state,
)

REPO = Path(__file__).resolve().parents[1]
BN = ("weight", "bias", "running_mean", "running_var")


# ----------------------------------------------------------------------------- helpers


def random_resnet(arch: str, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A torchvision ResNet whose every floating tensor (BN buffers included) is random."""
    model = getattr(torchvision.models, arch)(weights=None)
    gen = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            new[k] = torch.full_like(v, seed + 7)
        elif k.endswith("running_var"):
            new[k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            new[k] = torch.randn(v.shape, generator=gen) * 0.1
    model.load_state_dict(new)
    model.eval()
    return model, new


def _bn(prefix: str, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.randn(n, generator=gen),
        f"{prefix}.bias": torch.randn(n, generator=gen),
        f"{prefix}.running_mean": torch.randn(n, generator=gen),
        f"{prefix}.running_var": torch.rand(n, generator=gen) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(11),
    }


def mocov2p_heads(feat: int, seed: int, hidden: int = 24, out: int = 8) -> tuple[dict, dict]:
    """Projector+predictor (online: fc.0..fc.7) and projector (target: fc.0..fc.3), small dims."""
    g = torch.Generator().manual_seed(seed)
    proj = {"fc.0.weight": torch.randn(hidden, feat, generator=g), "fc.0.bias": torch.randn(hidden, generator=g)}
    proj |= _bn("fc.1", hidden, g)
    proj |= {"fc.3.weight": torch.randn(out, hidden, generator=g), "fc.3.bias": torch.randn(out, generator=g)}
    pred = {"fc.4.weight": torch.randn(hidden, out, generator=g), "fc.4.bias": torch.randn(hidden, generator=g)}
    pred |= _bn("fc.5", hidden, g)
    pred |= {"fc.7.weight": torch.randn(out, hidden, generator=g), "fc.7.bias": torch.randn(out, generator=g)}
    target_proj = {k: v + 1.0 if v.is_floating_point() else v for k, v in proj.items()}
    return proj | pred, target_proj


def pretrain_checkpoint(online: dict, target: dict, feat: int, prefix: str = "module.", wrapper: bool = True,
                        queue: bool = True) -> dict:
    """A checkpoint in the reference pre-training layout (moco_v2p key structure)."""
    on_head, tg_head = mocov2p_heads(feat, seed=5)
    model: dict[str, torch.Tensor] = {}
    if queue:
        model[f"{prefix}queue"] = torch.randn(32, 8)
        model[f"{prefix}queue_ptr"] = torch.tensor([4])
    model |= {f"{prefix}online_encoder.{k}": v for k, v in (online | on_head).items()}
    model |= {f"{prefix}target_encoder.{k}": v for k, v in (target | tg_head).items()}
    if not wrapper:
        return model
    return {
        "start_epoch": 3,
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]},
        "classifier": {f"{prefix}weight": torch.randn(10, feat), f"{prefix}bias": torch.zeros(10)},
        "optimizer_cls": {"state": {}, "param_groups": [{"lr": 30.0, "params": [0, 1]}]},
    }


def supervised_checkpoint(sd: dict, prefix: str = "module.") -> dict:
    g = torch.Generator().manual_seed(9)
    feat = sd["fc.weight"].shape[1]
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    body |= {"fc.0.weight": torch.randn(10, feat, generator=g), "fc.0.bias": torch.randn(10, generator=g)}
    return {"model": {prefix + k: v for k, v in body.items()}}


def without_fc(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def expected_detectron2_names(blocks: tuple[int, ...], bottleneck: bool) -> dict[str, str]:
    """detectron2 ResNet name -> torchvision name, written from detectron2's documented naming.

    stem: stem.conv1 (+ .norm); stage resN (N = 2..5) is torchvision layer(N-1); each
    block has conv1..conv3 (bottleneck) or conv1..conv2 (basic), each with a .norm; the
    first block of a stage with a projection has shortcut (+ .norm). torchvision's
    basic-block ResNets have no projection in the first stage.
    """
    names = {"stem.conv1.weight": "conv1.weight"}
    names |= {f"stem.conv1.norm.{p}": f"bn1.{p}" for p in BN}
    convs = 3 if bottleneck else 2
    for stage, count in zip((2, 3, 4, 5), blocks):
        layer = stage - 1
        for b in range(count):
            for k in range(1, convs + 1):
                names[f"res{stage}.{b}.conv{k}.weight"] = f"layer{layer}.{b}.conv{k}.weight"
                names |= {f"res{stage}.{b}.conv{k}.norm.{p}": f"layer{layer}.{b}.bn{k}.{p}" for p in BN}
        if bottleneck or stage > 2:
            names[f"res{stage}.0.shortcut.weight"] = f"layer{layer}.0.downsample.0.weight"
            names |= {f"res{stage}.0.shortcut.norm.{p}": f"layer{layer}.0.downsample.1.{p}" for p in BN}
    return names


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def r50():
    online_model, online = random_resnet("resnet50", seed=1)
    _, target = random_resnet("resnet50", seed=2)
    return online_model, online, target


@pytest.fixture(scope="module")
def r18():
    online_model, online = random_resnet("resnet18", seed=3)
    _, target = random_resnet("resnet18", seed=4)
    return online_model, online, target


@pytest.fixture(scope="module")
def r50_ckpt(r50, tmp_path_factory) -> Path:
    _, online, target = r50
    path = tmp_path_factory.mktemp("r50") / "moco_v2p_r50.pth.tar"
    torch.save(pretrain_checkpoint(without_fc(online), without_fc(target), feat=2048), path)
    return path


@pytest.fixture(scope="module")
def r18_ckpt(r18, tmp_path_factory) -> Path:
    _, online, target = r18
    path = tmp_path_factory.mktemp("r18") / "byol_r18.pth"
    torch.save(pretrain_checkpoint(without_fc(online), without_fc(target), feat=512), path)
    return path


# ----------------------------------------------------------------------------- backbone_io


def test_extract_backbone_handles_every_checkpoint_shape(r18):
    _, online, target = r18
    tv = without_fc(online)
    variants = {
        "ddp, wrapped": pretrain_checkpoint(tv, without_fc(target), 512),
        "no module prefix": pretrain_checkpoint(tv, without_fc(target), 512, prefix=""),
        "bare state_dict": pretrain_checkpoint(tv, without_fc(target), 512, wrapper=False),
        "no queue (BYOL)": pretrain_checkpoint(tv, without_fc(target), 512, queue=False),
    }
    for name, ckpt in variants.items():
        state = model_state(ckpt)
        assert available_encoders(state) == ["online", "target"], name
        for encoder, source in (("online", online), ("target", target), ("auto", online)):
            got = extract_backbone(state, encoder)
            assert set(got) == set(without_fc(source)), (name, encoder)
            assert all(torch.equal(got[k], source[k]) for k in got), (name, encoder)

    for name, ckpt in {"supervised": supervised_checkpoint(online), "supervised, no prefix":
                       supervised_checkpoint(online, prefix=""), "torchvision": dict(online)}.items():
        state = model_state(ckpt)
        for encoder in ("supervised", "auto"):
            got = extract_backbone(state, encoder)
            assert set(got) == set(tv), name
            assert all(torch.equal(got[k], online[k]) for k in got), name
        with pytest.raises(CheckpointError, match="encoders present: supervised"):
            extract_backbone(state, "online")


def test_model_state_and_extract_errors_are_clear():
    with pytest.raises(CheckpointError, match="start_epoch"):
        model_state({"start_epoch": 1, "note": "no weights here"})
    with pytest.raises(CheckpointError, match="encoders present: none"):
        extract_backbone({"queue": torch.zeros(2, 2)}, "auto")
    with pytest.raises(CheckpointError, match="unknown encoder 'momentum'"):
        extract_backbone({"conv1.weight": torch.zeros(1)}, "momentum")


def test_detect_arch_from_shapes():
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2"):
        with torch.device("meta"):  # shapes only, no weight initialisation cost
            sd = getattr(torchvision.models, arch)().state_dict()
        assert detect_arch(sd) == arch
    with torch.device("meta"):
        sd = torchvision.models.resnet18().state_dict()
    broken = {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}
    with pytest.raises(CheckpointError, match=r"\[2, 2, 2, 1\]"):
        detect_arch(broken)


def test_load_checkpoint_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 20)
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pth"
    torch.save({"model": {"w": torch.randn(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(truncated)
    # Old checkpoints carry harmless objects (here the training args) that the safe
    # loader refuses; they must still load (via the logged fallback).
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {"conv1.weight": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, legacy)
    got = load_checkpoint(legacy)
    assert got["args"].lr == 0.1 and torch.equal(got["model"]["conv1.weight"], torch.ones(2))


def test_atomic_writers_never_clobber(tmp_path):
    target = tmp_path / "sub" / "out.pth"
    atomic_save({"a": torch.arange(3)}, target)
    with pytest.raises(FileExistsError, match=r"out\.pth.*--overwrite"):
        atomic_save({"a": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target)["a"], torch.arange(3))
    atomic_save({"a": torch.ones(3)}, target, overwrite=True)
    assert torch.equal(torch.load(target)["a"], torch.ones(3))

    pkl = tmp_path / "w.pkl"
    atomic_pickle({"model": {"x": np.arange(4)}}, pkl)
    with pytest.raises(FileExistsError, match=r"w\.pkl.*--overwrite"):
        atomic_pickle({"model": {}}, pkl)
    with open(pkl, "rb") as f:
        assert np.array_equal(pickle.load(f)["model"]["x"], np.arange(4))
    # No temp files left behind by successes or refusals.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["out.pth", "w.pkl"]


# ----------------------------------------------------------------------------- detectron2 conversion


def test_convert_r50_cli_gives_detectron2_r50_names_and_values(r50, r50_ckpt, tmp_path):
    _, online, _ = r50
    out = tmp_path / "r50.pkl"
    proc = run_cli("-m", "fastairl.convert_detectron2", str(r50_ckpt), str(out), "--encoder", "online")
    assert proc.returncode == 0, proc.stderr
    assert "unconverted keys: none" in proc.stdout
    assert "det/ configs" not in proc.stderr + proc.stdout  # an R50 is what they are for: no warning
    with open(out, "rb") as f:
        data = pickle.load(f, encoding="latin1")  # how detectron2 reads it
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    expected = expected_detectron2_names((3, 4, 6, 3), bottleneck=True)
    assert len(expected) == 5 + 16 * 3 * 5 + 4 * 5  # stem + 16 bottlenecks x 3 convs + 4 shortcuts
    assert set(data["model"]) == set(expected)
    for d2, tv in expected.items():
        arr = data["model"][d2]
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, d2
        assert np.array_equal(arr, online[tv].numpy()), (d2, tv)


def test_convert_target_supervised_and_resnet18(r18, r18_ckpt, tmp_path, capsys):
    _, online, target = r18
    expected = expected_detectron2_names((2, 2, 2, 2), bottleneck=False)
    assert len(expected) == 5 + 8 * 2 * 5 + 3 * 5

    out = tmp_path / "target.pkl"
    proc = run_cli("-m", "fastairl.convert_detectron2", str(r18_ckpt), str(out), "--encoder", "target")
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        model = pickle.load(f)["model"]
    assert set(model) == set(expected)
    assert all(np.array_equal(model[d2], target[tv].numpy()) for d2, tv in expected.items())

    sup = tmp_path / "sup.pth"
    torch.save(supervised_checkpoint(online), sup)
    out2 = tmp_path / "sup.pkl"
    assert convert_detectron2.main([str(sup), str(out2), "--encoder", "supervised"]) == 0
    with open(out2, "rb") as f:
        model = pickle.load(f)["model"]
    assert set(model) == set(expected)
    assert all(np.array_equal(model[d2], online[tv].numpy()) for d2, tv in expected.items())

    # Asking for an encoder the checkpoint lacks names the ones it has.
    assert convert_detectron2.main([str(sup), str(tmp_path / "x.pkl"), "--encoder", "target"]) == 2
    assert "encoders present: supervised" in capsys.readouterr().err
    # detectron2 only reads .pkl weight files.
    assert convert_detectron2.main([str(sup), str(tmp_path / "x.pth")]) == 2
    assert "must end in .pkl" in capsys.readouterr().err
    assert not (tmp_path / "x.pkl").exists() and not (tmp_path / "x.pth").exists()


def test_convert_non_r50_warns_in_one_line_that_det_configs_are_r50(r18_ckpt, tmp_path):
    """Issue 16: every det/ config builds a ResNet-50, so a ResNet-18 pickle gets one warning line."""
    proc = run_cli("-m", "fastairl.convert_detectron2", str(r18_ckpt), str(tmp_path / "r18.pkl"))
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "det/ configs" in ln]
    assert len(warn) == 1, proc.stderr
    assert warn[0].startswith("fastairl: warning:") and "resnet18" in warn[0] and "ResNet-50" in warn[0], warn[0]
    assert (tmp_path / "r18.pkl").is_file()  # a warning, not a refusal


def test_convert_reports_unconverted_keys():
    converted, unconverted = convert_detectron2.convert(
        {"conv1.weight": torch.ones(2), "bn1.num_batches_tracked": torch.tensor(3), "extra.proj.weight": torch.ones(1)}
    )
    assert set(converted) == {"stem.conv1.weight"}
    assert unconverted == ["extra.proj.weight"]


def test_convert_cli_refuses_to_overwrite(r18_ckpt, tmp_path):
    out = tmp_path / "exists.pkl"
    out.write_bytes(b"precious")
    proc = run_cli("-m", "fastairl.convert_detectron2", str(r18_ckpt), str(out))
    assert_clean_error(proc, str(out), "--overwrite")
    assert out.read_bytes() == b"precious"
    assert convert_detectron2.main([str(r18_ckpt), str(out), "--overwrite"]) == 0
    with open(out, "rb") as f:
        assert "stem.conv1.weight" in pickle.load(f)["model"]


def test_convert_cli_bad_input_paths(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    proc = run_cli("-m", "fastairl.convert_detectron2", str(missing), str(tmp_path / "o.pkl"))
    assert_clean_error(proc, str(missing))
    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"\x00\x01 definitely not torch" * 50)
    assert convert_detectron2.main([str(corrupt), str(tmp_path / "o.pkl")]) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pkl").exists()


# ----------------------------------------------------------------------------- NormRescale


def _unit(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    return t / torch.linalg.vector_norm(t)


def test_norm_rescale_torch_checkpoints(r18, tmp_path):
    _, online_b, target_b = r18
    _, online_a = random_resnet("resnet18", seed=21)
    # A: bare state dict without "module." (another wrapper than B on purpose).
    ckpt_a = pretrain_checkpoint(without_fc(online_a), without_fc(online_a), 512, prefix="", wrapper=False)
    for k, v in ckpt_a.items():  # make A's head differ from B's too
        if v.is_floating_point():
            ckpt_a[k] = v * 3.0 + 0.5
    ckpt_b = pretrain_checkpoint(without_fc(online_b), without_fc(target_b), 512)
    zero_key = "module.online_encoder.layer1.0.bn1.bias"
    ckpt_b["model"][zero_key] = torch.zeros(64)
    pa, pb, pc = tmp_path / "A.pth", tmp_path / "B.pth.tar", tmp_path / "C.pth"
    torch.save(ckpt_a, pa)
    torch.save(ckpt_b, pb)

    proc = run_cli("-m", "fastairl.norm_rescale", "--norm-from", str(pa), "--weights-from", str(pb), "--out", str(pc))
    assert proc.returncode == 0, proc.stderr
    assert zero_key in proc.stdout  # the all-zero tensor is reported
    out = torch.load(pc, weights_only=True)
    assert set(out) == set(ckpt_b) and out["start_epoch"] == ckpt_b["start_epoch"]
    assert torch.equal(out["classifier"]["module.weight"], ckpt_b["classifier"]["module.weight"])
    assert set(out["model"]) == set(ckpt_b["model"])
    checked = 0
    for key, w_b in ckpt_b["model"].items():
        w_c = out["model"][key]
        if key.startswith("module.online_encoder.") and w_b.is_floating_point() and key != zero_key:
            w_a = ckpt_a[key[len("module."):]]
            assert w_c.dtype == w_b.dtype and w_c.shape == w_b.shape
            torch.testing.assert_close(torch.linalg.vector_norm(w_c.double()),
                                       torch.linalg.vector_norm(w_a.double()), rtol=1e-5, atol=0)
            torch.testing.assert_close(_unit(w_c), _unit(w_b), rtol=0, atol=1e-6)
            checked += 1
        else:  # target encoder, queue, integer buffers, zero tensor: untouched
            assert torch.equal(w_c, w_b), key
    assert checked == sum(1 for k, v in ckpt_b["model"].items()
                          if k.startswith("module.online_encoder.") and v.is_floating_point()) - 1
    assert checked > 100  # backbone and fc.0..fc.7 head


def test_norm_rescale_detectron2_pickles(r18, tmp_path, capsys):
    _, online_b, _ = r18
    _, online_a = random_resnet("resnet18", seed=22)
    conv_a, _ = convert_detectron2.convert(without_fc(online_a))
    conv_b, _ = convert_detectron2.convert(without_fc(online_b))
    pa, pb, pc = tmp_path / "A.pkl", tmp_path / "B.pkl", tmp_path / "C.pkl"
    atomic_pickle(convert_detectron2.to_detectron2_pickle(conv_a), pa)
    atomic_pickle(convert_detectron2.to_detectron2_pickle(conv_b), pb)

    proc = run_cli("-m", "fastairl.norm_rescale", "--norm-from", str(pa), "--weights-from", str(pb), "--out", str(pc))
    assert proc.returncode == 0, proc.stderr
    with open(pc, "rb") as f:
        out = pickle.load(f, encoding="latin1")
    assert out["__author__"] == "torchvision" and out["matching_heuristics"] is True
    assert set(out["model"]) == set(conv_b)
    for key, w_b in conv_b.items():
        w_c = out["model"][key]
        assert isinstance(w_c, np.ndarray) and w_c.dtype == w_b.dtype and w_c.shape == w_b.shape
        np.testing.assert_allclose(np.linalg.norm(w_c.astype(np.float64)),
                                   np.linalg.norm(conv_a[key].astype(np.float64)), rtol=1e-5)
        unit_b = w_b.astype(np.float64) / np.linalg.norm(w_b.astype(np.float64))
        unit_c = w_c.astype(np.float64) / np.linalg.norm(w_c.astype(np.float64))
        np.testing.assert_allclose(unit_c, unit_b, atol=1e-6)

    # Refuses to overwrite C.
    before = pc.read_bytes()
    assert norm_rescale.main(["--norm-from", str(pa), "--weights-from", str(pb), "--out", str(pc)]) == 2
    err = capsys.readouterr().err
    assert str(pc) in err and "--overwrite" in err
    assert pc.read_bytes() == before


def test_norm_rescale_errors_name_the_key(r18, tmp_path, capsys):
    _, online, target = r18
    base = pretrain_checkpoint(without_fc(online), without_fc(target), 512)
    pb = tmp_path / "B.pth"
    torch.save(base, pb)

    missing_key = "module.online_encoder.layer2.1.conv2.weight"
    lacking = {**base, "model": {k: v for k, v in base["model"].items() if k != missing_key}}
    pa = tmp_path / "A_missing.pth"
    torch.save(lacking, pa)
    proc = run_cli("-m", "fastairl.norm_rescale", "--norm-from", str(pa), "--weights-from", str(pb),
                   "--out", str(tmp_path / "C.pth"))
    assert_clean_error(proc, missing_key)

    bad_key = "module.online_encoder.conv1.weight"
    reshaped = {**base, "model": {**base["model"], bad_key: torch.randn(32, 3, 7, 7)}}
    pa2 = tmp_path / "A_shape.pth"
    torch.save(reshaped, pa2)
    code = norm_rescale.main(["--norm-from", str(pa2), "--weights-from", str(pb), "--out", str(tmp_path / "C.pth")])
    err = capsys.readouterr().err
    assert code == 2 and bad_key in err and "[64, 3, 7, 7]" in err and "[32, 3, 7, 7]" in err

    # Mixing a torch checkpoint with a detectron2 pickle, and a missing input.
    pkl = tmp_path / "d2.pkl"
    atomic_pickle({"model": {"stem.conv1.weight": np.ones(3, np.float32)}}, pkl)
    assert norm_rescale.main(["--norm-from", str(pkl), "--weights-from", str(pb), "--out", str(tmp_path / "C.pth")]) == 2
    assert "both" in capsys.readouterr().err
    gone = tmp_path / "gone.pth"
    assert norm_rescale.main(["--norm-from", str(gone), "--weights-from", str(pb), "--out", str(tmp_path / "C.pth")]) == 2
    assert str(gone) in capsys.readouterr().err
    assert not (tmp_path / "C.pth").exists()


# ----------------------------------------------------------------------------- torchvision export


def test_export_r50_loads_into_torchvision_and_matches(r50, r50_ckpt, tmp_path):
    online_model, _, _ = r50
    out = tmp_path / "r50_backbone.pth"
    proc = run_cli("-m", "fastairl.export_backbone", str(r50_ckpt), str(out))
    assert proc.returncode == 0, proc.stderr
    assert "resnet50" in proc.stdout
    sd = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in sd)
    fresh = torchvision.models.resnet50(weights=None)
    result = fresh.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    fresh.fc.load_state_dict(online_model.fc.state_dict())
    fresh.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh(x), online_model(x))


def test_export_resnet18_supervised_and_target(r18, r18_ckpt, tmp_path):
    online_model, online, target = r18
    sup = tmp_path / "sup.pth"
    torch.save(supervised_checkpoint(online), sup)
    out = tmp_path / "r18.pth"
    assert export_backbone.main([str(sup), str(out), "--encoder", "supervised"]) == 0
    fresh = torchvision.models.resnet18(weights=None)
    result = fresh.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    fresh.fc.load_state_dict(online_model.fc.state_dict())
    fresh.eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh(x), online_model(x))

    out_t = tmp_path / "r18_target.pth"
    assert export_backbone.main([str(r18_ckpt), str(out_t), "--encoder", "target"]) == 0
    got = torch.load(out_t, weights_only=True)
    assert set(got) == set(without_fc(target))
    assert all(torch.equal(got[k], target[k]) for k in got)
    # Refuses to overwrite without the flag.
    assert export_backbone.main([str(r18_ckpt), str(out_t), "--encoder", "online"]) == 2
    assert torch.equal(torch.load(out_t, weights_only=True)["conv1.weight"], target["conv1.weight"])


def test_export_cli_bad_inputs(r18, tmp_path):
    _, online, _ = r18
    missing = tmp_path / "missing.pth.tar"
    proc = run_cli("-m", "fastairl.export_backbone", str(missing), str(tmp_path / "o.pth"))
    assert_clean_error(proc, str(missing))
    # A ResNet with a block missing is not a torchvision architecture: refused before writing.
    broken = {k: v for k, v in online.items() if not k.startswith("layer3.1.")}
    pb = tmp_path / "broken.pth"
    torch.save(broken, pb)
    assert export_backbone.main([str(pb), str(tmp_path / "o.pth"), "--encoder", "auto"]) == 2
    assert not (tmp_path / "o.pth").exists()


# ----------------------------------------------------------------------------- det/ configs and script

# Config keys of detectron2 (detectron2/config/defaults.py) plus those added by the
# DeepLab project's add_deeplab_config, restricted to the sections the configs use.
# A key outside this list would make detectron2 stop with "Non-existent config key".
DETECTRON2_KEYS = {
    "VERSION", "OUTPUT_DIR", "SEED", "CUDNN_BENCHMARK",
    "MODEL.META_ARCHITECTURE", "MODEL.WEIGHTS", "MODEL.MASK_ON", "MODEL.KEYPOINT_ON", "MODEL.DEVICE",
    "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.LOAD_PROPOSALS",
    "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.FREEZE_AT",
    "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.OUT_FEATURES", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.NORM",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.RES5_DILATION",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.RES4_DILATION", "MODEL.RESNETS.RES5_MULTI_GRID", "MODEL.RESNETS.STEM_TYPE",
    "MODEL.FPN.IN_FEATURES", "MODEL.FPN.OUT_CHANNELS", "MODEL.FPN.NORM", "MODEL.FPN.FUSE_TYPE",
    "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
    "MODEL.RPN.IN_FEATURES", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.RPN.NMS_THRESH",
    "MODEL.ROI_HEADS.NAME", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.IN_FEATURES",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_BOX_HEAD.NAME", "MODEL.ROI_BOX_HEAD.NUM_FC", "MODEL.ROI_BOX_HEAD.NUM_CONV",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_BOX_HEAD.CONV_DIM", "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
    "MODEL.ROI_MASK_HEAD.NAME", "MODEL.ROI_MASK_HEAD.NUM_CONV", "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "MODEL.ROI_MASK_HEAD.NORM", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION",
    "MODEL.SEM_SEG_HEAD.NAME", "MODEL.SEM_SEG_HEAD.IN_FEATURES", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "MODEL.SEM_SEG_HEAD.COMMON_STRIDE",
    "MODEL.SEM_SEG_HEAD.NORM", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "MODEL.SEM_SEG_HEAD.LOSS_TYPE",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT",
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES", "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS",
    "INPUT.FORMAT", "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.RANDOM_FLIP", "INPUT.MASK_FORMAT",
    "INPUT.CROP.ENABLED", "INPUT.CROP.TYPE", "INPUT.CROP.SIZE", "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA",
    "DATASETS.TRAIN", "DATASETS.TEST",
    "DATALOADER.NUM_WORKERS", "DATALOADER.ASPECT_RATIO_GROUPING", "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "SOLVER.LR_SCHEDULER_NAME", "SOLVER.MAX_ITER", "SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY",
    "SOLVER.GAMMA", "SOLVER.STEPS", "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_METHOD",
    "SOLVER.CHECKPOINT_PERIOD", "SOLVER.IMS_PER_BATCH", "SOLVER.POLY_LR_POWER", "SOLVER.POLY_LR_CONSTANT_ENDING",
    "TEST.EVAL_PERIOD", "TEST.DETECTIONS_PER_IMAGE", "TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER",
}

CONFIGS = {
    "pascal_voc_R_50_C4_24k_moco.yaml": "c4",
    "coco_R_50_C4_1x_moco.yaml": "c4",
    "coco_R_50_C4_1x_10pct_moco.yaml": "c4",
    "coco_R_50_FPN_1x_moco.yaml": "fpn",
    "cityscapes_deeplab_v3_R_50_OS16_90k_moco.yaml": "deeplab",
    "pascal_voc07_R_50_C4_9k_moco.yaml": "c4",
    "pascal_voc_R_50_FPN_24k_moco.yaml": "fpn",
    "coco_R_50_C4_partial_45k_moco.yaml": "c4",
    "coco_R_50_FPN_partial_45k_moco.yaml": "fpn",
}


def _load_merged(path: Path, yaml) -> dict:
    """Resolve ``_BASE_`` chains the way detectron2 does: base first, file on top."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    base = cfg.pop("_BASE_", None)
    if base is None:
        return cfg
    merged = _load_merged(path.parent / base, yaml)

    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(merged, cfg)
    return merged


def _flatten(cfg: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def test_detectron2_configs_are_consistent():
    yaml = pytest.importorskip("yaml")
    for name, kind in CONFIGS.items():
        flat = _flatten(_load_merged(REPO / "det" / name, yaml))
        unknown = sorted(set(flat) - DETECTRON2_KEYS)
        assert not unknown, (name, unknown)
        assert flat["INPUT.FORMAT"] == "RGB", name
        assert flat["MODEL.PIXEL_MEAN"] == [123.675, 116.280, 103.530], name
        assert flat["MODEL.PIXEL_STD"] == [58.395, 57.120, 57.375], name
        assert flat["MODEL.RESNETS.STRIDE_IN_1X1"] is False, name
        assert flat["MODEL.RESNETS.NORM"] == "SyncBN", name
        assert flat["MODEL.RESNETS.DEPTH"] == 50, name
        assert flat["MODEL.WEIGHTS"] == "", name  # the converted backbone comes from the command line
        if kind == "c4":
            assert flat["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeadsExtraNorm", name
        if kind == "deeplab":
            assert flat["MODEL.SEM_SEG_HEAD.NAME"] == "DeepLabV3Head"
            assert flat["MODEL.RESNETS.STEM_TYPE"] == "basic"  # the torchvision stem the backbone has
        steps, max_iter = flat.get("SOLVER.STEPS", []), flat["SOLVER.MAX_ITER"]
        assert all(0 < s < max_iter for s in steps), name
    voc = _flatten(_load_merged(REPO / "det" / "pascal_voc_R_50_C4_24k_moco.yaml", yaml))
    assert voc["SOLVER.MAX_ITER"] == 24000 and voc["MODEL.ROI_HEADS.NUM_CLASSES"] == 20
    assert voc["DATASETS.TRAIN"] == ["voc_2007_trainval", "voc_2012_trainval"]
    partial = _flatten(_load_merged(REPO / "det" / "coco_R_50_C4_1x_10pct_moco.yaml", yaml))
    assert partial["DATASETS.TRAIN"] == ["coco_2017_train_10pct"] and partial["MODEL.MASK_ON"] is True


def test_detectron2_configs_are_the_reference_transfer_set():
    """REFERENCE.md's transfer configs: schedules, data and the DeepLab head settings."""
    yaml = pytest.importorskip("yaml", reason="pyyaml reads the det/ configs")

    def cfg(name):
        return _flatten(_load_merged(REPO / "det" / name, yaml))

    voc07 = cfg("pascal_voc07_R_50_C4_9k_moco.yaml")
    assert (voc07["SOLVER.MAX_ITER"], voc07["DATASETS.TRAIN"], voc07["MODEL.ROI_HEADS.NUM_CLASSES"]) == \
        (9000, ["voc_2007_trainval"], 20)
    fpn = cfg("pascal_voc_R_50_FPN_24k_moco.yaml")
    assert fpn["SOLVER.MAX_ITER"] == 24000 and fpn["MODEL.BACKBONE.NAME"] == "build_resnet_fpn_backbone"
    assert fpn["DATASETS.TRAIN"] == ["voc_2007_trainval", "voc_2012_trainval"] and fpn["MODEL.MASK_ON"] is False
    for name, backbone in (("coco_R_50_C4_partial_45k_moco.yaml", "build_resnet_backbone"),
                           ("coco_R_50_FPN_partial_45k_moco.yaml", "build_resnet_fpn_backbone")):
        c = cfg(name)
        assert c["DATASETS.TRAIN"] == ["coco_2017_train"], name  # the full train set, shorter schedule
        assert (c["SOLVER.MAX_ITER"], c["SOLVER.STEPS"]) == (45000, [30000, 40000]), name
        assert c["MODEL.BACKBONE.NAME"] == backbone and c["MODEL.MASK_ON"] is True, name
    seg = cfg("cityscapes_deeplab_v3_R_50_OS16_90k_moco.yaml")
    assert seg["MODEL.SEM_SEG_HEAD.ASPP_DROPOUT"] == 0.0 and seg["TEST.PRECISE_BN.ENABLED"] is True


def test_detectron2_loads_every_config():
    pytest.importorskip("detectron2", reason="detectron2 (built from source, det/README.md) is not installed")
    from detectron2.config import get_cfg
    for name, kind in CONFIGS.items():
        c = get_cfg()
        if kind == "deeplab":
            deeplab = pytest.importorskip("detectron2.projects.deeplab",
                                          reason="detectron2's DeepLab project is not installed")
            deeplab.add_deeplab_config(c)
        c.merge_from_file(str(REPO / "det" / name))
        assert c.MODEL.PIXEL_MEAN == [123.675, 116.280, 103.530], name
        if name.startswith("coco_R_50") and "partial" in name:
            assert c.SOLVER.MAX_ITER == 45000 and tuple(c.SOLVER.STEPS) == (30000, 40000)
        if kind == "deeplab":
            assert c.MODEL.SEM_SEG_HEAD.ASPP_DROPOUT == 0.0 and c.TEST.PRECISE_BN.ENABLED


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None,
                    reason="detectron2 is installed, so the missing-detectron2 message cannot be shown")
def test_train_net_without_detectron2_says_how_to_install():
    proc = run_cli("det/train_net.py", "--config-file", "det/pascal_voc_R_50_C4_24k_moco.yaml")
    assert_clean_error(proc, "detectron2", "from source")
    assert len(proc.stderr.strip().splitlines()) == 1
