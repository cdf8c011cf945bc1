"""The dali backend on real JPEG files and real DALI, in its CPU mode (and on a GPU where one exists).

Expected pixels come from torchvision (decode_jpeg, resized_crop, resize + center_crop)
applied to the same files; expected sample sets from the sampler rule (torch.randperm
seeded by seed + epoch, a strided slice per rank) written out here; expected labels from
torchvision's ImageFolder.

Crop tolerance (DALI's antialiased linear resize against torchvision's, same window): every
pixel off the outermost ring within 1 level; the outermost ring within RING_TOL (DALI
clamps the filter at the window edge where torchvision renormalises the truncated
filter); mean absolute difference per view at most MEAN_TOL.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (nvidia-dali-cuda130, make venv) is needed for the dali backend")
skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the test photographs")

import torchvision.transforms.v2.functional as TF  # noqa: E402
from torchvision import datasets  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg  # noqa: E402

from fastairl.data import dali_loader as dl  # noqa: E402
from fastairl.data.base import LoaderSpec  # noqa: E402
from fastairl.data.dali_loader import DaliLoader, DaliUnavailableError, build_dali_loader, eval_geometry  # noqa: E402
from fastairl.data.recipes import eval_resize_size, get_recipe  # noqa: E402

from conftest import run_cli, torchrun  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 32
CLASSES = ["n001_astronaut", "n002_chelsea", "n003_coffee"]
PER_CLASS = 6
RING_TOL = 16
MEAN_TOL = 0.5
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photo(k: int, j: int) -> np.ndarray:
    src = [skdata.astronaut, skdata.chelsea, skdata.coffee][k]()
    h, w = 44 + 9 * j, 76 - 7 * j  # landscape, square-ish and portrait
    return np.ascontiguousarray(src[20 * j:20 * j + h, 25 * j:25 * j + w, :3])


def _save(img: np.ndarray, path: Path, kind: str, quality: int) -> None:
    im = Image.fromarray(img)
    if kind == "gray":
        im.convert("L").save(path, "JPEG", quality=quality)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=quality)
    elif kind == "progressive":
        im.save(path, "JPEG", quality=quality, progressive=True)
    elif kind == "png":  # a PNG under a .JPEG name, as ImageNet has a few
        im.save(path, "PNG")
    else:
        im.save(path, "JPEG", quality=quality)


def _make_folder(root: Path, per_class: int = PER_CLASS) -> Path:
    """root/{train,val}/<class>/<image>.JPEG: real photos incl. grey, CMYK, progressive and a PNG."""
    special = {(0, 1): "gray", (1, 2): "cmyk", (2, 3): "progressive", (1, 4): "png"}
    for k, c in enumerate(CLASSES):
        d = root / "train" / c
        d.mkdir(parents=True)
        for j in range(per_class):
            _save(_photo(k, j), d / f"{c}_{j}.JPEG", special.get((k, j), "baseline"), quality=72 + 4 * j)
    shutil.copytree(root / "train", root / "val")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("dali"))


@pytest.fixture(scope="module")
def packed(data_root, tmp_path_factory) -> Path:
    pytest.importorskip("ffcv", reason="ffcv 1.0.2 (make venv) writes the packed files")
    from fastairl.data.ffcv_writer import write_ffcv
    out = tmp_path_factory.mktemp("packed")
    write_ffcv(data_root, out, max_side=0, workers=1, progress=False)
    return out


def _spec(root: Path, **kw) -> LoaderSpec:
    base = dict(root=str(root), split="train", recipe="moco_plus", image_size=SIZE, batch_size=4,
                device="cpu", workers=2, seed=7, train=True)
    base.update(kw)
    return LoaderSpec(**base)


def _decode(path: str) -> torch.Tensor:
    """The file's RGB pixels as torchvision (libjpeg-turbo) or, for non-JPEG files, PIL decodes them."""
    data = np.fromfile(path, dtype=np.uint8)
    if data[:2].tolist() == [0xFF, 0xD8]:
        return decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def _eval_ref(img: torch.Tensor) -> torch.Tensor:
    return TF.center_crop(TF.resize(img, [eval_resize_size(SIZE)], antialias=True), [SIZE, SIZE])


