"""BetonReader against ffcv's own writer and reader, on real photographs.

The files here are written by ffcv 1.0.2's DatasetWriter; the reader is checked against
ffcv's Reader (metadata, labels) and its OS-cache memory manager (payload bytes), and
against the pixels that went in.
"""
from __future__ import annotations

import io
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastairl.data.beton import BetonError, BetonReader, read_classes_json

skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the test photographs")

# (source, top, left, height, width); the last one is larger than MAX_RES so the writer
# shrinks it (its stored size must then be what the metadata says).
CROPS = [
    ("astronaut", 0, 0, 96, 128), ("astronaut", 200, 150, 120, 90), ("chelsea", 30, 60, 100, 100),
    ("chelsea", 0, 200, 77, 143), ("coffee", 50, 10, 130, 111), ("coffee", 100, 300, 64, 150),
    ("astronaut", 40, 40, 300, 220),
]
MAX_RES = 160
PAGE = 1 << 21  # ffcv's smallest page size keeps the files at a few MiB


def _real_jpeg_pixels(src: str, top: int, left: int, h: int, w: int, quality: int = 88) -> np.ndarray:
    """A crop of a photograph, round-tripped through a real JPEG file."""
    img = getattr(skdata, src)()[top:top + h, left:left + w]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def ffcv_mod():
    return pytest.importorskip("ffcv", reason="ffcv (1.0.2) is needed to write reference .beton files")


@pytest.fixture(scope="module")
def samples():
    return [(_real_jpeg_pixels(*c), k % 3) for k, c in enumerate(CROPS)]


class _Items:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _write(ffcv_mod, path: Path, fields: dict, items) -> Path:
    from ffcv.writer import DatasetWriter
    DatasetWriter(str(path), fields, page_size=PAGE, num_workers=1).from_indexed_dataset(_Items(items))
    return path


@pytest.fixture(scope="module")
def jpeg_beton(ffcv_mod, samples, tmp_path_factory):
    from ffcv.fields import IntField, RGBImageField
    path = tmp_path_factory.mktemp("beton") / "train.beton"
    return _write(ffcv_mod, path, {"image": RGBImageField(write_mode="jpg", max_resolution=MAX_RES, jpeg_quality=90),
                                   "label": IntField()}, samples)


def _ffcv_payloads(path: Path):
    """Payload bytes of every sample as ffcv's own reader + OS-cache memory manager see them."""
    from ffcv.memory_managers import OSCacheManager
    from ffcv.reader import Reader
    r = Reader(str(path))
    mgr = OSCacheManager(r)
    ctx = mgr.schedule_epoch(None)
    with ctx:
        mm = ctx.mmap
        out = []
        for ptr in r.metadata["f0"]["data_ptr"]:
            size = int(mgr.ptr_to_size[ptr])
            out.append(bytes(mm[int(ptr):int(ptr) + size]))
    return r, out


def test_jpeg_payloads_and_labels_match_ffcv(jpeg_beton, samples):
    r, payloads = _ffcv_payloads(jpeg_beton)
    b = BetonReader(jpeg_beton)
    assert len(b) == len(samples) == int(r.num_samples)
    assert b.field_names == r.field_names == ["image", "label"]
    assert b.image_field == "image" and b.label_field == "label"
    np.testing.assert_array_equal(b.labels, r.metadata["f1"])
    np.testing.assert_array_equal(b.labels, [lab for _, lab in samples])
    assert b.labels.dtype == np.int64
    np.testing.assert_array_equal(b.heights, r.metadata["f0"]["height"])
    np.testing.assert_array_equal(b.widths, r.metadata["f0"]["width"])
    for i, (pix, _) in enumerate(samples):
        assert b.image_mode(i) == "jpeg"
        view = b.jpeg(i)
        assert view.dtype == np.uint8 and view.ndim == 1
        assert view.tobytes() == payloads[i], f"sample {i}: payload differs from ffcv's"
        assert view[:2].tobytes() == b"\xff\xd8"
        dec = b.image(i)
        assert dec.shape == (int(b.heights[i]), int(b.widths[i]), 3)
        if max(pix.shape[:2]) <= MAX_RES:
            # the very image that went in (a JPEG re-encode away): the index is right
            assert dec.shape == pix.shape
            assert np.abs(dec.astype(int) - pix.astype(int)).mean() < 4.0
        else:
            s = MAX_RES / max(pix.shape[:2])
            assert max(dec.shape[:2]) <= MAX_RES
            assert abs(dec.shape[0] - pix.shape[0] * s) <= 1 and abs(dec.shape[1] - pix.shape[1] * s) <= 1
    # a view of the map, not a copy
    assert not b.jpeg(0).flags.owndata and not b.jpeg(0).flags.writeable


def test_reader_is_thread_safe_and_pickles(jpeg_beton):
    b = BetonReader(jpeg_beton)
    want = [b.jpeg(i).tobytes() for i in range(len(b))]
    order = [i % len(b) for i in range(200)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: b.jpeg(i).tobytes(), order))
    assert got == [want[i] for i in order]
    b2 = pickle.loads(pickle.dumps(b))
    assert len(pickle.dumps(b)) < 1000  # the path travels, not the map
    assert [b2.jpeg(i).tobytes() for i in range(len(b2))] == want
    np.testing.assert_array_equal(b2.labels, b.labels)
    with pytest.raises(IndexError, match="out of range"):
        b.jpeg(len(b))


