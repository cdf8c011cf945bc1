"""``python -m fastairl.preview``: the grid, the dump, the statistics, on real JPEGs and real loaders.

The parameters in a dump are checked against the pixels independently: the folder
loader's views are rebuilt from the dumped parameters with torchvision's functional ops
and PIL, the nvjpeg loader's from the decoded source, fastairl's crop kernel and
GPUAugment.apply. The folder views are compared with what the trainer's FolderLoader
yields for the same LoaderSpec.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps

from conftest import run_cli
from fastairl.data import LOADERS
from fastairl.data.augment import PARAM_KEYS, GPUAugment
from fastairl.data.base import LoaderSpec
from fastairl.data.recipes import MEAN, STD, get_recipe
from fastairl.preview import PAD, PARAM_DOC, default_cell, grid_geometry, load_dump, main

# torchvision 0.29 warns on every JPEG decode that its codecs are deprecated; one line per image
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SIZE = 32            # view size: small, so every run is fast
CLASSES, PER_CLASS = 3, 12


def _denorm_uint8(view: torch.Tensor) -> np.ndarray:
    """Test-side display conversion: (3, H, W) normalised -> (H, W, 3) uint8."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    x = (view.float() * std + mean).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def small_root(demo_root, tmp_path_factory) -> Path:
    """A 36-image ImageNet-style folder (symlinks into the demo data): short epochs."""
    root = tmp_path_factory.mktemp("small")
    for cdir in sorted((demo_root / "train").iterdir())[:CLASSES]:
        out = root / "train" / cdir.name
        out.mkdir(parents=True)
        for f in sorted(cdir.iterdir())[:PER_CLASS]:
            os.symlink(f, out / f.name)
    return root


def _preview(tmp: Path, name: str, *args: str) -> dict:
    """Run the CLI in this process and reload its dump."""
    dump = tmp / f"{name}.pt"
    rc = main(["--dump", str(dump), "--device", "cpu", "--image-size", str(SIZE), "--workers", "2", *args])
    assert rc == 0
    return load_dump(dump)


def _folder_labels(root: Path) -> list[int]:
    from torchvision.datasets import ImageFolder
    return [t for _, t in ImageFolder(str(root / "train")).samples]


@pytest.fixture(scope="module")
def folder_dump(small_root, tmp_path_factory) -> dict:
    # 40 pairs in batches of 8 over 36 images: 4 batches per epoch, so epoch 1 is reached
    return _preview(tmp_path_factory.mktemp("fd"), "folder", "--exp", "byol", "--data", str(small_root),
                    "--loader", "folder", "--pairs", "40", "--batch-size", "8", "--seed", "5")


@pytest.fixture(scope="module")
def nvjpeg_dump(small_root, tmp_path_factory) -> dict:
    return _preview(tmp_path_factory.mktemp("nd"), "nvjpeg", "--exp", "moco_v1", "--data", str(small_root),
                    "--loader", "nvjpeg", "--pairs", "16", "--batch-size", "8", "--seed", "5")


# ----------------------------------------------------------------------------- grid

def test_cli_grid_is_a_png_showing_the_dumped_views(small_root, tmp_path):
    png, dump = tmp_path / "grid.png", tmp_path / "views.pt"
    rows = 3
    res = run_cli(["-m", "fastairl.preview", "--exp", "byol", "--data", str(small_root), "--loader", "folder",
                   "--pairs", "5", "--rows", str(rows), "--batch-size", "8", "--workers", "2",
                   "--image-size", str(SIZE), "--seed", "1", "--device", "cpu", "--out", str(png),
                   "--dump", str(dump)], timeout=300)
    assert res.returncode == 0, res.stderr
    assert str(png) in res.stderr
    with Image.open(png) as im:
        assert im.format == "PNG"
        im.verify()
    im = Image.open(png).convert("RGB")
    cell = default_cell(SIZE)
    assert cell % SIZE == 0 and cell >= 224
    geo = grid_geometry(rows, 3, cell)
    assert im.size == (geo.width, geo.height)
    assert geo.width == 3 * cell + 4 * PAD  # source + two views per row
    data = load_dump(dump)
    assert data["views"][0].shape[0] == 5
    k = cell // SIZE
    arr = np.asarray(im)
    for r in range(rows):
        x, y = geo.cell_origin(r, 0)
        assert arr[y:y + cell, x:x + cell].std() > 5  # the source image, not an empty cell
        for v in range(2):
            x, y = geo.cell_origin(r, 1 + v)
            want = _denorm_uint8(data["views"][v][r]).repeat(k, axis=0).repeat(k, axis=1)
            np.testing.assert_array_equal(arr[y:y + cell, x:x + cell], want)


