"""An ImageNet-sized benchmark folder cut from real photographs shipped inside wheels.

Why this exists: data-loader throughput depends on what the JPEGs contain. Decoders and
resizers spend their time on high-frequency detail and entropy-coded bits, which a
procedural image (even the demo's textured one) has less of than a photograph. To
benchmark and test the loaders on photographic content without network access or an
ImageNet copy, this module cuts random crops out of the colour photographs that
installed packages already carry (scikit-image's ``skimage.data`` and matplotlib's
``mpl-data/sample_data``), resizes them to ImageNet's typical sizes (about 500x375 or
375x500) and saves them at ImageNet-like JPEG qualities (75-95).

Labels: class ``k`` takes its crops from source photo ``k mod S`` (``S`` sources), so
with enough sources a class is "one scene". Without scikit-image only matplotlib's
photo is available and all classes share it; the folder then still serves throughput
benchmarks, but its labels carry no meaning (this is logged).

Like the demo, generation is deterministic per seed, atomic, marked with a ``DONE`` file
and guarded by a file lock in :func:`ensure_photo_set`.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from fastairl.data.cache import build_atomically, cache_dir, ensure_folder, run_tasks

log = logging.getLogger(__name__)

PHOTOS_VERSION = 1
SPLITS = ("train", "val")

#: Output sizes: long side and long/short aspect ratio, both drawn uniformly.
LONG_SIDE_RANGE = (420, 560)
ASPECT_RANGE = (1.2, 1.45)
PORTRAIT_P = 0.25
QUALITY_RANGE = (75, 95)
#: Side of the crop box, as a fraction of the largest box of the output's aspect ratio
#: that fits in the source photo.
CROP_FRACTION = (0.6, 1.0)

_SEED_TAG = 0x9407

# Bundled colour photographs of scikit-image 0.26 (all ship inside the wheel, so
# loading them never triggers a pooch download), in the order classes take them.
# Deliberately left out: synthetic images (color, colorwheel, logo), grey-scale ones but brick,
# and motorcycle_right (the stereo twin of motorcycle_left, i.e. the same scene).
_SKIMAGE_PHOTOS: tuple[tuple[str, Callable], ...] = (
    ("astronaut", lambda d: d.astronaut()),
    ("chelsea", lambda d: d.chelsea()),
    ("coffee", lambda d: d.coffee()),
    ("rocket", lambda d: d.rocket()),
    ("motorcycle", lambda d: d.stereo_motorcycle()[0]),
    ("immunohistochemistry", lambda d: d.immunohistochemistry()),
    ("retina", lambda d: d.retina()),
    ("hubble_deep_field", lambda d: d.hubble_deep_field()),
    # Grey-scale, so stacked to three equal channels; last, so the default 8-class photo
    # set never uses it (the demo tints it per image).
    ("brick", lambda d: np.repeat(np.asarray(d.brick())[..., None], 3, axis=2)),
)
_MPL_PHOTOS = ("grace_hopper.jpg",)
# Where grace_hopper goes in the class order (after the everyday scenes of skimage).
_MPL_POSITION = 5

#: A folder of ``NN_<name>.png`` files written by :func:`export_source_photos`. When set,
#: it is the only source: a machine without scikit-image and matplotlib (a bare GPU
#: machine) then cuts the same photo set as the machine that exported them (PNG is lossless).
SOURCES_ENV = "FASTAIRL_PHOTO_SOURCES"

_SOURCES: dict[str, np.ndarray] | None = None
_warned_no_skimage = False


def export_source_photos(out: Path | str) -> list[Path]:
    """Write the source photographs of this machine to ``out`` as ``NN_<name>.png``, in
    class order, for ``FASTAIRL_PHOTO_SOURCES`` elsewhere. Refuses an existing ``out``."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder for the exported photographs")
    sources = load_source_photos()
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"  # renamed into place once complete
    tmp.mkdir(parents=True)
    try:
        for k, (name, arr) in enumerate(sources.items()):
            Image.fromarray(arr).save(tmp / f"{k:02d}_{name}.png")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out.iterdir())


def _sources_from_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(folder.glob("[0-9][0-9]_*.png")) if folder.is_dir() else []
    if not files:
        raise RuntimeError(f"{SOURCES_ENV}={folder}: no NN_<name>.png photographs there; write them with "
                           f"`python data_prep/make_photo_set.py --export-sources {folder}` on a machine "
                           "with scikit-image, or unset the variable")
    log.info("photo set sources: %d photographs from %s (%s)", len(files), folder, SOURCES_ENV)
    loaded = []
    for f in files:
        with Image.open(f) as im:
            loaded.append((f.stem.split("_", 1)[1], np.asarray(im.convert("RGB"))))
    return loaded