def test_raw_and_jpeg_samples_mixed(ffcv_mod, samples, tmp_path):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader
    small = [(p, lab) for p, lab in samples if max(p.shape[:2]) <= MAX_RES]
    np.random.seed(3)  # the writer draws jpeg-or-raw per image from numpy's global generator (forked)
    path = _write(ffcv_mod, tmp_path / "mixed.beton",
                  {"image": RGBImageField(write_mode="proportion", compress_probability=0.5), "label": IntField()},
                  small)
    r = Reader(str(path))
    b = BetonReader(path)
    np.testing.assert_array_equal(b.modes, r.metadata["f0"]["mode"])
    assert {b.image_mode(i) for i in range(len(b))} == {"jpeg", "raw"}, "seed should give both modes"
    for i, (pix, _) in enumerate(small):
        if b.image_mode(i) == "raw":
            np.testing.assert_array_equal(b.raw(i), pix)
            np.testing.assert_array_equal(b.image(i), pix)
            with pytest.raises(BetonError, match="raw pixels"):
                b.jpeg(i)
        else:
            assert b.jpeg(i)[:2].tobytes() == b"\xff\xd8"
            with pytest.raises(BetonError, match="stored as JPEG"):
                b.raw(i)


def test_other_fields_shift_the_layout(ffcv_mod, samples, tmp_path):
    """Extra fields before and between the image and the label: offsets must follow ffcv's struct layout."""
    from ffcv.fields import FloatField, IntField, JSONField, RGBImageField
    items = [(1000 + i, {"k": i}, pix, 0.5 * i, lab) for i, (pix, lab) in enumerate(samples[:4])]
    path = _write(ffcv_mod, tmp_path / "fields.beton",
                  {"id": IntField(), "meta": JSONField(), "photo": RGBImageField(write_mode="jpg"),
                   "weight": FloatField(), "label": IntField()}, items)
    from ffcv.reader import Reader
    r = Reader(str(path))
    assert r.metadata.dtype.itemsize == BetonReader(path).metadata.dtype.itemsize
    b = BetonReader(path, label_field="label")
    assert b.image_field == "photo"
    assert b.field_types == {"id": "int", "meta": "json", "photo": "rgb_image", "weight": "float", "label": "int"}
    np.testing.assert_array_equal(b.labels, [it[-1] for it in items])
    np.testing.assert_array_equal(b.heights, [it[2].shape[0] for it in items])
    np.testing.assert_array_equal(BetonReader(path).labels, [it[0] for it in items])  # first int field by default
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for i in range(len(items)):
        ptr = int(r.metadata["f2"]["data_ptr"][i])
        assert b.jpeg(i).tobytes() == bytes(mm[ptr:ptr + b.jpeg(i).shape[0]])
    with pytest.raises(BetonError, match="no int field named 'nope'"):
        BetonReader(path, label_field="nope")


def test_file_without_image_field(ffcv_mod, tmp_path):
    from ffcv.fields import FloatField, IntField
    path = _write(ffcv_mod, tmp_path / "scalars.beton", {"x": FloatField(), "y": IntField()},
                  [(0.25 * i, i) for i in range(5)])
    with pytest.raises(BetonError, match=r"scalars\.beton.*no RGB image field"):
        BetonReader(path)


@pytest.mark.parametrize("cut", ["data", "table_partial", "table_record", "header"])
def test_truncated_file_is_named(jpeg_beton, tmp_path, cut):
    bad = tmp_path / f"cut_{cut}.beton"
    shutil.copy(jpeg_beton, bad)
    size = bad.stat().st_size
    table_at = int(np.fromfile(bad, dtype="<u8", count=1, offset=16)[0])
    new_size = {"data": table_at - 1000, "table_partial": size - 10, "table_record": size - 24, "header": 10}[cut]
    with open(bad, "r+b") as f:
        f.truncate(new_size)
    with pytest.raises(BetonError) as e:
        BetonReader(bad)
    msg = str(e.value)
    assert str(bad) in msg
    assert ("truncated" in msg) or ("too short" in msg)


def test_foreign_files_are_named(tmp_path):
    jpg = tmp_path / "photo.beton"
    Image.fromarray(skdata.chelsea()).save(jpg, "JPEG")
    with pytest.raises(BetonError, match=r"photo\.beton: not an ffcv 1\.0 \.beton"):
        BetonReader(jpg)
    tiny = tmp_path / "tiny.beton"
    tiny.write_bytes(b"hello")
    with pytest.raises(BetonError, match=r"tiny\.beton: 5 bytes, too short"):
        BetonReader(tiny)
    # right version number, nonsense after it
    fake = tmp_path / "fake.beton"
    fake.write_bytes(np.array([2, 0], "<u2").tobytes() + b"\x00" * 200)
    with pytest.raises(BetonError, match=r"fake\.beton"):
        BetonReader(fake)
    with pytest.raises(FileNotFoundError, match=r"missing\.beton"):
        BetonReader(tmp_path / "missing.beton")


def test_classes_json(tmp_path):
    assert read_classes_json(tmp_path) is None
    (tmp_path / "classes.json").write_text('{"classes": ["cat", "dog"]}')
    assert read_classes_json(tmp_path) == ["cat", "dog"]
    (tmp_path / "classes.json").write_text('["cat"]')
    with pytest.raises(BetonError, match="classes.json"):
        read_classes_json(tmp_path)
