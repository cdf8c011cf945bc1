"""The trainer as a user runs it: every experiment for 2 steps, torchrun, resume from a
reference-layout checkpoint, the run-folder rules and one-line errors for bad input."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import hidden_packages_env, run_cli, torchrun
from test_layout import LAYOUT_FILE, layout

SMALL = ["--set", "arch=resnet18", "--set", "image_size=64", "--set", "hidden_dim=64", "--set", "queue_size=64",
         "--batch-size", "8", "--workers", "1", "--device", "cpu", "--no-progress"]
EXPS = ["moco_v1", "moco_v2", "moco_v2p", "smoco_v2p", "moco_v2p_lars", "byol", "byol_lars", "supervised"]


def _train(exp, out, *extra):
    return run_cli(["fastairl/train.py", "--exp", exp, "--data", "demo", "--output-dir", str(out),
                    "--max-steps", "2", *SMALL, *extra])


@pytest.mark.parametrize("exp", EXPS)
def test_every_experiment_trains_two_steps(exp, tmp_path, demo_root):
    res = _train(exp, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / exp
    ck = torch.load(run / "last.pth", weights_only=True)
    assert ck["fastairl"]["step"] == 2 and ck["start_epoch"] == 0
    assert all(k.startswith("module.") for k in ck["model"])
    assert ("classifier" in ck) == (exp != "supervised")
    lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and lines[-1]["loss"] > 0
    for key in ("lr", "images_per_s", "data_wait", "epoch"):
        assert key in lines[-1]
    if exp.startswith(("moco", "smoco")):
        assert "inst_acc1" in lines[-1] and "momentum" in lines[-1]
    if exp != "supervised":
        assert "probe_acc1" in lines[-1]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["arch"] == "resnet18" and cfg["name"] == exp


def test_torchrun_two_processes_and_resume(tmp_path, demo_root):
    # nvjpeg hands over raw crops, so the batched augmentation module draws the colour ops
    args = ["fastairl/train.py", "--exp", "moco_v2p", "--data", "demo", "--output-dir", str(tmp_path),
            "--max-steps", "2", "--loader", "nvjpeg", *SMALL]
    res = torchrun(args)
    assert res.returncode == 0, res.stderr[-3000:]
    ck1 = torch.load(tmp_path / "moco_v2p" / "last.pth", weights_only=True)
    assert ck1["fastairl"]["world_size"] == 2 and int(ck1["model"]["module.queue_ptr"]) == 16  # 2 steps x 8 keys
    # each rank drew its own augmentation choices: the ranks' random streams differ
    r0, r1 = ck1["fastairl"]["rng"]
    assert not torch.equal(r0["torch"], r1["torch"])
    # continue the same run for 2 more steps
    res = torchrun(args + ["--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    ck2 = torch.load(tmp_path / "moco_v2p" / "last.pth", weights_only=True)
    assert ck2["fastairl"]["step"] == 4 and int(ck2["model"]["module.queue_ptr"]) == 32


def test_demo_runs_at_demo_scale_unless_set(tmp_path, demo_root):
    base = ["fastairl/train.py", "--exp", "byol", "--data", "demo", "--device", "cpu", "--max-steps", "1",
            "--workers", "1", "--no-progress", "--set", "hidden_dim=64"]
    res = run_cli(base + ["--output-dir", str(tmp_path / "a")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "is the demo dataset: demo-scale arch=resnet18, image_size=64, batch_size=64" in res.stderr
    cfg = json.loads((tmp_path / "a" / "byol" / "config.json").read_text())
    assert (cfg["arch"], cfg["image_size"], cfg["batch_size"]) == ("resnet18", 64, 64)
    assert cfg["hidden_dim"] == 64 and cfg["queue_size"] == 65536  # only the scale fields change
    res = run_cli(base + ["--output-dir", str(tmp_path / "b"), "--batch-size", "8", "--set", "image_size=32"])
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = json.loads((tmp_path / "b" / "byol" / "config.json").read_text())
    assert (cfg["arch"], cfg["image_size"], cfg["batch_size"]) == ("resnet18", 32, 8)


def test_existing_run_is_not_overwritten(tmp_path, demo_root):
    assert _train("byol", tmp_path).returncode == 0
    before = (tmp_path / "byol" / "last.pth").read_bytes()
    res = _train("byol", tmp_path)
    assert res.returncode == 2
    assert "already holds a run" in res.stderr and "--overwrite" in res.stderr
    assert (tmp_path / "byol" / "last.pth").read_bytes() == before
    res = _train("byol", tmp_path, "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]


def _reference_checkpoint(exp: str, path: Path) -> None:
    """A checkpoint as the reference writes it: its keys and shapes, random values."""
    lay = layout(exp)
    g = torch.Generator().manual_seed(0)

    def rand(shape, key):
        if key.endswith("num_batches_tracked") or key.endswith("queue_ptr"):
            return torch.zeros(shape, dtype=torch.long)
        if key.endswith("running_var"):
            return torch.rand(shape, generator=g) + 0.5
        return torch.randn(shape, generator=g) * 0.02

    ck = {"start_epoch": 3, "model": {k: rand(s, k) for k, s in lay["model"].items()},
          "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": list(range(7))}]}}
    if lay["classifier"]:
        ck["classifier"] = {k: rand(s, k) for k, s in lay["classifier"].items()}
    torch.save(ck, path)


@pytest.mark.skipif(LAYOUT_FILE is None, reason="needs shared/reference/checkpoint_layout.json beside the repo")
def test_reference_checkpoint_continues(tmp_path, demo_root):
    ref = tmp_path / "ref_moco_v2p.pth"
    _reference_checkpoint("moco_v2p", ref)
    res = run_cli(["fastairl/train.py", "--exp", "moco_v2p", "--data", "demo", "--output-dir", str(tmp_path / "o"),
                   "--resume", str(ref), "--max-steps", "2", "--set", "arch=resnet50", "--set", "image_size=64",
                   "--batch-size", "8", "--workers", "1", "--device", "cpu",
                   "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "does not fit this optimizer" in res.stderr  # the reference optimizer state is not ours: said loudly
    ck = torch.load(tmp_path / "o" / "moco_v2p" / "last.pth", weights_only=True)
    ref_sd = torch.load(ref, weights_only=True)["model"]
    assert set(ck["model"]) == set(ref_sd)
    assert {k: tuple(v.shape) for k, v in ck["model"].items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    # continued from the reference's weights: the target encoder moved only a little
    k = "module.target_encoder.conv1.weight"
    assert (ck["model"][k] - ref_sd[k]).abs().max() < 0.05 * ref_sd[k].abs().max()
    assert ck["fastairl"]["epoch"] == 3 and ck["fastairl"]["batch_in_epoch"] == 2
    assert ck["classifier"]["module.weight"].shape == (1000, 2048)  # the probe keeps the checkpoint's 1000 classes


@pytest.mark.parametrize("argv,needle", [
    (["--exp", "nope"], "unknown experiment 'nope'"),
    (["--exp", "byol", "--data", "/does/not/exist"], "--data /does/not/exist: no such folder"),
    (["--exp", "byol", "--set", "colour=1"], "--set colour: unknown config key"),
    (["--exp", "byol", "--set", "epochs=ten"], "--set epochs=ten: expected a value of type int"),
    (["--exp", "byol", "--set", "arch=vgg"], "arch='vgg' is not valid"),
    (["--exp", "byol", "--batch-size", "0"], "batch_size=0 must be > 0"),
    (["--exp", "byol", "--resume", "/no/such.pth"], "checkpoint /no/such.pth does not exist"),
])
def test_bad_input_gives_one_line_error(argv, needle, tmp_path, demo_root):
    res = run_cli(["fastairl/train.py", *argv, "--device", "cpu", "--output-dir", str(tmp_path), "--no-progress"])
    assert res.returncode == 2
    err = [l for l in res.stderr.splitlines() if l.startswith("fastairl: error:")]
    assert len(err) == 1 and needle in err[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_empty_class_folder_is_named(tmp_path, demo_root):
    data = tmp_path / "data"
    shutil.copytree(demo_root / "train" / sorted(p.name for p in (demo_root / "train").iterdir())[0], data / "train" / "a")
    (data / "train" / "b_empty").mkdir()
    res = run_cli(["fastairl/train.py", "--exp", "byol", "--data", str(data), "--output-dir", str(tmp_path / "o"),
                   *SMALL])
    assert res.returncode == 2
    assert "b_empty has no images" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("exp", ["moco_v2p", "supervised"])
def test_demo_script_trains_and_reports_knn(exp, tmp_path, demo_root):
    """data_prep/demo.py, what `make demo` runs, for one short epoch: it trains with the kNN
    monitor, prints the kNN table of the trained and the random backbone, writes the same
    numbers to result.json and a readable summary.png, and keeps the supervised lr."""
    from PIL import Image
    from fastairl.config import load_experiment
    res = run_cli(["data_prep/demo.py", "--exp", exp, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                   "--output-dir", str(tmp_path), "--knn-k", "5", "--knn-every", "1", "--set", "image_size=32"],
                  timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    table = {}
    for ln in res.stdout.splitlines():
        for name in ("pre-trained", "random init"):
            if ln.strip().startswith(name):
                table[name] = [float(x) for x in ln.strip()[len(name):].split()]
    assert set(table) == {"pre-trained", "random init"}, res.stdout
    assert all(0 <= top1 <= top5 <= 100 for top1, top5 in table.values())
    cfg = json.loads((tmp_path / exp / "config.json").read_text())
    assert (cfg["arch"], cfg["image_size"], cfg["epochs"], cfg["knn_k"]) == ("resnet18", 32, 1, 5)
    assert cfg["lr"] == (load_experiment(exp).lr if exp == "supervised" else 1.5)
    assert (tmp_path / exp / "last.pth").is_file()
    tag = "" if exp == "moco_v2p" else f"-{exp}"
    result = json.loads((tmp_path / f"result{tag}.json").read_text())
    assert [result["pretrained"]["acc1"], result["pretrained"]["acc5"]] == pytest.approx(table["pre-trained"], abs=0.01)
    assert [result["random_init"]["acc1"], result["random_init"]["acc5"]] == pytest.approx(table["random init"], abs=0.01)
    assert result["chance"] == 10.0 and result["seed"] == 0 and result["exp"] == exp
    # The pre-trained number is the kNN monitor's point at the last epoch.
    assert [r["epoch"] for r in result["per_epoch"]] == [1]
    assert result["per_epoch"][0]["knn_acc1"] == result["pretrained"]["acc1"]
    assert "loss" in result["per_epoch"][0]
    png = tmp_path / f"summary{tag}.png"
    assert f"summary:     {png.resolve()}" in res.stdout
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 200
        im.load()


def test_trains_on_a_bare_torch_machine(tmp_path, demo_root):
    """Only torch, torchvision, numpy and Pillow: ffcv, DALI, tqdm, TensorBoard, matplotlib,
    scipy and scikit-image are made unimportable (package folders that raise, first on
    PYTHONPATH). The nvjpeg backend trains from the packed demo, read by fastairl's own
    reader, with the progress bar on; the missing extras are named once each."""
    pytest.importorskip("ffcv", reason="packing the demo for this test needs ffcv")
    from fastairl.data.demo_packed import ensure_demo_packed
    packed = ensure_demo_packed(demo_root)
    env = hidden_packages_env(tmp_path, ["ffcv", "tqdm", "tensorboard", "matplotlib", "scipy", "skimage",
                                         "nvidia/dali"], "tests/test_cli.py")
    res = run_cli(["fastairl/train.py", "--exp", "moco_v2p", "--data", str(packed), "--loader", "nvjpeg",
                   "--device", "cpu", "--max-steps", "2", "--batch-size", "16", "--output-dir", str(tmp_path / "o")],
                  env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(beton), " in res.stderr  # read from train.beton without ffcv
    for extra in ("tqdm is not installed", "tensorboard is not installed"):
        assert res.stderr.count(extra) == 1, res.stderr[-3000:]
    run = tmp_path / "o" / "moco_v2p"
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    assert (run / "last.pth").is_file() and not (run / "tb").exists()
