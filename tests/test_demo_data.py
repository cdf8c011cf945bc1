"""The built-in demo dataset and the real-photo benchmark folder.

Everything here writes real JPEG folders into tmp_path and reads them back with PIL.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastairl.data import demo, photos
from fastairl.data.demo import (
    CLASS_NAMES, IMAGE_SIZE, QUALITY_RANGE, class_folder_names, ensure_demo_data, make_demo_data,
)
from fastairl.data.cache import cache_dir, folder_lock, read_done
from fastairl.data.photos import ensure_photo_set, load_source_photos, make_photo_set

REPO = Path(__file__).resolve().parents[1]
DEMO_CLI = REPO / "data_prep" / "make_demo_data.py"
PHOTO_CLI = REPO / "data_prep" / "make_photo_set.py"

# JPEG standard (ITU T.81 Annex K) luminance quantisation table, used to estimate the
# quality setting a file was written with (libjpeg scales this table by quality).
_ANNEX_K_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


def _jpeg_quality(im: Image.Image) -> int:
    """The libjpeg quality whose luminance table matches the file's (order-free match)."""
    table = np.sort(np.asarray(im.quantization[0]))
    best, best_err = 0, None
    for q in range(1, 101):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        ref = np.sort(np.clip((_ANNEX_K_LUMA * scale + 50) // 100, 1, 255))
        err = np.abs(ref - table).sum()
        if best_err is None or err < best_err:
            best, best_err = q, err
    return best


def _files(root: Path, split: str) -> dict[str, list[Path]]:
    return {d.name: sorted(d.iterdir()) for d in sorted((root / split).iterdir())}


def _run(args: list, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, **kw)


def _cli(path: Path):
    """Load a data_prep script as a module, so its main() runs in-process (no new interpreter)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------
# Demo dataset
# --------------------------------------------------------------------------------------

def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTAIRL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FASTAIRL_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "fastairl"


def test_demo_layout_sizes_and_marker(tmp_path):
    out = make_demo_data(tmp_path / "demo", seed=0, train_per_class=4, val_per_class=2)
    assert out == tmp_path / "demo"
    names = class_folder_names()
    assert names == sorted(names) and len(names) == 10
    assert [n.split("_", 1)[1] for n in names] == list(CLASS_NAMES)
    qualities = set()
    for split, per_class in (("train", 4), ("val", 2)):
        files = _files(out, split)
        assert list(files) == names
        for cls, paths in files.items():
            assert len(paths) == per_class
            for p in paths:
                assert p.suffix == ".JPEG"
                with Image.open(p) as im:
                    assert im.format == "JPEG" and im.mode == "RGB"
                    assert im.size == (IMAGE_SIZE, IMAGE_SIZE), (p, im.size)
                    q = _jpeg_quality(im)
                    assert QUALITY_RANGE[0] - 2 <= q <= QUALITY_RANGE[1] + 2, (p, q)
                    qualities.add(q)
                    im.load()  # the whole stream decodes
    assert len(qualities) > 5  # qualities really vary
    done = json.loads((out / "DONE").read_text())
    assert done["images"] == 60 and done["classes"] == names
    assert done["seed"] == 0 and done["train_per_class"] == 4 and done["val_per_class"] == 2
    assert done["bytes"] == sum(p.stat().st_size for p in out.rglob("*.JPEG"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp folders left


def test_demo_is_deterministic_and_order_independent(tmp_path):
    kw = dict(train_per_class=3, val_per_class=1, num_classes=3)
    a = make_demo_data(tmp_path / "a", seed=5, workers=1, **kw)
    b = make_demo_data(tmp_path / "b", seed=5, workers=2, **kw)  # pool: other order
    c = make_demo_data(tmp_path / "c", seed=6, workers=1, **kw)
    fa = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert len(fa) == 12
    assert fa == sorted(p.relative_to(b) for p in b.rglob("*.JPEG"))
    assert fa == sorted(p.relative_to(c) for p in c.rglob("*.JPEG"))
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        assert (a / rel).read_bytes() != (c / rel).read_bytes(), rel


def test_demo_refuses_to_overwrite(tmp_path, capsys):
    cli = _cli(DEMO_CLI)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    small = ["--train-per-class", "2", "--val-per-class", "1", "--classes", "2"]
    assert cli.main(["--out", str(out), *small]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "user data"
    with pytest.raises(FileExistsError, match=str(out)):
        make_demo_data(out, train_per_class=2, val_per_class=1, num_classes=2)
    assert (out / "precious.txt").exists()

    assert cli.main(["--out", str(out), "--overwrite", *small]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert not (out / "precious.txt").exists() and read_done(out)["images"] == 6

    for bad in (["--classes", "11"], ["--train-per-class", "0"], ["--val-per-class", "x"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--out", str(tmp_path / "x"), *bad])
        assert exc.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _colour_feature(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0)


def _structure_feature(im: Image.Image) -> np.ndarray:
    """Rotation-invariant edge statistics: harmonics of the edge-direction histogram.

    The magnitude of the k-th Fourier coefficient of a direction histogram does not
    change when the image rotates (a shift of the histogram), nor when the object's
    contrast flips sign (a half-turn), so it describes corner/edge *structure* only.
    """
    g = np.asarray(im.convert("L").resize((160, 140)), dtype=np.float32)
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), 2 * np.pi)
    bins = ((ang / (2 * np.pi)) * 72).astype(int).clip(0, 71).ravel()
    feats = []
    for pct in (85, 95):
        strong = mag * (mag > max(np.percentile(mag, pct), 6.0))
        hist = np.bincount(bins, weights=strong.ravel(), minlength=72)
        spec = np.abs(np.fft.rfft(hist))
        feats.append(spec[1:13] / (spec[0] + 1e-6))
    feats.append([(mag > 12).mean() * 10, (mag > 25).mean() * 10])
    return np.concatenate(feats)


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier on standardised features.

    Leave-one-out uses every image both to fit and to test (never the same image for
    both), which keeps the estimate steady on a small sample.
    """
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    k = int(y.max()) + 1
    n = np.bincount(y, minlength=k).astype(np.float64)
    sums = np.stack([x[y == c].sum(0) for c in range(k)])
    dist = ((x[:, None, :] - (sums / n[:, None])[None]) ** 2).sum(-1)
    own = (sums[y] - x) / (n[y] - 1)[:, None]  # each image's class mean without itself
    dist[np.arange(len(y)), y] = ((x - own) ** 2).sum(-1)
    return float((dist.argmin(1) == y).mean())


def _class_features(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, list]]:
    """Mean colour, edge structure, labels, and per class the images' mean-hue unit vectors."""
    colour_x, shape_x, labels, hues = [], [], [], {}
    for split in ("train", "val"):
        for label, paths in enumerate(_files(out, split).values()):
            for p in paths:
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    colour_x.append(_colour_feature(im))
                    shape_x.append(_structure_feature(im))
                    hsv = np.asarray(im.convert("HSV"), dtype=np.float64)
                ang, sat = hsv[..., 0] / 256 * 2 * np.pi, hsv[..., 1]
                v = np.array([(sat * np.cos(ang)).sum(), (sat * np.sin(ang)).sum()])
                hues.setdefault(label, []).append(v / (np.linalg.norm(v) + 1e-9))
                labels.append(label)
    return np.stack(colour_x), np.stack(shape_x), np.array(labels), hues


def _hue_agreement(hues: dict[int, list]) -> list[float]:
    """Per class, the length of the mean of its images' hue directions: near 1 when a class
    has one hue, about 1/sqrt(n) when every image has its own."""
    return [float(np.linalg.norm(np.mean(h, 0))) for h in hues.values()]


def test_demo_label_is_in_content_not_colour(tmp_path, monkeypatch):
    """Each class is one photograph; every image gets its own hue. So mean colour names
    the class poorly, edge structure (colour-blind) names it well, and a class's images
    share no hue: what the augmentations keep (content across crops and colour changes)
    is what the classes are."""
    out = make_demo_data(tmp_path / "d", seed=11, train_per_class=16, val_per_class=6, workers=1)
    colour_x, shape_x, y, hues = _class_features(out)
    colour = _nearest_centroid_accuracy(colour_x, y)
    shape = _nearest_centroid_accuracy(shape_x, y)
    # 10 classes: chance is 0.10 (brightness keeps a little: the deep-field photo is dark).
    assert colour < 0.4, f"mean colour predicts the class ({colour:.2f}): colour leaks the label"
    assert shape > 0.5 and shape > colour + 0.25, (shape, colour)
    assert max(_hue_agreement(hues)) < 0.6, _hue_agreement(hues)
    # The hue check has the power to see a class with one hue: without the colour shift,
    # most classes keep their photograph's hue.
    monkeypatch.setattr(demo, "_colour_shift", lambda arr, rng: arr)
    plain = make_demo_data(tmp_path / "plain", seed=11, train_per_class=16, val_per_class=6, workers=1)
    agreement = _hue_agreement(_class_features(plain)[3])
    assert sum(a > 0.6 for a in agreement) >= 6, agreement


def test_demo_without_its_photographs_says_what_to_install(tmp_path):
    r = _run(["-c", textwrap.dedent("""
        import sys
        sys.modules["skimage"] = None  # as if scikit-image were not installed
        from fastairl.data.demo import make_demo_data
        try:
            make_demo_data(sys.argv[1], train_per_class=2, val_per_class=1)
        except RuntimeError as e:
            print("ERROR:", e)
    """), tmp_path / "d"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERROR: the demo dataset is cut from photographs"), r.stdout
    assert "astronaut" in r.stdout and "pip install" in r.stdout
    assert not (tmp_path / "d").exists()


def test_interrupted_generation_never_looks_complete(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, str(DEMO_CLI), "--out", str(out), "--workers", "1",
                             "--train-per-class", "40", "--val-per-class", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = tmp_path / f"demo.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if tmp.is_dir() and len(list(tmp.rglob("*.JPEG"))) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "generator finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert tmp.is_dir() and not (tmp / "DONE").exists()

    # ensure_* clears the dead generator's leftovers and builds the folder properly.
    got = ensure_demo_data(out, seed=0, train_per_class=2, val_per_class=1, num_classes=3)
    assert got == out and read_done(out)["images"] == 9
    assert not tmp.exists()
    # A folder the user named is reused only if it was made with the same parameters.
    with pytest.raises(FileExistsError, match=str(out)):
        ensure_demo_data(out, seed=1, train_per_class=2, val_per_class=1, num_classes=3)


_ENSURE_CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from fastairl.data.demo import ensure_demo_data
    print("ready", flush=True)
    sys.stdin.readline()  # the test releases both children at once
    path = ensure_demo_data(seed=3, train_per_class=5, val_per_class=2, num_classes=4, workers=1)
    print(path, flush=True)
""")


def test_concurrent_ensure_generates_once(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "FASTAIRL_CACHE": str(cache)}
    target = cache / f"demo-v{demo.DEMO_VERSION}-s3-t5-v2-c4"
    # Hold the lock while both children start, so they really contend for it.
    with folder_lock(target):
        procs = [subprocess.Popen([sys.executable, "-c", _ENSURE_CHILD], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(0.5)  # let both reach the lock
        assert not target.exists()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        assert stdout.split() == [str(target)]  # "ready" was read above
    generated = sum(stderr.count("generating the demo dataset") for _, stderr in results)
    assert generated == 1, [r[1] for r in results]
    done = read_done(target)
    assert done["images"] == 28
    assert sum(1 for _ in target.rglob("*.JPEG")) == 28
    leftovers = [p.name for p in cache.iterdir() if p.name != target.name and not p.name.endswith(".lock")]
    assert leftovers == []


# --------------------------------------------------------------------------------------
# Real-photo benchmark folder
# --------------------------------------------------------------------------------------

def _photo_stats(im: Image.Image) -> tuple[float, float, float]:
    """Grey-level entropy (bits), mean |Laplacian| and power-spectrum slope of an image."""
    g = np.asarray(im.convert("L"), dtype=np.float64)
    hist = np.bincount(g.astype(np.uint8).ravel(), minlength=256) / g.size
    entropy = float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())
    lap = float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1]
                       - g[1:-1, :-2] - g[1:-1, 2:]).mean())
    power = np.abs(np.fft.fft2(g - g.mean())) ** 2
    fy, fx = np.fft.fftfreq(g.shape[0])[:, None], np.fft.fftfreq(g.shape[1])[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    band = (f > 0.02) & (f < 0.4)
    slope = float(np.polyfit(np.log(f[band]), np.log(power[band] + 1e-9), 1)[0])
    return entropy, lap, slope


def _looks_photographic(stats: np.ndarray, reference_lap: float) -> bool:
    """Median statistics of a set of images against those of a known photograph.

    Natural photographs have power spectra falling roughly as 1/f^2 (slope about -2 to
    -4), rich grey-level histograms, and fine detail of the same order as a real photo.
    """
    entropy, lap, slope = np.median(stats, axis=0)
    return bool(entropy > 5.5 and -5.0 < slope < -1.5 and reference_lap / 4 < lap < reference_lap * 4)


def test_photo_set_layout_sizes_and_content(tmp_path):
    sources = list(load_source_photos())
    assert "grace_hopper" in sources  # matplotlib's photo is always there with matplotlib
    out = make_photo_set(tmp_path / "ph", n_images=64, num_classes=8, seed=0)
    done = read_done(out)
    assert done["train"] == 56 and done["val"] == 8 and done["images"] == 64
    names = done["classes"]
    assert len(names) == 8 and names == sorted(names)
    counts = {}
    stats, areas = [], []
    for split in ("train", "val"):
        files = _files(out, split)
        assert list(files) == names
        counts[split] = {k: len(v) for k, v in files.items()}
        for paths in files.values():
            for p in paths:
                with Image.open(p) as im:
                    assert im.format == "JPEG" and im.mode == "RGB"
                    w, h = im.size
                    assert photos.LONG_SIDE_RANGE[0] <= max(w, h) <= photos.LONG_SIDE_RANGE[1]
                    assert 280 <= min(w, h) <= 470
                    assert 1.15 <= max(w, h) / min(w, h) <= 1.5
                    assert QUALITY_RANGE[0] - 2 <= _jpeg_quality(im) <= QUALITY_RANGE[1] + 2
                    stats.append(_photo_stats(im))
                    areas.append(w * h)
    assert counts["train"] == {n: 7 for n in names} and counts["val"] == {n: 1 for n in names}
    # ImageNet's average image is about 400x350 to 500x375.
    assert 140_000 <= np.mean(areas) <= 260_000

    import matplotlib
    with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as im:
        ref_lap = _photo_stats(im.convert("RGB").resize((500, 375), Image.BICUBIC))[1]
    assert _looks_photographic(np.array(stats), ref_lap)
    # The same check rejects synthetic images: a smooth ramp, and the ramp plus noise.
    ramp = np.tile(np.linspace(0, 255, 500), (375, 1))
    noisy = ramp + np.random.default_rng(0).normal(0, 6, ramp.shape)
    for fake in (ramp, noisy):
        im = Image.fromarray(np.clip(fake, 0, 255).astype(np.uint8)).convert("RGB")
        assert not _looks_photographic(np.array([_photo_stats(im)]), ref_lap)


def test_photo_crops_come_from_their_class_photo(tmp_path):
    """Each class is cut from one photograph: its colour histogram points back to it."""
    src = load_source_photos()
    if len(src) < 4:
        pytest.skip("scikit-image is not installed: only one source photograph")
    out = make_photo_set(tmp_path / "ph", n_images=48, num_classes=len(src), seed=2)

    def hist(a: np.ndarray) -> np.ndarray:
        q = (a.reshape(-1, 3) // 64).astype(int)
        h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(float)
        return h / h.sum()

    names = list(src)
    ref = np.stack([hist(src[n]) for n in names])
    hits = total = 0
    for folder, paths in _files(out, "train").items():
        for p in paths:
            with Image.open(p) as im:
                h = hist(np.asarray(im.convert("RGB")))
            hits += names[int(np.argmin(np.abs(ref - h).sum(1)))] == folder.split("_", 1)[1]
            total += 1
    assert total == 42 and hits / total >= 0.8, hits / total


def test_photo_set_deterministic_cached_and_refuses_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTAIRL_CACHE", str(tmp_path / "cache"))
    a = ensure_photo_set(n_images=16, seed=4, num_classes=4, workers=1)
    assert a == tmp_path / "cache" / "photos-v1-n16-s4-c4"
    marker = (a / "DONE").stat().st_mtime_ns
    assert ensure_photo_set(n_images=16, seed=4, num_classes=4) == a
    assert (a / "DONE").stat().st_mtime_ns == marker  # reused, not regenerated
    assert ensure_photo_set(n_images=16, seed=0) == tmp_path / "cache" / "photos-v1-n16-s0"

    b = make_photo_set(tmp_path / "b", n_images=16, num_classes=4, seed=4, workers=2)
    c = make_photo_set(tmp_path / "c", n_images=16, num_classes=4, seed=5, workers=1)
    rels = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert len(rels) == 16
    for rel in rels:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
        assert (a / rel).read_bytes() != (c / rel).read_bytes()

    assert _cli(PHOTO_CLI).main(["--out", str(b), "--n-images", "16", "--classes", "4"]) == 2
    assert str(b) in capsys.readouterr().err
    assert read_done(b)["seed"] == 4


_NO_SKIMAGE_CHILD = textwrap.dedent("""
    import logging, sys
    sys.modules["skimage"] = None  # make `import skimage` fail as if it were not installed
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    from fastairl.data.photos import make_photo_set
    from fastairl.data.demo import read_done
    out = sys.argv[1]
    make_photo_set(out + "/a", n_images=8, num_classes=2, seed=0)
    make_photo_set(out + "/b", n_images=8, num_classes=2, seed=1)
    print(read_done(out + "/a")["classes"])
    # With neither package there is nothing to cut from: a clear error, not a traceback.
    import fastairl.data.photos as photos
    photos._SOURCES = None
    sys.modules["matplotlib"] = None
    try:
        photos.load_source_photos()
    except RuntimeError as e:
        print("ERROR:", e)
""")


def test_photo_set_without_scikit_image(tmp_path):
    r = _run(["-c", _NO_SKIMAGE_CHILD, tmp_path])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == str(["n00000000_grace_hopper", "n00000001_grace_hopper"])
    assert lines[1].startswith("ERROR: no source photographs") and "scikit-image" in lines[1]
    assert r.stderr.count("scikit-image is not installed") == 1
    assert len(list((tmp_path / "b").rglob("*.JPEG"))) == 8


_EXPORTED_SOURCES_CHILD = textwrap.dedent("""
    import sys
    sys.modules["skimage"] = None  # neither package: only the exported photographs
    sys.modules["matplotlib"] = None
    from fastairl.data.photos import make_photo_set
    make_photo_set(sys.argv[1], n_images=16, num_classes=9, seed=3)
""")


def test_exported_source_photos_give_the_same_set(tmp_path, capsys):
    """A machine without scikit-image and matplotlib, given the exported source
    photographs through FASTAIRL_PHOTO_SOURCES, cuts the same JPEGs byte for byte."""
    cli = _cli(PHOTO_CLI)
    assert cli.main(["--export-sources", str(tmp_path / "src")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "src").iterdir())
    assert len(pngs) == 10 and pngs[0] == "00_astronaut.png" and "05_grace_hopper.png" in pngs
    assert cli.main(["--export-sources", str(tmp_path / "src")]) == 2  # never over an existing folder
    assert "already exists" in capsys.readouterr().err

    here = make_photo_set(tmp_path / "here", n_images=16, num_classes=9, seed=3, workers=1)
    r = _run(["-c", _EXPORTED_SOURCES_CHILD, tmp_path / "there"], env={"FASTAIRL_PHOTO_SOURCES": str(tmp_path / "src")})
    assert r.returncode == 0, r.stderr
    rels = sorted(p.relative_to(here) for p in here.rglob("*.JPEG"))
    assert len(rels) == 16 and rels == sorted(p.relative_to(tmp_path / "there")
                                              for p in (tmp_path / "there").rglob("*.JPEG"))
    for rel in rels:
        assert (here / rel).read_bytes() == (tmp_path / "there" / rel).read_bytes()
    assert read_done(here)["classes"] == read_done(tmp_path / "there")["classes"]

    r = _run(["-c", _EXPORTED_SOURCES_CHILD, tmp_path / "none"], env={"FASTAIRL_PHOTO_SOURCES": str(tmp_path)})
    assert r.returncode != 0 and "FASTAIRL_PHOTO_SOURCES" in r.stderr and "--export-sources" in r.stderr