def _crop_ref(img: torch.Tensor, box, flip: bool) -> torch.Tensor:
    t, l, h, w = (int(x) for x in box)
    ref = TF.resized_crop(img, t, l, h, w, [SIZE, SIZE], antialias=True)
    return TF.horizontal_flip(ref) if flip else ref


def _crop_close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    d = (got.int() - ref.int()).abs()
    return (int(d[:, 1:-1, 1:-1].max()) <= 1 and int(d.max()) <= RING_TOL
            and float(d.float().mean()) <= MEAN_TOL)


def _collect(loader) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    views, labels = [], []
    for v, lab in loader:
        views.append([x.clone() for x in v])
        labels.append(lab.clone())
    return views, labels


def _rule(n: int, world: int, bs: int, seed: int, epoch: int) -> list[list[int]]:
    """Per rank, the samples of one training epoch by the sampler rule (drop last)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = (n // world // bs) * bs
    return [perm[r::world][:per_rank] for r in range(world)]


# ------------------------------------------------------------------------------------ crops
def test_train_views_equal_torchvision_resized_crop(data_root):
    ds = datasets.ImageFolder(str(data_root / "train"))
    loader = build_dali_loader(_spec(data_root, recipe="byol_asym", batch_size=6))
    assert loader.output == "uint8" and loader.flipped and loader.num_classes == 3
    assert loader.classes == ds.classes
    loader.set_epoch(2)
    batches = loader.batch_indices()
    views, labels = _collect(loader)
    assert len(views) == len(loader) == 3
    imgs = {i: _decode(p) for i, (p, _) in enumerate(ds.samples)}
    n_flips = 0
    for k, (ids, vs, lab) in enumerate(zip(batches, views, labels)):
        assert len(vs) == len(get_recipe("byol_asym")) == 2
        assert lab.dtype == torch.int64 and lab.tolist() == [ds.targets[i] for i in ids]
        params = loader.crop_params(2, k, [imgs[i].shape[1] for i in ids], [imgs[i].shape[2] for i in ids])
        for v, (boxes, flips) in zip(vs, params):
            assert v.dtype == torch.uint8 and v.shape == (6, 3, SIZE, SIZE) and v.device.type == "cpu"
            for b, i in enumerate(ids):
                ref = _crop_ref(imgs[i], boxes[b], bool(flips[b]))
                assert _crop_close(v[b], ref), f"batch {k} sample {i} window {boxes[b].tolist()}"
                n_flips += int(flips[b])
        assert not np.array_equal(params[0][0], params[1][0]), "each view draws its own window"
    assert 0 < n_flips < 36
    # the windows' flips follow flip_p = 0.5
    rate = np.mean([f for e in range(200) for _, f in loader.crop_params(e, 0, [60] * 4, [60] * 4)])
    assert 0.45 < rate < 0.55


def test_fixed_window_tolerance_has_teeth(data_root):
    """Fed windows land where they should: a window moved by 3 pixels is far outside the tolerance."""
    ds = datasets.ImageFolder(str(data_root / "train"))
    loader = DaliLoader(_spec(data_root, recipe="supervised", batch_size=6))
    loader.set_epoch(0)
    ids = loader.batch_indices()[0]
    (view,), _ = next(iter(loader))
    imgs = [_decode(ds.samples[i][0]) for i in ids]
    (boxes, flips), = loader.crop_params(0, 0, [im.shape[1] for im in imgs], [im.shape[2] for im in imgs])
    checked = 0
    for b, img in enumerate(imgs):
        t, l, h, w = (int(x) for x in boxes[b])
        assert _crop_close(view[b], _crop_ref(img, boxes[b], bool(flips[b])))
        for dt, dl in ((3, 0), (-3, 0), (0, 3), (0, -3)):
            if 0 <= t + dt <= img.shape[1] - h and 0 <= l + dl <= img.shape[2] - w:
                assert not _crop_close(view[b], _crop_ref(img, (t + dt, l + dl, h, w), bool(flips[b])))
                checked += 1
                break
    assert checked > 0
    loader.close()


# ------------------------------------------------------------------------------------ sharding
@pytest.mark.parametrize("world,bs", [(2, 4), (3, 2)])
def test_shards_disjoint_and_complete_every_epoch(data_root, world, bs):
    """Two back-to-back epochs per rank: exactly the sampler rule's samples, each once."""
    ds = datasets.ImageFolder(str(data_root / "train"))
    n = len(ds)
    imgs = {i: _decode(p) for i, (p, _) in enumerate(ds.samples)}
    loaders = [DaliLoader(_spec(data_root, recipe="supervised", batch_size=bs, rank=r, world_size=world,
                                workers=1)) for r in range(world)]
    for epoch in (3, 4):
        expect = _rule(n, world, bs, seed=7, epoch=epoch)
        seen = []
        for r, ld in enumerate(loaders):
            ld.set_epoch(epoch)
            assert len(ld) == len(expect[r]) // bs
            views, labels = _collect(ld)
            got = []
            for k, ((v,), lab) in enumerate(zip(views, labels)):
                ids = expect[r][k * bs:(k + 1) * bs]
                (boxes, flips), = ld.crop_params(epoch, k, [imgs[i].shape[1] for i in ids],
                                                 [imgs[i].shape[2] for i in ids])
                for b, i in enumerate(ids):  # the pixels prove which image was delivered
                    assert _crop_close(v[b], _crop_ref(imgs[i], boxes[b], bool(flips[b]))), (epoch, r, k, i)
                assert lab.tolist() == [ds.targets[i] for i in ids]
                got += ids
            assert got == expect[r]
            seen.append(got)
        flat = [i for s in seen for i in s]
        assert len(flat) == len(set(flat)), "ranks overlap"
        per_rank = (n // world // bs) * bs
        assert len(flat) == per_rank * world
        if n % (world * bs) == 0:
            assert set(flat) == set(range(n)), "a complete epoch"
    for ld in loaders:
        ld.close()


def test_eval_view_is_torchvision_eval_transform(data_root):
    ds = datasets.ImageFolder(str(data_root / "val"))
    n = len(ds)
    for h, w in [(44, 76), (89, 41), (50, 50), (301, 451)]:
        rh, rw, top, left = eval_geometry(h, w, SIZE)
        resized = TF.resize(torch.zeros(3, h, w, dtype=torch.uint8), [eval_resize_size(SIZE)], antialias=True)
        assert (rh, rw) == tuple(resized.shape[1:])
    ld = DaliLoader(_spec(data_root, split="val", recipe="eval", batch_size=4, train=False))
    ld.set_epoch(0)
    views, labels = _collect(ld)
    assert [x.shape[0] for x in labels] == [4, 4, 4, 4, 2]  # last partial batch kept
    assert torch.cat(labels).tolist() == ds.targets and ld.classes == ds.classes
    out = torch.cat([v[0] for v in views])
    for i, (p, _) in enumerate(ds.samples):
        d = (out[i].int() - _eval_ref(_decode(p)).int()).abs()
        assert int(d.max()) <= 1, f"{p}: max diff {int(d.max())}"
    ld.close()
    # sharded eval: ordered strided slices padded to equal length; the union covers everything
    union = []
    for r in range(2):
        ld = DaliLoader(_spec(data_root, split="val", recipe="eval", batch_size=4, rank=r, world_size=2,
                              train=False))
        ld.set_epoch(0)
        _, labels = _collect(ld)
        ids = [i for b in ld.batch_indices() for i in b]
        assert ids == list(range(n))[r::2] and torch.cat(labels).tolist() == [ds.targets[i] for i in ids]
        union += ids
        ld.close()
    assert sorted(union) == list(range(n))


# ------------------------------------------------------------------------------------ packed
def test_packed_file_and_its_folder_give_the_same_samples(data_root, packed):
    ds = datasets.ImageFolder(str(data_root / "val"))
    classes = json.loads((packed / "classes.json").read_text())["classes"]
    assert classes == ds.classes
    outs = {}
    for name, root in (("folder", data_root), ("beton", packed)):
        ld = DaliLoader(_spec(root, split="val", recipe="eval", batch_size=5, train=False))
        assert ld.source.kind == name and ld.classes == ds.classes
        ld.set_epoch(0)
        views, labels = _collect(ld)
        outs[name] = (torch.cat([v[0] for v in views]).float(), torch.cat(labels))
        ld.close()
    (fv, fl), (bv, bl) = outs["folder"], outs["beton"]
    assert Counter(fl.tolist()) == Counter(bl.tolist()) == Counter(ds.targets)
    assert fl.tolist() == bl.tolist()  # both in ImageFolder order
    # The packer re-encodes at JPEG quality 90: each packed image is close to its own
    # source and far from every other one, so the (image, label) pairs correspond 1:1.
    dist = (bv[:, None] - fv[None]).abs().mean(dim=(2, 3, 4))
    assert (dist.argmin(dim=1) == torch.arange(len(ds))).all()
    assert float(dist.diagonal().max()) < 4.0
    # a training epoch over both: the same batches (same sizes -> same windows), labels equal
    lab = {}
    for name, root in (("folder", data_root), ("beton", packed)):
        ld = DaliLoader(_spec(root, batch_size=4))
        ld.set_epoch(1)
        views, labels = _collect(ld)
        lab[name] = torch.cat(labels).tolist()
        ld.close()
    assert lab["folder"] == lab["beton"] == [ds.targets[i] for i in _rule(len(ds), 1, 4, 7, 1)[0]]


def test_raw_pixel_samples_decode_exactly(data_root, tmp_path):
    """ffcv's raw write mode: the loader wraps the stored pixels as PPM, which must be lossless."""
    pytest.importorskip("ffcv", reason="ffcv 1.0.2 (make venv) writes the .beton under test")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    ds = datasets.ImageFolder(str(data_root / "val"))
    items = [(_decode(p).permute(1, 2, 0).numpy(), t) for p, t in ds.samples[:7]]

    class Items:
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    DatasetWriter(str(tmp_path / "val.beton"), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  page_size=1 << 21, num_workers=1).from_indexed_dataset(Items())
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ds.classes}))
    ld = DaliLoader(_spec(tmp_path, split="val", recipe="eval", batch_size=4, train=False))
    assert ld.source.reader.image_mode(0) == "raw"
    ld.set_epoch(0)
    views, labels = _collect(ld)
    out = torch.cat([v[0] for v in views])
    assert torch.cat(labels).tolist() == [t for _, t in items]
    for i, (img, _) in enumerate(items):
        ref = _eval_ref(torch.from_numpy(img).permute(2, 0, 1))
        assert int((out[i].int() - ref.int()).abs().max()) <= 1
    ld.close()