def test_one_view_recipe_gives_two_columns(small_root, tmp_path):
    png = tmp_path / "sup.png"
    rc = main(["--exp", "supervised", "--data", str(small_root), "--loader", "nvjpeg", "--pairs", "2",
               "--batch-size", "4", "--workers", "2", "--image-size", str(SIZE), "--device", "cpu",
               "--out", str(png), "--cell", "64"])
    assert rc == 0
    geo = grid_geometry(2, 2, 64)
    with Image.open(png) as im:
        assert im.size == (geo.width, geo.height) and geo.width == 2 * 64 + 3 * PAD


# ----------------------------------------------------------------------------- dump contents

def _check_ranges(data: dict, labels_of: list[int]) -> None:
    meta = data["meta"]
    n = data["labels"].shape[0]
    assert data["indices"].min() >= 0
    assert data["labels"].tolist() == [labels_of[i] for i in data["indices"].tolist()]
    for v, (p, view) in enumerate(zip(data["params"], meta["recipe_views"])):
        assert set(p) == set(PARAM_DOC)
        x = data["views"][v]
        assert x.shape == (n, 3, SIZE, SIZE) and x.dtype == torch.float32 and torch.isfinite(x).all()
        t, l, h, w = p["box"].unbind(1)
        H, W = p["src_hw"].unbind(1)
        assert (t >= 0).all() and (l >= 0).all() and (h > 0).all() and (w > 0).all()
        assert (t + h <= H).all() and (l + w <= W).all()
        assert torch.allclose(p["scale"], (h * w).double() / (H * W).double())
        s0, s1 = view["crop_scale"]
        assert (p["scale"] >= s0 * 0.95).all() and (p["scale"] <= s1).all()  # rounding of h, w
        on = p["jitter"]
        b, c, s, hue = view["jitter"]
        for key, strength in (("brightness", b), ("contrast", c), ("saturation", s)):
            assert (p[key][on] >= 1 - strength - 1e-6).all() and (p[key][on] <= 1 + strength + 1e-6).all()
        assert (p["hue"][on].abs() <= hue + 1e-6).all()
        assert (p["order"][on].sort(dim=1).values == torch.arange(4)).all()
        lo, hi = view["blur_sigma"]
        assert (p["sigma"][p["blur"]] >= lo).all() and (p["sigma"][p["blur"]] <= hi).all()
        for key, prob in (("jitter", view["jitter_p"]), ("gray", view["gray_p"]), ("blur", view["blur_p"]),
                          ("solarize", view["solarize_p"]), ("flip", view["flip_p"])):
            if prob == 0:
                assert not p[key].any(), (v, key)
            if prob == 1:
                assert p[key].all(), (v, key)


def test_folder_dump_reloads_within_recipe_ranges(folder_dump, small_root):
    assert folder_dump["format"] == "fastairl.preview/1"
    assert folder_dump["labels"].shape == (40,)
    assert folder_dump["epochs"].tolist() == [0] * 32 + [1] * 8
    _check_ranges(folder_dump, _folder_labels(small_root))


def test_nvjpeg_dump_reloads_within_recipe_ranges(nvjpeg_dump, small_root):
    assert nvjpeg_dump["meta"]["recipe"] == "moco_basic"
    _check_ranges(nvjpeg_dump, _folder_labels(small_root))


# ----------------------------------------------------------------------------- exactness

def test_folder_dump_equals_the_trainers_loader(folder_dump, small_root):
    """The views the trainer's FolderLoader yields for the same spec, epochs 0 and 1."""
    from fastairl.data.folder import FolderLoader

    meta = folder_dump["meta"]
    spec = LoaderSpec(root=str(small_root), split="train", recipe="byol_asym", image_size=SIZE, batch_size=8,
                      workers=2, seed=5, device="cpu", train=True)
    assert (meta["recipe"], meta["batch_size"], meta["workers"], meta["seed"]) == ("byol_asym", 8, 2, 5)
    loader = FolderLoader(spec)
    views, labels, indices = [[], []], [], []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        indices += loader.sampler.indices()[: len(loader) * 8]
        for vs, ls in loader:
            for v in range(2):
                views[v].append(vs[v])
            labels.append(ls)
    n = folder_dump["labels"].shape[0]
    assert folder_dump["indices"].tolist() == indices[:n]
    assert torch.equal(torch.cat(labels)[:n], folder_dump["labels"])
    for v in range(2):
        assert torch.equal(torch.cat(views[v])[:n], folder_dump["views"][v])


