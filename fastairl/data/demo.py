"""The built-in demo dataset: crops of real photographs, generated on first use.

Why this exists: ``make demo`` and the test suite must run on a fresh machine with no
ImageNet and no network, yet exercise the real data path (JPEG files in
``train/<class>/*.JPEG`` folders) and show self-supervised learning paying off in
minutes on a CPU. So each class is one photograph that an installed package ships
(scikit-image's ``skimage.data`` and matplotlib's sample data, see
:mod:`fastairl.data.photos`), and each image is a random crop of a small part of it,
resized, flipped and given a random colour shift (a full hue rotation, saturation,
brightness and contrast).

What the augmentations keep is what the classes are: two crops of one photograph share
its objects and textures, not its colours (every image has its own hue) and not a
background (every image is a different part of the scene). Instance discrimination can
only be solved by learning what a scene's parts look like, and that is what the kNN
probe on the val split rewards. (The first version drew shapes on random backgrounds;
per-image colours there were the easiest instance cue, so short MoCo runs learnt
colour and ended below random init.)

Generation is deterministic: every image has its own ``numpy.random.Generator`` seeded
from ``(seed, split, class, index)``, so the files are byte-identical from run to run and
the work can be spread over a process pool in any order. Folders are built atomically
with a ``DONE`` marker (:mod:`fastairl.data.cache`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fastairl.data.cache import (DONE_NAME, build_atomically, cache_dir, ensure_folder, read_done,
                                 run_tasks)

log = logging.getLogger(__name__)

#: Bump when the generator changes in a way that changes the pixels; it is part of the
#: cache folder name and of the DONE marker, so old caches are never mistaken for new.
DEMO_VERSION = 2

#: Class names in label order: the source photographs of :mod:`fastairl.data.photos`.
CLASS_NAMES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle",
    "grace_hopper", "immunohistochemistry", "retina", "hubble_deep_field", "brick",
)
#: Source photographs given a random tint per image (they are grey-scale).
TINTED = frozenset({"brick"})

#: Side of the square images, and the JPEG qualities drawn (inclusive).
IMAGE_SIZE = 112
QUALITY_RANGE = (75, 95)
#: A crop covers this share of the source photo's area, with an aspect ratio in
#: ASPECT_RANGE: small parts, so one image never shows the whole scene.
AREA_RANGE = (0.08, 0.35)
ASPECT_RANGE = (3 / 4, 4 / 3)
#: The per-image colour shift: saturation, brightness and contrast factors (the hue is
#: rotated by a uniform amount over the whole circle).
SATURATION_RANGE = (0.3, 1.5)
BRIGHTNESS_RANGE = (0.6, 1.4)
CONTRAST_RANGE = (0.6, 1.4)

SPLITS = ("train", "val")
DEMO_KIND = "fastairl-demo"
#: Images per class and split of the default demo (the folder ``make demo`` uses).
TRAIN_PER_CLASS = 200
VAL_PER_CLASS = 40

# A fixed tag mixed into every per-image seed, so the demo's random streams never
# coincide with another generator in this package seeded from the same small integers.
_SEED_TAG = 0xDE40


def class_folder_names(num_classes: int = len(CLASS_NAMES)) -> list[str]:
    """ImageNet-style folder names (``n00000000_astronaut`` ...); sorted order is label order."""
    _check_num_classes(num_classes)
    return [f"n{i:08d}_{CLASS_NAMES[i]}" for i in range(num_classes)]


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(
            f"num_classes={num_classes!r} is not supported by the demo generator: "
            f"pick an integer from 2 to {len(CLASS_NAMES)}"
        )


def demo_sources(num_classes: int = len(CLASS_NAMES)) -> list[np.ndarray]:
    """The source photograph of each class, in label order (``(H, W, 3) uint8``).

    Raises RuntimeError naming the missing photographs when this environment lacks them
    (scikit-image not installed, or an export folder without them).
    """
    from fastairl.data.photos import SOURCES_ENV, load_source_photos

    found = load_source_photos()
    names = CLASS_NAMES[:num_classes]
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(
            f"the demo dataset is cut from photographs that scikit-image and matplotlib ship, "
            f"and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available here: "
            f"install them (`pip install -r requirements.txt`), or point {SOURCES_ENV} at a "
            f"folder written by `python data_prep/make_photo_set.py --export-sources`"
        )
    return [found[n] for n in names]


def _colour_shift(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate the hue by a random amount and scale saturation, brightness and contrast."""
    hsv = np.asarray(Image.fromarray(arr, "RGB").convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + float(rng.uniform(0, 256))) % 256
    hsv[..., 1] *= float(rng.uniform(*SATURATION_RANGE))
    hsv = np.clip(hsv + 0.5, 0, 255).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")).astype(np.float32)
    mean = float(rgb.mean())
    rgb = (rgb - mean) * float(rng.uniform(*CONTRAST_RANGE)) + mean
    rgb *= float(rng.uniform(*BRIGHTNESS_RANGE))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def render_demo_image(rng: np.random.Generator, src: np.ndarray, tint: bool = False
                      ) -> tuple[Image.Image, int]:
    """One demo image cut from photograph ``src``; returns the image and its JPEG quality.

    A random box of ``AREA_RANGE`` of the photo's area and ``ASPECT_RANGE`` aspect,
    resized to ``IMAGE_SIZE`` square, flipped half the time, colour-shifted; ``tint``
    first multiplies a grey-scale source by a random colour.
    """
    sh, sw = src.shape[:2]
    quality = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
    area = float(rng.uniform(*AREA_RANGE)) * sh * sw
    aspect = float(np.exp(rng.uniform(np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1]))))
    cw = min(float(np.sqrt(area * aspect)), float(sw))
    ch = min(float(np.sqrt(area / aspect)), float(sh))
    x0 = float(rng.uniform(0, sw - cw))
    y0 = float(rng.uniform(0, sh - ch))
    im = Image.fromarray(src, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC,
                                            box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(im)
    if tint:
        colour = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
        arr = np.clip(arr.astype(np.float32) * colour + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(_colour_shift(arr, rng), "RGB"), quality


def _image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    seq = np.random.SeedSequence([_SEED_TAG, int(seed), SPLITS.index(split), class_index, index])
    return np.random.Generator(np.random.PCG64(seq))


def _demo_task(task: tuple[str, int, str, int, int]) -> int:
    """Render and save one image (module-level so a process pool can run it)."""
    root, seed, split, class_index, index = task
    rng = _image_rng(seed, split, class_index, index)
    src = demo_sources(class_index + 1)[class_index]
    pil, quality = render_demo_image(rng, src, tint=CLASS_NAMES[class_index] in TINTED)
    folder = class_folder_names(len(CLASS_NAMES))[class_index]
    path = Path(root) / split / folder / f"{folder.split('_')[0]}_{split}_{index:05d}.JPEG"
    pil.save(path, format="JPEG", quality=quality)
    return path.stat().st_size


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def demo_params(seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                val_per_class: int = VAL_PER_CLASS, num_classes: int = 10) -> dict:
    """The parameters that identify a demo folder (what its DONE marker must hold)."""
    return {"kind": DEMO_KIND, "version": DEMO_VERSION, "seed": int(seed),
            "train_per_class": int(train_per_class), "val_per_class": int(val_per_class),
            "num_classes": int(num_classes)}


def make_demo_data(out: Path, seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                   val_per_class: int = VAL_PER_CLASS, num_classes: int = 10,
                   overwrite: bool = False, workers: int | None = None) -> Path:
    """Generate the demo dataset into ``out`` (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``).

    ``workers`` processes render images in parallel (default: up to 2). Raises
    FileExistsError if ``out`` exists and ``overwrite`` is false. Returns ``out``.
    """
    _check_num_classes(num_classes)
    for flag, value, lo in (("train_per_class", train_per_class, 1), ("val_per_class", val_per_class, 0)):
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"{flag}={value!r} must be an integer >= {lo}")
    params = demo_params(seed, train_per_class, val_per_class, num_classes)
    folders = class_folder_names(num_classes)
    demo_sources(num_classes)  # fail early, and load once before the pool forks

    def fill(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tasks = []
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for c, folder in enumerate(folders):
                (tmp / split / folder).mkdir(parents=True)
                tasks += [(str(tmp), int(seed), split, c, i) for i in range(per_class)]
        nbytes = run_tasks(_demo_task, tasks, workers)
        return {"classes": folders, "images": len(tasks), "bytes": int(nbytes),
                "seconds": round(time.perf_counter() - t0, 2)}

    return build_atomically(Path(out), params, overwrite, fill)


def default_demo_root(seed: int = 0, train_per_class: int = TRAIN_PER_CLASS,
                      val_per_class: int = VAL_PER_CLASS, num_classes: int = 10) -> Path:
    """Cache location of a demo folder: ``demo-v<version>-s<seed>`` for the default sizes."""
    name = f"demo-v{DEMO_VERSION}-s{seed}"
    if (train_per_class, val_per_class, num_classes) != (TRAIN_PER_CLASS, VAL_PER_CLASS, 10):
        name += f"-t{train_per_class}-v{val_per_class}-c{num_classes}"
    return cache_dir() / name


def ensure_demo_data(root: Path | None = None, seed: int = 0, *,
                     train_per_class: int = TRAIN_PER_CLASS,
                     val_per_class: int = VAL_PER_CLASS, num_classes: int = 10,
                     workers: int | None = None) -> Path:
    """Return a complete demo folder, generating it on first use.

    ``root`` defaults to ``cache_dir()/demo-v<version>-s<seed>``. Safe to call from several
    processes at once: one generates under a file lock while the others wait, then all
    reuse it. An existing folder is reused only if its DONE parameters match.
    """
    explicit = root is not None
    out = Path(root).expanduser() if explicit else default_demo_root(
        seed, train_per_class, val_per_class, num_classes)
    params = demo_params(seed, train_per_class, val_per_class, num_classes)

    def build(overwrite: bool) -> Path:
        log.info("generating the demo dataset into %s (one-off)", out)
        return make_demo_data(out, seed, train_per_class, val_per_class, num_classes,
                              overwrite=overwrite, workers=workers)

    return ensure_folder(out, params, explicit, build)


def mark_packed(demo_root: Path, packed: Path) -> None:
    """The demo's DONE marker, copied beside the packed files (``is_demo_dataset``)."""
    done = dict(read_done(demo_root) or {"kind": DEMO_KIND})
    done["packed_from"] = str(demo_root)
    (Path(packed) / DONE_NAME).write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")


def is_demo_dataset(path: str | os.PathLike) -> bool:
    """True for the built-in demo dataset, as an image folder or packed for ffcv."""
    done = read_done(Path(path)) if Path(path).is_dir() else None
    return bool(done) and done.get("kind") == DEMO_KIND