# ------------------------------------------------------------------------------------ resume
def test_resume_from_start_batch(data_root):
    ld = DaliLoader(_spec(data_root, batch_size=3))
    ld.set_epoch(5)
    full_ids = ld.batch_indices()
    full_views, full_labels = _collect(ld)
    assert len(full_views) == len(ld) == 6
    ld.set_epoch(5, start_batch=2)
    assert len(ld) == 4 and ld.batch_indices() == full_ids[2:]
    views, labels = _collect(ld)
    ld.close()
    assert len(views) == 4
    for a, b in zip(views, full_views[2:]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert [x.tolist() for x in labels] == [x.tolist() for x in full_labels[2:]]


def test_abandoned_pass_then_full_epochs(data_root):
    ld = DaliLoader(_spec(data_root, batch_size=2, extra={"prefetch": 3}))
    ld.set_epoch(0)
    it = iter(ld)
    next(it)
    it.close()  # what the trainer does at --max-steps: the in-flight batches must not leak into the next pass
    ld.set_epoch(1)
    ids = [i for b in ld.batch_indices() for i in b]
    _, labels = _collect(ld)
    targets = datasets.ImageFolder(str(data_root / "train")).targets
    assert len(labels) == len(ld) == 9 and torch.cat(labels).tolist() == [targets[i] for i in ids]
    ld.set_epoch(1)
    _, again = _collect(ld)
    assert [x.tolist() for x in again] == [x.tolist() for x in labels]
    ld.close()


# ------------------------------------------------------------------------------------ bad files
def test_bad_images_are_replaced_and_counted(tmp_path, caplog):
    root = _make_folder(tmp_path / "d", per_class=4)
    val = root / "val"
    junk = val / CLASSES[0] / f"{CLASSES[0]}_2.JPEG"       # no JPEG frame header: caught before DALI
    junk.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    trunc = val / CLASSES[1] / f"{CLASSES[1]}_1.JPEG"      # valid header, truncated scan: DALI fails on it
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    gif = val / CLASSES[2] / f"{CLASSES[2]}_0.JPEG"        # a format DALI cannot read: decoded by PIL
    Image.fromarray(_photo(2, 0)).save(gif, "GIF")
    ds = datasets.ImageFolder(str(val))
    paths = [p for p, _ in ds.samples]
    bad = sorted([paths.index(str(junk)), paths.index(str(trunc))])
    ld = DaliLoader(_spec(root, split="val", recipe="eval", batch_size=4, train=False))
    with caplog.at_level(logging.WARNING, logger="fastairl.data.dali_loader"):
        for epoch in range(2):
            ld.set_epoch(epoch)
            views, labels = _collect(ld)
    out = torch.cat([v[0] for v in views])
    lab = torch.cat(labels)
    assert out.shape[0] == len(ds) and sorted(ld.bad_samples) == bad
    assert ld.stats["bad_samples"] == 2 and ld.stats["pipeline_restarts"] == 1  # the truncated file, once
    for i in bad:  # the next sample stands in, pixels and label
        assert int((out[i].int() - _eval_ref(_decode(paths[i + 1])).int()).abs().max()) <= 1
        assert lab[i] == ds.targets[i + 1]
    g = paths.index(str(gif))
    with Image.open(gif) as im:
        ref = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert int((out[g].int() - _eval_ref(ref).int()).abs().max()) <= 1
    msgs = [r.getMessage() for r in caplog.records if "cannot decode" in r.getMessage()]
    assert len(msgs) == 2 and any(str(junk) in m for m in msgs) and any(str(trunc) in m for m in msgs)
    ld.close()
    # training takes the same path: every epoch completes with the stand-ins
    ld = DaliLoader(_spec(root, split="val", batch_size=4))
    for e in range(2):
        ld.set_epoch(e)
        assert len(_collect(ld)[1]) == len(ld) == 3
    assert ld.stats["bad_samples"] == 2
    ld.close()


def test_bad_input_and_missing_pieces_say_what_to_do(data_root, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        DaliLoader(_spec(tmp_path))
    with pytest.raises(ValueError, match="too few"):
        DaliLoader(_spec(data_root, batch_size=64))
    with pytest.raises(ValueError, match="source='lmdb'"):
        DaliLoader(_spec(data_root, extra={"source": "lmdb"}))
    with pytest.raises(ValueError, match="prefetch=0"):
        DaliLoader(_spec(data_root, extra={"prefetch": 0}))
    if not torch.cuda.is_available():
        with pytest.raises(DaliUnavailableError, match="--device cpu"):
            DaliLoader(_spec(data_root, device="cuda"))
    monkeypatch.setattr(dl, "_DALI_IMPORT_ERROR", ImportError("No module named 'nvidia.dali'"))
    with pytest.raises(DaliUnavailableError, match="pip install nvidia-dali-cuda130"):
        DaliLoader(_spec(data_root))


def test_memory_info_reports_host_memory(data_root):
    ld = DaliLoader(_spec(data_root, batch_size=4))
    ld.set_epoch(0)
    _collect(ld)
    info = ld.memory_info()
    assert info["host_rss_bytes"] > 0 and info["host_rss_peak_bytes"] >= info["host_rss_bytes"] // 2
    assert info["device"] == "cpu" and info["device_bytes"] is None
    ld.close()


# ------------------------------------------------------------------------------------ trainer
SMALL = ["--loader", "dali", "--device", "cpu", "--set", "arch=resnet18", "--set",
         "image_size=64", "--set", "hidden_dim=64", "--set", "queue_size=64", "--batch-size", "8",
         "--workers", "1", "--no-progress"]
EXPS = ["moco_v1", "moco_v2", "moco_v2p", "smoco_v2p", "moco_v2p_lars", "byol", "byol_lars", "supervised"]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory) -> Path:
    """24 train / 6 val real JPEGs, and the same packed (train.beton, val.beton)."""
    root = tmp_path_factory.mktemp("cli")
    for k, c in enumerate(CLASSES):
        for split, n in (("train", 8), ("val", 2)):
            d = root / "data" / split / c
            d.mkdir(parents=True)
            for j in range(n):
                Image.fromarray(_photo(k, j % 6)).save(d / f"{c}_{j}.JPEG", quality=85)
    return root


@pytest.mark.parametrize("exp", EXPS)
def test_every_experiment_trains_two_steps_with_dali_cpu(exp, cli_data, tmp_path):
    # supervised: one whole epoch of 2 steps (24 images, batch 12), then a validation pass through a DALI val loader
    extra = (["--batch-size", "12", "--epochs", "1", "--set", "eval_every=1"] if exp == "supervised"
             else ["--max-steps", "2"])
    res = run_cli(["fastairl/train.py", "--exp", exp, "--data", str(cli_data / "data"), "--output-dir",
                   str(tmp_path), *SMALL, *extra])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loader=dali" in res.stdout + res.stderr
    ck = torch.load(tmp_path / exp / "last.pth", weights_only=True)
    assert ck["fastairl"]["step"] == 2
    lines = [json.loads(ln) for ln in (tmp_path / exp / "log.jsonl").read_text().splitlines()]
    train = [r for r in lines if "loss" in r]
    assert train[-1]["step"] == 2 and np.isfinite(train[-1]["loss"])
    if exp == "supervised":
        assert any("val_acc1" in r for r in lines), lines  # the DALI val loader ran through the trainer


def test_torchrun_two_processes_on_packed_files(cli_data, tmp_path):
    pytest.importorskip("ffcv", reason="ffcv 1.0.2 (make venv) writes the packed files")
    from fastairl.data.ffcv_writer import write_ffcv
    packed = cli_data / "packed"
    if not (packed / "train.beton").is_file():
        write_ffcv(cli_data / "data", packed, workers=1, progress=False)
    res = torchrun(["fastairl/train.py", "--exp", "moco_v2p", "--data", str(packed), "--output-dir",
                    str(tmp_path), *SMALL, "--max-steps", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    ck = torch.load(tmp_path / "moco_v2p" / "last.pth", weights_only=True)
    assert ck["fastairl"]["world_size"] == 2 and ck["fastairl"]["step"] == 2
    assert int(ck["model"]["module.queue_ptr"]) == 16  # 2 steps x 8 keys gathered from both ranks


# ------------------------------------------------------------------------------------ GPU
@needs_cuda
def test_gpu_decode_matches_cpu_twin(data_root):
    outs = {}
    for dev in ("cpu", "cuda"):
        for train in (True, False):
            ld = DaliLoader(_spec(data_root, device=dev, batch_size=5, train=train,
                                  split="train" if train else "val", recipe="moco_plus" if train else "eval"))
            ld.set_epoch(1)
            views, labels = [], []
            for v, lab in ld:
                assert all(x.device.type == dev and x.dtype == torch.uint8 for x in v) and lab.device.type == dev
                views.append([x.cpu() for x in v])
                labels.append(lab.cpu())
            outs[dev, train] = (views, labels, ld.memory_info())
            ld.close()
    for train in (True, False):
        (cv, cl, _), (gv, gl, ginfo) = outs["cpu", train], outs["cuda", train]
        assert [x.tolist() for x in cl] == [x.tolist() for x in gl]
        for a, b in zip(cv, gv):
            for x, y in zip(a, b):
                # nvJPEG's IDCT/upsampling differs from libjpeg-turbo by a few levels; same windows.
                assert float((x.float() - y.float()).abs().mean()) < 3.0
        assert ginfo["device_peak_bytes"] is not None and ginfo["device_peak_bytes"] >= 0