def _mpl_sample_dir() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    return Path(matplotlib.get_data_path()) / "sample_data"


def load_source_photos() -> dict[str, np.ndarray]:
    """The available source photographs as ``name -> (H, W, 3) uint8``, in class order.

    Loaded once per process and cached (pool workers forked afterwards share them).
    Raises RuntimeError if neither scikit-image nor matplotlib provides a photograph.
    """
    global _SOURCES, _warned_no_skimage
    if _SOURCES is not None:
        return _SOURCES
    folder = os.environ.get(SOURCES_ENV)
    if folder:
        _SOURCES = _checked_sources(_sources_from_folder(Path(folder).expanduser()))
        return _SOURCES
    sk: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data as skdata
    except ImportError:
        skdata = None
        if not _warned_no_skimage:
            log.warning("scikit-image is not installed: the photo set uses matplotlib's "
                        "sample photographs alone, so its classes share one source and "
                        "its labels carry no meaning (install scikit-image for more)")
            _warned_no_skimage = True
    if skdata is not None:
        for name, loader in _SKIMAGE_PHOTOS:
            try:
                arr = np.asarray(loader(skdata))
            except (OSError, ModuleNotFoundError, ConnectionError, KeyError, ValueError) as e:
                log.warning("skipping scikit-image photo %s: %s", name, e)
                continue
            sk.append((name, arr))
    mpl: list[tuple[str, np.ndarray]] = []
    sample_dir = _mpl_sample_dir()
    if sample_dir is not None:
        for fname in _MPL_PHOTOS:
            path = sample_dir / fname
            if path.is_file():
                with Image.open(path) as im:
                    mpl.append((Path(fname).stem, np.asarray(im.convert("RGB"))))
            else:
                log.warning("matplotlib sample photo %s is missing", path)
    _SOURCES = _checked_sources(sk[:_MPL_POSITION] + mpl + sk[_MPL_POSITION:])
    return _SOURCES


