"""A small built-in ImageNet-style dataset, generated procedurally on first use.

Why this exists: ``make demo`` and the test suite must run on a fresh machine with no
ImageNet and no network, yet exercise the real data path (JPEG files on disk in
``train/<class>/*.JPEG`` folders, decoded by PIL / ffcv / DALI). So the images are real
JPEG files of ImageNet-like size and quality, and they are drawn to have photographic
statistics as far as a procedural generator can give them: 1/f ("pink") noise textures,
smooth lighting, random palettes, sensor noise, slight blur and JPEG artefacts.

The label lives in *shape*, never in colour: every class draws its colours, position,
scale and rotation from the same distributions, so a learner that only looks at colour
(the shortcut that colour-jitter augmentations exist to remove) is at chance, while a
learner that sees structure can separate the ten classes. That makes the demo a small
but honest test of augmentation-invariant representation learning.

Generation is deterministic: every image has its own ``numpy.random.Generator`` seeded
from ``(seed, split, class, index)``, so the files are byte-identical from run to run and
the work can be spread over a process pool in any order.

Folders are written atomically (into ``<out>.tmp-<pid>``, then renamed) with a ``DONE``
marker holding the parameters as JSON, so an interrupted run never leaves a folder that
looks complete, and :func:`ensure_demo_data` can tell a finished folder from a stale one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFilter

log = logging.getLogger(__name__)

#: Bump when the generator changes in a way that changes the pixels; it is part of the
#: cache folder name and of the DONE marker, so old caches are never mistaken for new.
DEMO_VERSION = 1

#: Class names, in label order (folder names sort in this order too).
CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "ring",
    "cross", "stripes", "checkerboard", "ellipses", "crescent",
)

#: Ranges of the generated images (inclusive), for users and tests alike.
WIDTH_RANGE = (320, 500)
HEIGHT_RANGE = (280, 420)
QUALITY_RANGE = (75, 95)

SPLITS = ("train", "val")
DONE_NAME = "DONE"
DEMO_KIND = "fastairl-demo"

# A fixed tag mixed into every per-image seed, so the demo's random streams never
# coincide with another generator in this package seeded from the same small integers.
_SEED_TAG = 0xDE40


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$FASTAIRL_CACHE`` or ``~/.cache/fastairl``.

    One shared location lets every process of a job (and later jobs) reuse the same
    generated folder instead of regenerating it.
    """
    env = os.environ.get("FASTAIRL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastairl"


def class_folder_names(num_classes: int = len(CLASS_NAMES)) -> list[str]:
    """ImageNet-style folder names (``n00000000_circle`` ...); sorted order is label order."""
    _check_num_classes(num_classes)
    return [f"n{i:08d}_{CLASS_NAMES[i]}" for i in range(num_classes)]


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(
            f"num_classes={num_classes!r} is not supported by the demo generator: "
            f"pick an integer from 2 to {len(CLASS_NAMES)}"
        )


# --------------------------------------------------------------------------------------
# Image synthesis (pure numpy; one image per call, all randomness from ``rng``)
# --------------------------------------------------------------------------------------

def _pink_pair(rng: np.random.Generator, h: int, w: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Two independent zero-mean, unit-std noise fields with amplitude spectrum 1/f**beta.

    Natural photographs have roughly 1/f amplitude spectra; one complex inverse FFT yields
    two independent real fields (its real and imaginary parts) for the price of one.
    """
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.fftfreq(w).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** np.float32(-beta)
    amp[0, 0] = 0.0
    # Uniform (not Gaussian) spectral coefficients: drawing them is several times cheaper,
    # and the inverse FFT sums so many of them that the field is Gaussian all the same.
    spec = ((rng.random((h, w), dtype=np.float32) - 0.5)
            + 1j * (rng.random((h, w), dtype=np.float32) - 0.5)) * amp
    field = np.fft.ifft2(spec)
    out = []
    for part in (field.real, field.imag):
        part = part.astype(np.float32)
        part -= part.mean()
        part /= part.std() + 1e-8
        out.append(part)
    return out[0], out[1]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, dtype=np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour from the base distribution (uniform hue, moderate saturation and value)."""
    return _hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.95))


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _contrasting_pair(rng: np.random.Generator, min_dl: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Two colours drawn iid and kept only if their brightness differs enough.

    The rule is symmetric in the two colours, so both keep the same marginal
    distribution: whichever becomes "object" or "background", neither leaks the class.
    """
    for _ in range(50):
        a, b = _random_colour(rng), _random_colour(rng)
        if abs(_luma(a) - _luma(b)) >= min_dl:
            return a, b
    return a, b


def _paired_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour with the marginal distribution of a :func:`_contrasting_pair` member."""
    a, b = _contrasting_pair(rng)
    return a if rng.random() < 0.5 else b


def _contrasting_to(rng: np.random.Generator, ref: np.ndarray, min_dl: float = 0.2) -> np.ndarray:
    """A colour whose brightness differs from ``ref``'s by ``min_dl``.

    Drawn by rejection, this has the same marginal distribution as a member of a
    contrasting pair (the pair rule is symmetric, so that distribution is stationary
    under "redraw until it contrasts"); patterns stay visible without a colour bias.
    """
    for _ in range(50):
        c = _random_colour(rng)
        if abs(_luma(c) - _luma(ref)) >= min_dl:
            return c
    return c


def _convex_sdf(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance (exact inside and near edges) to a counter-clockwise convex polygon."""
    d = None
    n = len(verts)
    for k in range(n):
        ax, ay = float(verts[k][0]), float(verts[k][1])
        bx, by = float(verts[(k + 1) % n][0]), float(verts[(k + 1) % n][1])
        ex, ey = bx - ax, by - ay
        norm = float(np.hypot(ex, ey))
        nx, ny = ey / norm, -ex / norm  # outward normal for CCW order
        dk = (u - ax) * nx + (v - ay) * ny
        d = dk if d is None else np.maximum(d, dk)
    return d


def _regular_polygon(n: int, radius: float, phase: float = np.pi / 2) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _shape_sdf(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Callable | None]:
    """Signed distance (in units of the shape's radius) for one instance of class ``name``.

    Returns the distance field and, for the two patterned classes, a function giving the
    per-pixel mix between the object's two colours (the pattern is the class identity).
    """
    if name == "circle":
        return np.sqrt(u * u + v * v) - 1.0, None
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85, None
    if name == "triangle":
        return _convex_sdf(u, v, _regular_polygon(3, 1.15)), None
    if name == "star":
        outer, inner = 1.2, rng.uniform(0.42, 0.52)
        # Union of the inner pentagon and five convex kites. The pentagon covers the
        # edges the kites share, which would otherwise show as half-transparent seams.
        d = _convex_sdf(u, v, _regular_polygon(5, inner, np.pi / 2 + np.pi / 5))
        for k in range(5):
            a0 = np.pi / 2 + 2 * np.pi * k / 5
            a_in0, a_in1 = a0 - np.pi / 5, a0 + np.pi / 5
            kite = np.array([
                [0.0, 0.0],
                [inner * np.cos(a_in0), inner * np.sin(a_in0)],
                [outer * np.cos(a0), outer * np.sin(a0)],
                [inner * np.cos(a_in1), inner * np.sin(a_in1)],
            ])
            d = np.minimum(d, _convex_sdf(u, v, kite))
        return d, None
    if name == "ring":
        width = rng.uniform(0.14, 0.26)
        return np.abs(np.sqrt(u * u + v * v) - 0.8) - width, None
    if name == "cross":
        t = rng.uniform(0.22, 0.34)
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 1.0, av - t), np.maximum(au - t, av - 1.0)), None
    if name in ("stripes", "checkerboard"):
        half = 0.9
        d = np.maximum(np.abs(u), np.abs(v)) - half
        cells = rng.integers(4, 8) if name == "stripes" else rng.integers(3, 6)
        period = 2 * half / cells  # local units per stripe/cell

        def pattern(r_px: float) -> np.ndarray:
            # sin() is zero on the pattern's boundaries with slope pi/period, so this is a
            # one-pixel-wide anti-aliased step between the two colours.
            gain = period * r_px / np.pi
            g = np.sin(np.pi * (v + half) / period)
            if name == "checkerboard":
                g = g * np.sin(np.pi * (u + half) / period)
                gain = gain * 1.5
            return np.clip(0.5 + g * gain, 0.0, 1.0)

        return d, pattern
    if name == "ellipses":
        d = None
        for _ in range(int(rng.integers(3, 7))):
            ox, oy = rng.uniform(-0.55, 0.55, size=2)
            a = rng.uniform(0.26, 0.42)
            b = a * rng.uniform(0.45, 0.7)
            th = rng.uniform(0, np.pi)
            c, s = np.cos(th), np.sin(th)
            uu, vv = (u - ox) * c + (v - oy) * s, -(u - ox) * s + (v - oy) * c
            dk = (np.sqrt((uu / a) ** 2 + (vv / b) ** 2) - 1.0) * b
            d = dk if d is None else np.minimum(d, dk)
        return d, None
    if name == "crescent":
        off = rng.uniform(0.35, 0.55)
        d1 = np.sqrt(u * u + v * v) - 1.0
        d2 = np.sqrt((u - off) ** 2 + v * v) - 0.85
        return np.maximum(d1, -d2), None
    raise ValueError(f"unknown demo class {name!r}")


def _composite(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray, y0: int, x0: int) -> None:
    """Alpha-blend a colour ``(3,1,1)`` or colour window ``(3,h,w)`` into planar ``img``."""
    h, w = alpha.shape
    win = img[:, y0:y0 + h, x0:x0 + w]
    win *= 1.0 - alpha
    win += alpha * colour


def _window(cx: float, cy: float, half: float, h: int, w: int) -> tuple[int, int, int, int] | None:
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 2, w)
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def _local_coords(y0: int, y1: int, x0: int, x1: int, cx: float, cy: float,
                  theta: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    c, s = np.float32(np.cos(theta) / r), np.float32(np.sin(theta) / r)
    return xs * c + ys * s, -xs * s + ys * c


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, texture: np.ndarray) -> None:
    """Class-independent distractors: irregular blobs and strokes in random colours."""
    _, h, w = img.shape
    for _ in range(int(rng.integers(0, 3))):  # irregular "amoeba" blobs
        r = rng.uniform(0.06, 0.16) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        win = _window(cx, cy, 1.6 * r, h, w)
        if win is None:
            continue
        y0, y1, x0, x1 = win
        u, v = _local_coords(y0, y1, x0, x1, cx, cy, 0.0, r)
        ang = np.arctan2(v, u)
        rad = np.ones_like(u)
        for k in range(2, 5):
            rad += rng.uniform(0.0, 0.25) / (k - 1) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
        d = (np.sqrt(u * u + v * v) - rad) * r
        alpha = np.clip(0.5 - d, 0.0, 1.0) * rng.uniform(0.6, 1.0)
        col = _paired_colour(rng)[:, None, None] * (1.0 + 0.1 * texture[y0:y1, x0:x1])
        _composite(img, alpha, col, y0, x0)
    for _ in range(int(rng.integers(0, 4))):  # strokes
        p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        length = rng.uniform(0.15, 0.5) * min(h, w)
        ang = rng.uniform(0, 2 * np.pi)
        p1 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
        width = rng.uniform(1.5, 5.0)
        x0, x1 = int(max(min(p0[0], p1[0]) - width - 2, 0)), int(min(max(p0[0], p1[0]) + width + 3, w))
        y0, y1 = int(max(min(p0[1], p1[1]) - width - 2, 0)), int(min(max(p0[1], p1[1]) + width + 3, h))
        if x1 <= x0 or y1 <= y0:
            continue
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        e = p1 - p0
        t = np.clip(((xs - p0[0]) * e[0] + (ys - p0[1]) * e[1]) / float(e @ e), 0.0, 1.0)
        d = np.hypot(xs - p0[0] - t * e[0], ys - p0[1] - t * e[1]) - width / 2
        alpha = np.clip(0.5 - d, 0.0, 1.0) * rng.uniform(0.5, 1.0)
        _composite(img, alpha, _paired_colour(rng)[:, None, None], y0, x0)


def render_demo_image(rng: np.random.Generator, class_index: int) -> tuple[Image.Image, int]:
    """Draw one demo image of class ``class_index``; returns the image and its JPEG quality.

    ``rng`` is split into a *scene* stream (size, quality, palette, textures, clutter,
    number, size, place and rotation of the objects, lighting, noise, blur) and a *shape*
    stream (the few parameters of the class's own shape). Only the shape stream and the
    shape's outline depend on the class, so the same ``rng`` state rendered for two
    classes gives the same scene with a different object in it: the class cannot leak
    through anything but shape, by construction.
    """
    name = CLASS_NAMES[class_index]
    scene, shape_rng = rng.spawn(2)
    w = int(scene.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    h = int(scene.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    quality = int(scene.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))

    # Every colour below (object, second pattern colour, both background tones, clutter)
    # has the same distribution, so the fraction of the image an object covers, which
    # does depend on the class, cannot move the expected mean colour.
    obj_col, bg_col = _contrasting_pair(scene)
    if scene.random() < 0.5:  # which of the pair is the object is itself a coin flip
        obj_col, bg_col = bg_col, obj_col
    bg_col2 = 0.6 * bg_col + 0.4 * _paired_colour(scene)
    obj_col2 = _contrasting_to(scene, obj_col)  # second colour of the patterned classes

    # The large-scale colour field is smooth (steep spectrum), so draw it at a quarter of
    # the resolution and upsample; the fine texture needs the full resolution.
    macro, _ = _pink_pair(scene, max(h // 4, 8), max(w // 4, 8), scene.uniform(1.4, 1.9))
    t = 1.0 / (1.0 + np.exp(-1.5 * macro))  # smooth 0..1 mixing field
    t = np.asarray(Image.fromarray(t, "F").resize((w, h), Image.BILINEAR))
    fine_bg, fine_obj = _pink_pair(scene, h, w, scene.uniform(0.7, 1.1))
    shade = 1.0 + scene.uniform(0.04, 0.12) * fine_bg
    # Planar (3, h, w) float32 layout: numpy's inner loops run over whole rows, several
    # times faster than over a trailing axis of 3.
    bg_col, bg_col2 = bg_col[:, None, None], bg_col2[:, None, None]
    obj_col, obj_col2 = obj_col[:, None, None], obj_col2[:, None, None]
    img = (bg_col + (bg_col2 - bg_col) * t) * shade

    _draw_clutter(img, scene, fine_obj)

    n_inst = 1 if scene.random() < 0.75 else 2
    base_r = scene.uniform(0.16, 0.30) * min(h, w) * (0.75 if n_inst == 2 else 1.0)
    obj_tex = scene.uniform(0.03, 0.1)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n_inst):
        r = base_r * scene.uniform(0.85, 1.15)
        for _try in range(10):  # keep instances apart so each stays recognisable
            cx = scene.uniform(0.8 * r, w - 0.8 * r)
            cy = scene.uniform(0.8 * r, h - 0.8 * r)
            if all(np.hypot(cx - px, cy - py) > 1.1 * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        theta = scene.uniform(0, 2 * np.pi)
        win = _window(cx, cy, 1.3 * r + 2, h, w)
        if win is None:
            continue
        y0, y1, x0, x1 = win
        u, v = _local_coords(y0, y1, x0, x1, cx, cy, theta, r)
        d, pattern = _shape_sdf(name, u, v, shape_rng)
        alpha = np.clip(0.5 - d * r, 0.0, 1.0)
        tex = 1.0 + obj_tex * fine_obj[y0:y1, x0:x1]
        if pattern is None:
            col = obj_col * tex
        else:
            m = pattern(r)
            col = (obj_col * m + obj_col2 * (1.0 - m)) * tex
        _composite(img, alpha, col, y0, x0)

    # Smooth lighting: a linear gradient in a random direction and a vignette.
    ys = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
    xs = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
    ang = float(scene.uniform(0, 2 * np.pi))
    slope, vignette = float(scene.uniform(0.0, 0.3)), float(scene.uniform(0.0, 0.125))
    light = 1.0 + slope * (float(np.cos(ang)) * xs + float(np.sin(ang)) * ys) - vignette * (xs * xs + ys * ys)
    img *= light

    # Sensor noise: a luminance part and a weaker per-channel (chroma) part. Uniform
    # variates (scaled to unit variance) look the same as Gaussian ones after JPEG and
    # cost a fraction to draw.
    sigma = float(scene.uniform(0.004, 0.02) * np.sqrt(12.0))
    noise = scene.random((4, h, w), dtype=np.float32) - 0.5
    img += sigma * (noise[3:] + 0.5 * noise[:3])

    img *= 255.0
    img += 0.5
    arr = np.clip(img, 0, 255).astype(np.uint8)
    pil = Image.merge("RGB", [Image.fromarray(arr[k], "L") for k in range(3)])
    if scene.random() < 0.7:  # slight optical blur
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(scene.uniform(0.3, 1.0))))
    return pil, quality


def _image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    seq = np.random.SeedSequence([_SEED_TAG, int(seed), SPLITS.index(split), class_index, index])
    return np.random.Generator(np.random.PCG64(seq))


def _demo_task(task: tuple[str, int, str, int, int]) -> int:
    """Render and save one image (module-level so a process pool can run it)."""
    root, seed, split, class_index, index = task
    rng = _image_rng(seed, split, class_index, index)
    pil, quality = render_demo_image(rng, class_index)
    folder = class_folder_names(len(CLASS_NAMES))[class_index]
    path = Path(root) / split / folder / f"{folder.split('_')[0]}_{split}_{index:05d}.JPEG"
    pil.save(path, format="JPEG", quality=quality)
    return path.stat().st_size


# --------------------------------------------------------------------------------------
# Atomic folders, DONE markers, locking (shared with fastairl.data.photos)
# --------------------------------------------------------------------------------------

def default_workers() -> int:
    """Processes for generation: at most 2, fewer if this process may use fewer CPUs."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def run_tasks(fn: Callable[[Any], int], tasks: Sequence[Any], workers: int | None) -> int:
    """Run ``fn`` over ``tasks`` (in a fork pool when ``workers > 1``); returns the sum.

    Fork (not spawn) keeps start-up to milliseconds: the workers only run numpy and PIL.
    """
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    if workers > 1 and multiprocessing.current_process().daemon:
        global _warned_daemon
        if not _warned_daemon:
            log.warning("generating in one process: this is a daemonic process (e.g. a "
                        "DataLoader worker), which may not start a pool; expect it to be "
                        "%dx slower", workers)
            _warned_daemon = True
        workers = 1
    if workers == 1 or len(tasks) < 8:
        return sum(fn(t) for t in tasks)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        return sum(pool.imap_unordered(fn, tasks, chunksize=max(1, len(tasks) // (workers * 8))))


_warned_daemon = False


def read_done(out: Path) -> dict | None:
    """The parameters recorded in ``out/DONE``, or None if the folder is not complete."""
    try:
        return json.loads((Path(out) / DONE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(out: Path) -> None:
    """Remove ``<out>.tmp-<pid>`` / ``<out>.old-<pid>`` left by generators that died mid-way."""
    leftovers = list(out.parent.glob(out.name + ".tmp-*")) + list(out.parent.glob(out.name + ".old-*"))
    for p in leftovers:
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            log.warning("removing %s left by an interrupted generator (pid %d)", p, pid)
            shutil.rmtree(p, ignore_errors=True)


def build_atomically(out: Path, params: dict, overwrite: bool,
                     fill: Callable[[Path], dict]) -> Path:
    """Create folder ``out`` by filling a temporary sibling and renaming it into place.

    ``fill(tmp)`` writes the content and returns extra facts for the DONE marker. The
    marker is written last inside the temporary folder, and the rename is atomic on one
    file system, so ``out`` either does not exist or is complete. An existing ``out`` is
    only replaced when ``overwrite`` is true.
    """
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it, "
            f"or choose another output folder"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; remove it or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        extra = fill(tmp)
        done = dict(params)
        done.update(extra)
        (tmp / DONE_NAME).write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``<parent>/.<name>.lock`` while the block runs.

    Lets several processes of one job (e.g. torchrun ranks) ask for the same generated
    folder at once: the first generates it, the others wait and then reuse it. flock
    is per machine; on network file systems without lock support, generate once
    beforehand with the ``data_prep`` scripts.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_folder(out: Path, params: dict, explicit: bool,
                  build: Callable[[bool], Path]) -> Path:
    """Return ``out`` once it is a complete folder made with ``params``; build it if needed.

    ``build(overwrite)`` generates it. A cache folder (``explicit`` false) whose marker is
    missing or different is regenerated; a folder the user named is never replaced, since
    it may hold their data.
    """
    out = Path(out).expanduser()

    def matches() -> bool:
        done = read_done(out)
        return done is not None and all(done.get(k) == v for k, v in params.items())

    if matches():  # fast path, no lock needed: DONE only appears after the atomic rename
        return out
    with folder_lock(out):
        if matches():
            return out
        _remove_stale_tmp(out)
        if out.exists():
            if explicit:
                done = read_done(out)
                what = "has no DONE marker" if done is None else f"was made with {done}"
                raise FileExistsError(
                    f"{out} exists but {what}, not {params}; delete it or pass another root"
                )
            log.warning("cached folder %s is incomplete or stale; regenerating it", out)
            return build(True)
        return build(False)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------

def demo_params(seed: int = 0, train_per_class: int = 100, val_per_class: int = 20,
                num_classes: int = 10) -> dict:
    """The parameters that identify a demo folder (what its DONE marker must hold)."""
    return {"kind": DEMO_KIND, "version": DEMO_VERSION, "seed": int(seed),
            "train_per_class": int(train_per_class), "val_per_class": int(val_per_class),
            "num_classes": int(num_classes)}


def make_demo_data(out: Path, seed: int = 0, train_per_class: int = 100,
                   val_per_class: int = 20, num_classes: int = 10,
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


def default_demo_root(seed: int = 0, train_per_class: int = 100, val_per_class: int = 20,
                      num_classes: int = 10) -> Path:
    """Cache location of a demo folder: ``demo-v1-s<seed>`` for the default sizes."""
    name = f"demo-v{DEMO_VERSION}-s{seed}"
    if (train_per_class, val_per_class, num_classes) != (100, 20, 10):
        name += f"-t{train_per_class}-v{val_per_class}-c{num_classes}"
    return cache_dir() / name


def ensure_demo_data(root: Path | None = None, seed: int = 0, *, train_per_class: int = 100,
                     val_per_class: int = 20, num_classes: int = 10,
                     workers: int | None = None) -> Path:
    """Return a complete demo folder, generating it on first use.

    ``root`` defaults to ``cache_dir()/demo-v1-s<seed>``. Safe to call from several
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


def ensure_demo_packed(demo_root: Path) -> Path:
    """The demo dataset packed for ffcv, in the cache folder ``make demo`` uses (built once).

    ``--data demo`` names an image folder; the ffcv backend reads ``.beton`` files. The
    packed copy lives at ``<cache>/<demo folder>-ffcv`` (``data_prep/demo.py`` writes the
    same folder with the same settings), is written into a temporary sibling and renamed
    into place under the demo's file lock, so concurrent runs and interrupted ones never
    see a half-written file.
    """
    from fastairl.data.ffcv_writer import write_ffcv

    packed = cache_dir() / f"{demo_root.name}-ffcv"

    def ready() -> bool:
        return all((packed / f).is_file() for f in ("train.beton", "val.beton", "classes.json", DONE_NAME))

    if ready():
        return packed
    if all((packed / f).is_file() for f in ("train.beton", "val.beton", "classes.json")):
        mark_packed(demo_root, packed)  # packed by an earlier version without the marker
        return packed
    with folder_lock(packed):
        if ready():
            return packed
        log.warning("--data demo with the ffcv loader: packing the demo dataset into %s (one-off, cached)", packed)
        tmp = packed.parent / f"{packed.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_ffcv(demo_root, tmp, max_side=256, quality=90, workers=2, progress=False)  # marks it too
            if packed.exists():  # an incomplete folder from an interrupted writer
                shutil.rmtree(packed)
            tmp.rename(packed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return packed


def mark_packed(demo_root: Path, packed: Path) -> None:
    """The demo's DONE marker, copied beside the packed files (``is_demo_dataset``)."""
    done = dict(read_done(demo_root) or {"kind": DEMO_KIND})
    done["packed_from"] = str(demo_root)
    (Path(packed) / DONE_NAME).write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")


def is_demo_dataset(path: str | os.PathLike) -> bool:
    """True for the built-in demo dataset, as an image folder or packed for ffcv."""
    done = read_done(Path(path)) if Path(path).is_dir() else None
    return bool(done) and done.get("kind") == DEMO_KIND