def _torchvision_view(img: Image.Image, p: dict, r: int, view: dict) -> torch.Tensor:
    """Rebuild one folder-loader view from dumped parameters with torchvision/PIL ops."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    t, l, h, w = (int(x) for x in p["box"][r])
    x = TF.resized_crop(img, t, l, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR, antialias=True)
    gray = bool(p["gray"][r])
    if gray and view["gray_before_jitter"]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if bool(p["jitter"][r]):
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        keys = ("brightness", "contrast", "saturation", "hue")
        for k in p["order"][r].tolist():
            x = ops[k](x, float(p[keys[k]][r]))
    if gray and not view["gray_before_jitter"]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if bool(p["blur"][r]):
        x = x.filter(ImageFilter.GaussianBlur(radius=float(p["sigma"][r])))
    if bool(p["solarize"][r]):
        x = ImageOps.solarize(x, view["solarize_threshold"])
    if bool(p["flip"][r]):
        x = TF.hflip(x)
    return TF.normalize(TF.to_tensor(x), MEAN, STD)


def test_folder_parameters_rebuild_the_views(folder_dump, small_root):
    from torchvision.datasets import ImageFolder

    samples = ImageFolder(str(small_root / "train")).samples
    meta = folder_dump["meta"]
    seen = {k: 0 for k in ("jitter", "gray", "blur", "solarize", "flip")}
    for v in range(2):
        p = folder_dump["params"][v]
        for r, i in enumerate(folder_dump["indices"].tolist()):
            with Image.open(samples[i][0]) as im:
                img = im.convert("RGB")
            want = _torchvision_view(img, p, r, meta["recipe_views"][v])
            assert torch.equal(want, folder_dump["views"][v][r]), (v, r)
            for k in seen:
                seen[k] += int(p[k][r])
    assert all(seen.values()), seen  # every op occurred, so every parameter kind was exercised


def test_nvjpeg_parameters_rebuild_the_views(nvjpeg_dump, small_root):
    from torchvision.datasets import ImageFolder
    from torchvision.io import read_file

    from fastairl.data.crop import crop_resize
    from fastairl.data.nvjpeg_loader import decode_on_cpu

    samples = ImageFolder(str(small_root / "train")).samples
    recipe = get_recipe("moco_basic")
    aug = GPUAugment(recipe, channels_last=False, flip_done=True)
    idx = nvjpeg_dump["indices"].tolist()
    imgs = [decode_on_cpu(read_file(samples[i][0])) for i in idx]
    for v in range(2):
        p = nvjpeg_dump["params"][v]
        x = crop_resize(imgs, p["box"], SIZE)
        x[p["flip"]] = x[p["flip"]].flip(-1)
        colour = {k: p[k] for k in PARAM_KEYS if k != "flip"}
        colour["flip"] = torch.zeros(len(idx), dtype=torch.bool)
        for lo in range(0, len(idx), 8):  # the loader's batches of 8
            sl = slice(lo, lo + 8)
            got = aug.apply(x[sl], {k: t[sl] for k, t in colour.items()}, recipe[v])
            assert torch.equal(got, nvjpeg_dump["views"][v][sl]), (v, lo)
        assert p["jitter"].all() and p["gray"].any() and p["flip"].any()


def test_fixed_seed_gives_identical_dumps(folder_dump, nvjpeg_dump, small_root, tmp_path):
    args = {"folder": ("--exp", "byol", "--pairs", "40", "--seed"),
            "nvjpeg": ("--exp", "moco_v1", "--pairs", "16", "--seed")}
    for name, first in (("folder", folder_dump), ("nvjpeg", nvjpeg_dump)):
        common = ("--data", str(small_root), "--loader", name, "--batch-size", "8", *args[name])
        again = _preview(tmp_path, f"{name}_again", *common, "5")
        other = _preview(tmp_path, f"{name}_other", *common, "6")
        for key in ("labels", "indices", "epochs"):
            assert torch.equal(first[key], again[key])
        for v in range(2):
            assert torch.equal(first["views"][v], again["views"][v])
            for k, t in first["params"][v].items():
                assert torch.equal(t.nan_to_num(-9), again["params"][v][k].nan_to_num(-9)), (name, k)
            assert not torch.equal(first["views"][v], other["views"][v])


# ----------------------------------------------------------------------------- statistics

_ROW = re.compile(r"^(flip|jitter|grayscale|blur|solarize)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+"
                  r"\[([0-9.]+), ([0-9.]+)\]\s+(ok|OFF)$")


@pytest.mark.parametrize("exp,loader", [("byol", "folder"), ("moco_v2p", "nvjpeg")])
def test_stats_follow_the_recipe_over_512_pairs(exp, loader, tmp_path, capsys):
    dump = tmp_path / "s.pt"
    rc = main(["--exp", exp, "--data", "demo", "--loader", loader, "--pairs", "512", "--batch-size", "64",
               "--workers", "2", "--image-size", str(SIZE), "--device", "cpu", "--stats", "--dump", str(dump)])
    assert rc == 0
    out = capsys.readouterr().out
    rows = [m.groups() for m in map(_ROW.match, out.splitlines()) if m]
    data = load_dump(dump)
    recipe = data["meta"]["recipe_views"]
    field = {"flip": "flip_p", "jitter": "jitter_p", "grayscale": "gray_p", "blur": "blur_p", "solarize": "solarize_p"}
    assert len(rows) == 5 * len(recipe)
    for op, view, share, prob, _, _, verdict in rows:
        want = recipe[int(view) - 1][field[op]]
        assert float(prob) == pytest.approx(want, abs=5e-4)
        sd = math.sqrt(want * (1 - want) / 512)
        assert abs(float(share) - want) <= 4 * sd + 1e-3, (op, view, share, want)
        assert verdict == "ok"
    # brightness is the mean luma of the denormalised views: recompute it from the dump
    for v in range(len(recipe)):
        x = (data["views"][v] * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
        luma = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2))
        line = next(ln for ln in out.splitlines() if re.match(rf"^brightness\s+{v + 1}\s", ln))
        mean, std = (float(t) for t in line.split()[2:4])
        assert mean == pytest.approx(float(luma.mean()), abs=1.5e-3)
        assert std == pytest.approx(float(luma.std()), abs=1.5e-3)


# ----------------------------------------------------------------------------- other backends

def test_ffcv_on_demo_reports_crops_and_rebuilds_views(demo_root, tmp_path, capsys):
    """--data demo --loader ffcv packs the demo once (cached) and previews it; the reported
    windows and flips, cut from the packed JPEGs by the decoder's kernel and put through
    GPUAugment.apply with the dumped colour parameters, give the dumped views exactly; a
    second run with the same seed gives the same dump."""
    pytest.importorskip("ffcv", reason="ffcv is not installed")
    from fastairl.data.beton import BetonReader
    from fastairl.data.ffcv_loader import decode_jpeg, resized_crop

    png = tmp_path / "ff.png"
    args = ("--exp", "byol", "--data", "demo", "--loader", "ffcv", "--pairs", "12", "--batch-size", "8",
            "--seed", "3")
    data = _preview(tmp_path, "ff", *args, "--out", str(png), "--rows", "2", "--stats")
    out = capsys.readouterr().out
    meta = data["meta"]
    assert meta["loader"] == "ffcv" and meta["data"] == str(demo_root) + "-ffcv"
    assert meta["crop_source"] == meta["flip_source"] == ["ffcv.crop_params"] * 2
    reader = BetonReader(Path(meta["data"]) / "train.beton")
    assert len(reader) == len(_folder_labels(demo_root))
    idx = data["indices"].tolist()
    assert data["labels"].tolist() == [int(reader.labels[i]) for i in idx]
    _check_ranges(data, [int(x) for x in reader.labels])
    recipe = get_recipe("byol_asym")
    aug = GPUAugment(recipe, channels_last=False, flip_done=True)
    boxes = torch.stack([data["params"][v]["box"] for v in range(2)], 1)  # (N, 2, 4)
    for v in range(2):
        p = data["params"][v]
        crops = []
        for r, i in enumerate(idx):
            d = next((d for d in (8, 4, 2) if (boxes[r, :, 2:] >= SIZE * d).all()), 1)  # the decoder's DCT scale
            img = decode_jpeg(reader.jpeg(i), int(reader.heights[i]), int(reader.widths[i]), denominator=d)
            t, l, h, w = (float(x) / d for x in p["box"][r])
            crops.append(torch.from_numpy(resized_crop(img, t, l, h, w, SIZE, flip=bool(p["flip"][r]))))
        x = torch.stack(crops).permute(0, 3, 1, 2)
        colour = {k: p[k] for k in PARAM_KEYS}
        for lo in range(0, len(idx), 8):  # the loader's batches of 8
            sl = slice(lo, lo + 8)
            got = aug.apply(x[sl], {k: t[sl] for k, t in colour.items()}, recipe[v])
            assert torch.equal(got, data["views"][v][sl]), (v, lo)
    assert data["params"][0]["blur"].all() and not data["params"][0]["solarize"].any()  # byol view 1
    flip_rows = [m.groups() for m in map(_ROW.match, out.splitlines()) if m and m.group(1) == "flip"]
    assert [(r[1], float(r[3])) for r in flip_rows] == [("1", 0.5), ("2", 0.5)]  # measured, not "n/a"
    geo = grid_geometry(2, 3, default_cell(SIZE))
    with Image.open(png) as im:
        assert im.size == (geo.width, geo.height)
    again = _preview(tmp_path, "ff2", *args)
    for v in range(2):
        assert torch.equal(again["views"][v], data["views"][v])
        assert torch.equal(again["params"][v]["box"], data["params"][v]["box"])


def test_every_registered_folder_backend_previews(small_root, tmp_path):
    """Each backend that reads an image folder (dali joins once it is registered)."""
    names = [n for n in LOADERS if n not in ("auto", "ffcv")]
    assert "folder" in names and "nvjpeg" in names
    labels_of = _folder_labels(small_root)
    for name in names:
        data = _preview(tmp_path, name, "--exp", "moco_v2p", "--recipe", "byol_sym", "--data", str(small_root),
                        "--loader", name, "--pairs", "3", "--batch-size", "4", "--out", str(tmp_path / f"{name}.png"))
        assert data["meta"]["loader"] == name and data["meta"]["recipe"] == "byol_sym"
        assert data["meta"]["recipe_views"][0]["solarize_p"] == get_recipe("byol_sym")[0].solarize_p
        assert data["labels"].tolist() == [labels_of[i] for i in data["indices"].tolist()]
        assert (data["params"][0]["box"] >= 0).all()  # every folder backend reports its crops
        assert (tmp_path / f"{name}.png").stat().st_size > 0


# ----------------------------------------------------------------------------- user errors

def test_bad_input_gives_one_line_errors(small_root, tmp_path, capsys):
    base = ["--exp", "byol", "--data", str(small_root), "--loader", "nvjpeg", "--device", "cpu", "--workers", "1",
            "--image-size", str(SIZE), "--batch-size", "4"]
    existing = tmp_path / "grid.png"
    existing.write_bytes(b"keep me")
    cases = [
        (["--pairs", "2", "--out", str(existing)], [str(existing), "--overwrite"]),
        (["--pairs", "2"], ["nothing to do"]),
        (["--pairs", "2", "--stats", "--recipe", "nope"], ["--recipe nope", "byol_asym"]),
        (["--pairs", "0", "--stats"], ["--pairs 0"]),
        (["--pairs", "2", "--rows", "3", "--out", str(tmp_path / "x.png")], ["--rows 3", "--pairs 2"]),
        (["--pairs", "2", "--out", str(tmp_path / "x.jpg")], [".png"]),
        (["--pairs", "2", "--dump", str(tmp_path / "missing" / "d.pt")], ["does not exist"]),
    ]
    for extra, words in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fastairl: error:"), err
        for word in words:
            assert word in err, (word, err)
    assert existing.read_bytes() == b"keep me"
    rc = main(["--exp", "byol", "--data", str(tmp_path / "nowhere"), "--stats", "--device", "cpu"])
    assert rc == 2 and "nowhere" in capsys.readouterr().err
