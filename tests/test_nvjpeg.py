"""The nvjpeg backend on real JPEG files: its CPU twin in CI, the GPU path where a GPU exists.

Reference pixels come from torchvision's own decode and ``resized_crop`` / ``resize`` +
``center_crop``; sample order from torch's permutation rule and ImageFolder.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_jpeg

from fastairl.data.base import LoaderSpec
from fastairl.data.nvjpeg_loader import NvJpegLoader, build_nvjpeg_loader, jpeg_header
from fastairl.data.recipes import eval_resize_size, get_recipe

from fastairl.data.photos import load_source_photos  # noqa: E402

# The test photographs: scikit-image's, or the same ones exported to FASTAIRL_PHOTO_SOURCES
# (data_prep/make_photo_set.py --export-sources), so a bare GPU machine runs this file too.
try:
    _PHOTOS = load_source_photos()
except RuntimeError:
    _PHOTOS = {}
if not {"astronaut", "chelsea", "coffee"} <= set(_PHOTOS):
    pytest.skip("needs scikit-image's photographs (or FASTAIRL_PHOTO_SOURCES pointing at exported ones)",
                allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 32
CLASSES = ["n001_astronaut", "n002_chelsea", "n003_coffee"]
PER_CLASS = 5
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photo(k: int, j: int) -> np.ndarray:
    src = _PHOTOS[("astronaut", "chelsea", "coffee")[k]]
    h, w = 48 + 9 * j, 70 - 6 * j  # landscape, square-ish and portrait sizes
    return np.ascontiguousarray(src[20 * j:20 * j + h, 25 * j:25 * j + w])


def _save(img: np.ndarray, path: Path, kind: str, quality: int = 85) -> None:
    im = Image.fromarray(img)
    if kind == "gray":
        im.convert("L").save(path, "JPEG", quality=90)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind == "progressive":
        im.save(path, "JPEG", quality=85, progressive=True)
    else:
        im.save(path, "JPEG", quality=quality)


def _make_folder(root: Path, corrupt: bool = False) -> Path:
    """root/train/<class>/<image>.JPEG: 15 real photos incl. a grey, a CMYK and a progressive JPEG."""
    split = root / "train"
    special = {(0, 1): "gray", (1, 2): "cmyk", (2, 3): "progressive"}
    for k, c in enumerate(CLASSES):
        d = split / c
        d.mkdir(parents=True)
        for j in range(PER_CLASS):
            _save(_photo(k, j), d / f"{c}_{j}.JPEG", special.get((k, j), "baseline"), quality=75 + 4 * j)
    if corrupt:
        (split / CLASSES[1] / f"{CLASSES[1]}_0.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (root / "val").symlink_to(split, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("nvjpeg"))


def _spec(root: Path, **kw) -> LoaderSpec:
    base = dict(root=str(root), split="train", recipe="moco_plus", image_size=SIZE, batch_size=4,
                device="cpu", workers=2, seed=7, train=True)
    base.update(kw)
    return LoaderSpec(**base)


def _tv_decode(path: str) -> torch.Tensor:
    return decode_jpeg(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.RGB)


def _eval_ref(img: torch.Tensor) -> torch.Tensor:
    return TF.center_crop(TF.resize(img, [eval_resize_size(SIZE)], antialias=True), [SIZE, SIZE])


def _collect(loader) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    views, labels = [], []
    for v, lab in loader:
        views.append([x.cpu() for x in v])
        labels.append(lab.cpu())
    return views, labels


def test_jpeg_header_sniffing(data_root):
    files = {p.stem: p for p in (data_root / "train").rglob("*.JPEG")}
    base = jpeg_header(np.fromfile(files[f"{CLASSES[0]}_0"], dtype=np.uint8))
    assert base is not None and (base.height, base.width) == _photo(0, 0).shape[:2]
    assert base.components == 3 and not base.progressive
    assert jpeg_header(files[f"{CLASSES[0]}_1"].read_bytes()).components == 1
    assert jpeg_header(torch.from_numpy(np.fromfile(files[f"{CLASSES[1]}_2"], dtype=np.uint8))).components == 4
    assert jpeg_header(files[f"{CLASSES[2]}_3"].read_bytes()).progressive
    png = io.BytesIO()
    Image.fromarray(_photo(0, 0)).save(png, "PNG")
    assert jpeg_header(png.getvalue()) is None
    assert jpeg_header(b"\xff\xd8\xff") is None


def test_train_crops_equal_torchvision(data_root):
    loader = build_nvjpeg_loader(_spec(data_root, recipe="byol_asym"))
    try:
        ds = datasets.ImageFolder(str(data_root / "train"))
        assert loader.output == "uint8" and loader.flipped and loader.num_classes == 3
        assert loader.classes == ds.classes
        loader.set_epoch(2)
        ids = loader.batch_indices()[0]
        views, labels = next(iter(loader))
        assert len(views) == len(get_recipe("byol_asym")) == 2
        imgs = [_tv_decode(ds.samples[i][0]) for i in ids]
        assert all(im.shape[0] == 3 for im in imgs)  # the grey and CMYK files come out RGB too
        params = loader.crop_params(2, 0, [im.shape[1] for im in imgs], [im.shape[2] for im in imgs])
        n_flips = 0
        for v, (boxes, flips) in zip(views, params):
            assert v.dtype == torch.uint8 and v.shape == (4, 3, SIZE, SIZE)
            for b, im in enumerate(imgs):
                t, l, h, w = (int(x) for x in boxes[b])
                assert 0 <= t and t + h <= im.shape[1] and 0 <= l and l + w <= im.shape[2]
                ref = TF.resized_crop(im, t, l, h, w, [SIZE, SIZE], antialias=True)
                if flips[b]:
                    ref = TF.horizontal_flip(ref)
                    n_flips += 1
                torch.testing.assert_close(v[b], ref, atol=0, rtol=0)
        assert not np.array_equal(params[0][0], params[1][0]), "each view draws its own window"
        torch.testing.assert_close(labels, torch.tensor([ds.targets[i] for i in ids]))
        # flips follow flip_p = 0.5 over many draws
        rate = np.mean([f for e in range(200) for _, f in loader.crop_params(e, 0, [60] * 4, [60] * 4)])
        assert 0.45 < rate < 0.55
    finally:
        loader.close()


@pytest.mark.parametrize("world", [2, 3])
def test_sharding_disjoint_and_complete(data_root, world):
    n, bs, epoch = 3 * PER_CLASS, 2, 4
    targets = datasets.ImageFolder(str(data_root / "train")).targets
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
    per_rank = (n // world // bs) * bs
    seen = []
    for rank in range(world):
        ld = NvJpegLoader(_spec(data_root, batch_size=bs, rank=rank, world_size=world))
        try:
            ld.set_epoch(epoch)
            assert len(ld) == per_rank // bs
            batches = ld.batch_indices()
            _, labels = _collect(ld)
            assert len(labels) == len(batches) == len(ld)
            for ids, lab in zip(batches, labels):
                assert lab.tolist() == [targets[i] for i in ids]
            seen.append([i for b in batches for i in b])
        finally:
            ld.close()
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)) == per_rank * world, "ranks overlap"
    assert set(flat) == set(perm[:per_rank * world])
    # another epoch draws another order
    ld = NvJpegLoader(_spec(data_root, batch_size=bs, rank=0, world_size=world))
    ld.set_epoch(epoch + 1)
    assert [i for b in ld.batch_indices() for i in b] != seen[0]
    ld.close()

    # eval: ordered, last batch kept, every sample covered by the union of ranks
    union = set()
    ds = datasets.ImageFolder(str(data_root / "val"))
    for rank in range(world):
        ld = NvJpegLoader(_spec(data_root, split="val", recipe="eval", batch_size=bs, rank=rank,
                                world_size=world, train=False))
        try:
            ld.set_epoch(0)
            views, labels = _collect(ld)
            ids = [i for b in ld.batch_indices() for i in b]
            assert sum(x.shape[0] for x in labels) == len(ids) == -(-n // world)
            assert torch.cat(labels).tolist() == [ds.targets[i] for i in ids]
            union |= set(ids)
            if rank == 0:  # pixels of eval views: resize short side + centre crop, as torchvision
                for b, i in enumerate(ld.batch_indices()[0]):
                    torch.testing.assert_close(views[0][0][b], _eval_ref(_tv_decode(ds.samples[i][0])),
                                               atol=0, rtol=0)
        finally:
            ld.close()
    assert union == set(range(n))


def test_labels_and_order_match_imagefolder(data_root):
    ds = datasets.ImageFolder(str(data_root / "val"))
    ld = NvJpegLoader(_spec(data_root, split="val", recipe="eval", batch_size=4, train=False))
    try:
        ld.set_epoch(0)
        assert ld.classes == ds.classes and ld.num_classes == len(ds.classes)
        views, labels = _collect(ld)
        assert [x.shape[0] for x in labels] == [4, 4, 4, 3]  # last partial batch kept
        assert torch.cat(labels).tolist() == ds.targets
        assert all(len(v) == 1 and v[0].shape[1:] == (3, SIZE, SIZE) for v in views)
        assert ld.stats["bad_samples"] == 0
    finally:
        ld.close()


def test_corrupt_jpeg_is_replaced_and_counted(tmp_path, caplog):
    root = _make_folder(tmp_path, corrupt=True)
    ds = datasets.ImageFolder(str(root / "val"))
    bad_path = str(root / "val" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG")
    bad = [p for p, _ in ds.samples].index(bad_path)
    ld = NvJpegLoader(_spec(root, split="val", recipe="eval", batch_size=5, train=False))
    try:
        with caplog.at_level(logging.WARNING, logger="fastairl.data.nvjpeg_loader"):
            for epoch in range(2):
                ld.set_epoch(epoch)
                views, labels = _collect(ld)
        out = torch.cat([v[0] for v in views])
        lab = torch.cat(labels)
        assert ld.stats["bad_samples"] == 1 and ld.stats["replacements"] == 2  # once per epoch
        assert list(ld.bad_samples) == [bad]
        # the next sample stands in, pixels and label
        torch.testing.assert_close(out[bad], _eval_ref(_tv_decode(ds.samples[bad + 1][0])), atol=0, rtol=0)
        assert lab[bad] == ds.targets[bad + 1]
        assert out.shape[0] == len(ds)
        msgs = [r.getMessage() for r in caplog.records if "cannot decode" in r.getMessage()]
        assert len(msgs) == 1 and bad_path in msgs[0], "logged once per bad sample, with its path"
    finally:
        ld.close()
    # train mode uses the same replacement path
    ld = NvJpegLoader(_spec(root, batch_size=5))
    try:
        for e in range(3):
            ld.set_epoch(e)
            _collect(ld)
        assert ld.stats["bad_samples"] == 1 and ld.stats["replacements"] == 3  # every epoch covers all 15
    finally:
        ld.close()


def test_resume_from_start_batch(data_root):
    ld = NvJpegLoader(_spec(data_root, batch_size=3))
    try:
        ld.set_epoch(5)
        full_ids = ld.batch_indices()
        full_views, full_labels = _collect(ld)
        assert len(full_views) == len(ld) == 5
        ld.set_epoch(5, start_batch=2)
        assert len(ld) == 3
        assert ld.batch_indices() == full_ids[2:]
        views, labels = _collect(ld)
    finally:
        ld.close()
    assert len(views) == 3
    for a, b in zip(views, full_views[2:]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=0, rtol=0)
    for a, b in zip(labels, full_labels[2:]):
        assert a.tolist() == b.tolist()


def test_stopping_early_and_bad_input(data_root, tmp_path):
    ld = NvJpegLoader(_spec(data_root, batch_size=2))
    ld.set_epoch(0)
    it = iter(ld)
    next(it)
    it.close()  # the prefetch thread must stop, and a new epoch must still work
    ld.set_epoch(1)
    assert len(_collect(ld)[1]) == len(ld)
    ld.close()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        NvJpegLoader(_spec(tmp_path))
    with pytest.raises(ValueError, match="too few"):
        NvJpegLoader(_spec(data_root, batch_size=64))
    with pytest.raises(ValueError, match="source='lmdb'"):
        NvJpegLoader(_spec(data_root, extra={"source": "lmdb"}))


def test_beton_source(tmp_path):
    pytest.importorskip("ffcv", reason="ffcv (1.0.2) writes the .beton under test")
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from fastairl.data.beton import BetonReader

    items = [(_photo(k, j), k) for k in range(3) for j in range(3)]

    class Items:
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]

    DatasetWriter(str(tmp_path / "val.beton"), {"image": RGBImageField(write_mode="jpg"), "label": IntField()},
                  page_size=1 << 21, num_workers=1).from_indexed_dataset(Items())
    (tmp_path / "classes.json").write_text('{"classes": ["a", "b", "c"]}')
    ld = NvJpegLoader(_spec(tmp_path, split="val", recipe="eval", batch_size=4, train=False))
    try:
        assert ld.source.kind == "beton" and ld.classes == ["a", "b", "c"]
        ld.set_epoch(0)
        views, labels = _collect(ld)
        assert torch.cat(labels).tolist() == [lab for _, lab in items]
        r = BetonReader(tmp_path / "val.beton")
        out = torch.cat([v[0] for v in views])
        for i in range(len(items)):
            ref = _eval_ref(decode_jpeg(torch.from_numpy(r.jpeg(i).copy()), mode=ImageReadMode.RGB))
            torch.testing.assert_close(out[i], ref, atol=0, rtol=0)
    finally:
        ld.close()


# ------------------------------------------------------------------ GPU path (its CPU twin runs above)

@needs_cuda
def test_gpu_decode_matches_cpu_twin(tmp_path):
    root = _make_folder(tmp_path, corrupt=True)
    outs = {}
    for dev in ("cpu", "cuda"):
        for train in (True, False):
            ld = NvJpegLoader(_spec(root, device=dev, batch_size=5, train=train,
                                    split="train" if train else "val", recipe="moco_plus" if train else "eval"))
            try:
                ld.set_epoch(1)
                views, labels = [], []
                for v, lab in ld:
                    assert all(x.device.type == dev for x in v) and lab.device.type == dev
                    views.append([x.float().mean(dim=(1, 2, 3)).cpu() for x in v] + [x.cpu() for x in v])
                    labels.append(lab.cpu())
                outs[dev, train] = (views, labels, dict(ld.stats))
            finally:
                ld.close()
    for train in (True, False):
        (cv, cl, cs), (gv, gl, gs) = outs["cpu", train], outs["cuda", train]
        assert [x.tolist() for x in cl] == [x.tolist() for x in gl]
        assert cs["bad_samples"] == gs["bad_samples"] == 1
        assert gs["cpu_decodes"] >= 1  # the CMYK file goes to the CPU decoder
        for a, b in zip(cv, gv):
            n = len(a) // 2
            for x, y in zip(a[n:], b[n:]):
                # nvJPEG's IDCT/upsampling differs from libjpeg-turbo by a few levels; the
                # crops (same windows: same decoded sizes, same seeds) must agree closely.
                diff = (x.float() - y.float()).abs()
                assert diff.mean() < 3.0, f"mean abs diff {diff.mean():.2f}"


@needs_cuda
def test_gpu_batches_are_safe_on_the_consumer_stream(data_root):
    ld = NvJpegLoader(_spec(data_root, device="cuda", batch_size=3))
    try:
        ld.set_epoch(0)
        first = None
        for views, labels in ld:
            s = sum(float(v.float().sum()) for v in views)  # runs on the current stream
            first = s if first is None else first
            assert views[0].is_contiguous() and views[0].dtype == torch.uint8
        ld.set_epoch(0)
        views, _ = next(iter(ld))
        assert sum(float(v.float().sum()) for v in views) == first
    finally:
        ld.close()