def _checked_sources(ordered: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    sources = {}
    for name, arr in ordered:
        if arr.ndim != 3 or arr.shape[2] < 3 or arr.dtype != np.uint8:
            log.warning("skipping source photo %s of unexpected shape/dtype %s %s",
                        name, arr.shape, arr.dtype)
            continue
        sources[name] = np.ascontiguousarray(arr[..., :3])
    if not sources:
        raise RuntimeError(
            "no source photographs found: the photo set needs scikit-image (skimage.data) "
            "or matplotlib (mpl-data/sample_data/grace_hopper.jpg); install either, e.g. "
            f"`pip install scikit-image`, or point {SOURCES_ENV} at exported ones"
        )
    return sources


def photo_class_names(num_classes: int) -> list[str]:
    """Folder names ``n<k>_<source>`` (sorted order = label order) for ``num_classes``."""
    names = list(load_source_photos())
    return [f"n{k:08d}_{names[k % len(names)]}" for k in range(num_classes)]


def _split_counts(n_images: int) -> dict[str, int]:
    n_val = max(1, round(n_images / 8))
    return {"train": n_images - n_val, "val": n_val}


def render_photo_crop(rng: np.random.Generator, src: np.ndarray) -> tuple[Image.Image, int]:
    """One random crop of ``src`` at an ImageNet-like size; returns the image and its quality."""
    sh, sw = src.shape[:2]
    long_side = int(rng.integers(LONG_SIDE_RANGE[0], LONG_SIDE_RANGE[1] + 1))
    aspect = float(rng.uniform(*ASPECT_RANGE))
    short_side = int(round(long_side / aspect))
    if rng.random() < PORTRAIT_P:
        ow, oh = short_side, long_side
    else:
        ow, oh = long_side, short_side
    quality = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
    # The crop keeps the output's aspect ratio up to +-8 %, so scenes are hardly distorted.
    crop_aspect = ow / oh * float(rng.uniform(0.92, 1.08))
    box_w, box_h = (sw, sw / crop_aspect) if sw / crop_aspect <= sh else (sh * crop_aspect, sh)
    frac = float(rng.uniform(*CROP_FRACTION))
    cw, ch = box_w * frac, box_h * frac
    x0 = float(rng.uniform(0, sw - cw))
    y0 = float(rng.uniform(0, sh - ch))
    im = Image.fromarray(src, "RGB").resize((ow, oh), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:  # slight exposure / white-balance change
        gain = float(rng.uniform(0.9, 1.1)) * rng.uniform(0.96, 1.04, size=3)
        arr = np.asarray(im, dtype=np.float32) * gain.astype(np.float32)
        im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    return im, quality


def _photo_task(task: tuple[str, int, str, int, str, str]) -> int:
    root, seed, split, index, folder, source = task
    seq = np.random.SeedSequence([_SEED_TAG, int(seed), SPLITS.index(split), index])
    rng = np.random.Generator(np.random.PCG64(seq))
    im, quality = render_photo_crop(rng, load_source_photos()[source])
    path = Path(root) / split / folder / f"{folder.split('_')[0]}_{split}_{index:05d}.JPEG"
    im.save(path, format="JPEG", quality=quality)
    return path.stat().st_size


def photo_params(n_images: int = 256, num_classes: int = 8, seed: int = 0) -> dict:
    """The parameters that identify a photo-set folder (what its DONE marker must hold).

    They include the source photographs found in this environment, so a cached folder
    made before scikit-image was installed is not mistaken for one made with it.
    """
    return {"kind": "fastairl-photos", "version": PHOTOS_VERSION, "n_images": int(n_images),
            "num_classes": int(num_classes), "seed": int(seed),
            "all_sources": list(load_source_photos())}


def make_photo_set(out: Path, n_images: int = 256, num_classes: int = 8, seed: int = 0,
                   overwrite: bool = False, workers: int | None = None) -> Path:
    """Write ``n_images`` photo crops to ``out/train/<class>/`` and ``out/val/<class>/``.

    About 1/8 of the images go to ``val``. Images are dealt to classes in turn. Raises
    FileExistsError if ``out`` exists and ``overwrite`` is false. Returns ``out``.
    """
    if not isinstance(n_images, int) or n_images < 2:
        raise ValueError(f"n_images={n_images!r} must be an integer >= 2")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1")
    sources = list(load_source_photos())
    if len(sources) < num_classes:
        log.warning("only %d source photographs for %d classes: several classes share a "
                    "source, so labels are only partly meaningful", len(sources), num_classes)
    folders = photo_class_names(num_classes)
    counts = _split_counts(n_images)

    def fill(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tasks = []
        for split in SPLITS:
            for folder in folders:
                (tmp / split / folder).mkdir(parents=True)
            for j in range(counts[split]):
                k = j % num_classes
                tasks.append((str(tmp), int(seed), split, j, folders[k],
                              sources[k % len(sources)]))
        nbytes = run_tasks(_photo_task, tasks, workers)
        return {"classes": folders, "sources": sources[:num_classes], "images": len(tasks),
                "train": counts["train"], "val": counts["val"], "bytes": int(nbytes),
                "seconds": round(time.perf_counter() - t0, 2)}

    return build_atomically(Path(out), photo_params(n_images, num_classes, seed), overwrite, fill)


def default_photo_root(n_images: int = 256, seed: int = 0, num_classes: int = 8) -> Path:
    """Cache location: ``photos-v1-n<n>-s<seed>`` (plus ``-c<k>`` for non-default classes)."""
    name = f"photos-v{PHOTOS_VERSION}-n{n_images}-s{seed}"
    if num_classes != 8:
        name += f"-c{num_classes}"
    return cache_dir() / name


def ensure_photo_set(root: Path | None = None, n_images: int = 256, seed: int = 0, *,
                     num_classes: int = 8, workers: int | None = None) -> Path:
    """Return a complete photo-set folder, generating it on first use.

    ``root`` defaults to ``cache_dir()/photos-v1-n<n>-s<seed>``. Safe to call from
    several processes at once (file lock); reuses a folder whose DONE parameters match.
    """
    explicit = root is not None
    out = Path(root).expanduser() if explicit else default_photo_root(n_images, seed, num_classes)

    def build(overwrite: bool) -> Path:
        log.info("generating the photo set into %s (one-off)", out)
        return make_photo_set(out, n_images, num_classes, seed, overwrite=overwrite, workers=workers)

    return ensure_folder(out, photo_params(n_images, num_classes, seed), explicit, build)


__all__ = ["load_source_photos", "photo_class_names", "render_photo_crop", "make_photo_set",
           "ensure_photo_set", "default_photo_root", "photo_params", "cache_dir"]
