"""Pack an ImageNet-style folder into FFCV ``.beton`` files (``train.beton``, ``val.beton``).

Why these choices:

* **Labels in ImageFolder order** (sorted class folder names, files sorted within a
  class) so a model trained on the packed files and one trained by the reference's
  ImageFolder agree on what label 17 means; the names go to ``classes.json``.
* **Train split in a seeded shuffled order on request** (``shuffle_seed``; the
  ``data_prep/write_ffcv.py`` CLI does it by default, seed 0): ImageFolder order is
  class-sorted, and ffcv's page-aware ``quasi_random`` order (fastairl's memory-saving
  option) only mixes a few pages at a time, so on a class-sorted file its batches hold far
  fewer classes than a random permutation's. Each sample keeps its own label; val stays in
  ImageFolder order (evaluation reads it in file order).
* **JPEG, long side capped** (``max_side``, default 512, quality 90): the random crops
  of training rarely need more pixels, and a smaller JPEG decodes faster; this is the
  usual FFCV ImageNet setting.
* **Bad images are skipped, not fatal.** Every file is first decoded completely with PIL
  in a worker pool; a file that fails (corrupt, truncated, not an image) is listed in
  ``<out>/skipped.txt`` with the reason and left out. This also protects ffcv's writer,
  whose progress loop waits forever if one of its worker processes dies.
* **Nothing is overwritten by accident and nothing half-written looks whole**: existing
  outputs need ``overwrite=True``, and each ``.beton`` is written under a temporary name
  in the output folder and renamed into place only when complete.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from fastairl.runtime.atomic_io import atomic_path, atomic_write_text

#: File extensions torchvision's ImageFolder accepts (case-insensitive).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: ffcv stores image sizes as uint16.
_MAX_STORED_SIDE = 65535
SKIPPED_NAME = "skipped.txt"
CLASSES_NAME = "classes.json"


class OutputExistsError(FileExistsError):
    """An output file exists and ``overwrite`` was not given."""


def scan_split(split_dir: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(path, label), ...])`` of one split, in torchvision ImageFolder order.

    With ``classes`` given (the train split's), the split's folders are labelled by
    those names, so val labels equal train labels even if val lacks a class; a val
    folder naming a class train does not have is an error.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist; expected an ImageNet-style folder "
                                f"{split_dir}/<class>/<image>.JPEG")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not found:
        raise FileNotFoundError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>.JPEG")
    if classes is None:
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise ValueError(f"{split_dir} has class folders the train split does not have: {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}; the splits must share class names")
    samples: list[tuple[str, int]] = []
    for name in found:
        for root, _, files in sorted(os.walk(split_dir / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(root, f), index[name]))
    if not samples:
        raise FileNotFoundError(f"{split_dir} has no image files ({', '.join(IMG_EXTENSIONS)})")
    return list(classes), samples


def _probe(path: str) -> tuple[str | None, int, int]:
    """Fully decode one image with PIL; ``(None, w, h)`` if usable, else ``(reason, 0, 0)``."""
    try:
        with Image.open(path) as im:
            im.load()  # the full decode: truncated or corrupt data fails here
            w, h = im.size
            if w < 1 or h < 1:
                return "image has no pixels", 0, 0
            if im.mode not in ("RGB", "L"):
                im.convert("RGB")  # exotic modes (CMYK, P, I;16...) must convert too
            return None, w, h
    except Exception as e:  # noqa: BLE001 -- any failure means "skip this file, say why"
        msg = str(e).replace("\t", " ").replace("\n", " ") or "unreadable"
        return f"{type(e).__name__}: {msg}", 0, 0


class _PackDataset:
    """Indexable (image, label) source for ffcv's DatasetWriter, read in its worker processes.

    Files were validated beforehand; a file that fails *now* (changed on disk meanwhile)
    is replaced by a grey 16x16 image and reported in ``failure_log``, because an
    exception here would kill ffcv's worker and hang its writer.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], max_side: int, failure_log: Path):
        self.samples = list(samples)
        self.max_side = max_side
        self.failure_log = str(failure_log)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                if self.max_side:
                    im.draft("RGB", (self.max_side, self.max_side))  # DCT-domain pre-shrink of huge JPEGs
                arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001
            with open(self.failure_log, "a") as f:
                f.write(f"{path}\tfailed while packing, stored as a grey placeholder: {type(e).__name__}: {e}\n")
            print(f"write_ffcv: WARNING {path} failed while packing ({e}); stored a grey placeholder",
                  file=sys.stderr)
            arr = np.full((16, 16, 3), 128, np.uint8)
        return arr, label


@contextmanager
def _named_ffcv_progress(desc: str, progress: bool) -> Iterator[None]:
    """Give ffcv's own write progress bar a name and an img/s unit, or switch it off.

    ffcv's DatasetWriter builds its tqdm bar with no way to pass arguments, so its
    module-level ``tqdm`` name is swapped for a pre-configured one while it runs.
    """
    import ffcv.writer
    from tqdm import tqdm

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = partial(tqdm, desc=desc, unit="img", disable=not progress)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


def _read_skipped(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def _resolve_data(data: Path | str) -> Path:
    if str(data) == "demo":
        from fastairl.data.demo import ensure_demo_data
        return Path(ensure_demo_data())
    p = Path(data).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder (expected an ImageNet-style folder with "
                                "train/ and val/, or 'demo' for the built-in dataset)")
    return p


def _mark_demo(root: Path, out: Path) -> None:
    """Packed from the built-in demo: copy its marker, so ``--data <out>`` runs at demo scale.

    A marker left in ``out`` by an earlier demo packing is dropped when other data is packed
    there, so the folder is never mistaken for the demo.
    """
    from fastairl.data import demo

    if demo.is_demo_dataset(root):
        demo.mark_packed(root, out)
    elif demo.is_demo_dataset(out):
        (out / demo.DONE_NAME).unlink()


def write_ffcv(data: Path | str, out: Path | str, max_side: int = 512, quality: int = 90,
               workers: int | None = None, overwrite: bool = False,
               splits: Sequence[str] = ("train", "val"), progress: bool = True,
               shuffle_seed: int | None = None) -> dict:
    """Pack ``data/<split>/<class>/*`` into ``out/<split>.beton`` + ``out/classes.json``.

    ``data="demo"`` packs :func:`fastairl.data.demo.ensure_demo_data`'s folder.
    ``max_side=0`` keeps full resolution. ``shuffle_seed`` (an int) writes the train
    split's samples in the order of a permutation seeded with it (labels travel with
    their images); ``None`` keeps ImageFolder order. Returns a summary: per split and in total,
    images written, skipped, bytes, seconds, MB/s and images/s. Raises
    :class:`OutputExistsError` if an output exists and ``overwrite`` is false, and
    ``FileNotFoundError`` / ``ValueError`` for bad inputs (all with the offending
    path or value in the message).
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be a non-empty list of distinct names, got {list(splits)}")
    if max_side is None:
        max_side = 0
    if not (max_side == 0 or 16 <= max_side <= _MAX_STORED_SIDE):
        raise ValueError(f"--max-side {max_side}: use 0 (keep full size) or 16..{_MAX_STORED_SIDE}")
    if not 1 <= quality <= 100:
        raise ValueError(f"--quality {quality}: JPEG quality must be in 1..100")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1")

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    targets = [out / f"{s}.beton" for s in splits]
    if not overwrite:
        for t in targets:
            if t.exists():
                raise OutputExistsError(f"{t} already exists; pass --overwrite (overwrite=True) to replace it")
    root = _resolve_data(data)

    # Class list: the train split's folders when train is packed now; otherwise the
    # classes.json already in `out` (packing val after train); otherwise this split's folders.
    cpath = out / CLASSES_NAME
    existing_classes: list[str] | None = None
    if cpath.is_file():
        try:
            existing_classes = [str(c) for c in json.loads(cpath.read_text())["classes"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            existing_classes = None
    classes: list[str] | None = None if "train" in splits else existing_classes
    scanned: dict[str, list[tuple[str, int]]] = {}
    for s in sorted(splits, key=lambda name: name != "train"):  # train first: it defines the classes
        classes, scanned[s] = scan_split(root / s, classes)
    assert classes is not None
    if existing_classes is not None and existing_classes != classes and not overwrite:
        raise OutputExistsError(f"{cpath} already exists with different classes; pass --overwrite "
                                "(overwrite=True) to replace it")

    out.mkdir(parents=True, exist_ok=True)
    # Written first: it follows from the folder scan alone, and a run that stops after
    # its first split still leaves that split usable.
    atomic_write_text(cpath, json.dumps({"classes": classes, "max_side": max_side, "quality": quality},
                                         indent=1) + "\n")
    skipped_path = out / SKIPPED_NAME
    skipped_lines = [ln for ln in _read_skipped(skipped_path) if ln.split("\t", 1)[0] not in splits]
    summary: dict = {"data": str(root), "out": str(out), "num_classes": len(classes), "splits": {},
                     "train_order": "imagefolder" if shuffle_seed is None else f"shuffled (seed {int(shuffle_seed)})"}

    for s in splits:
        t0 = time.perf_counter()
        samples = scanned[s]
        paths = [p for p, _ in samples]
        ok: list[tuple[str, int]] = []
        bad: list[tuple[str, str]] = []
        ctx = multiprocessing.get_context()
        with ctx.Pool(min(workers, max(1, len(paths)))) as pool:
            results = pool.imap(_probe, paths, chunksize=max(1, min(64, len(paths) // (4 * workers) or 1)))
            for (path, label), (reason, w, h) in tqdm(zip(samples, results), total=len(samples),
                                                      desc=f"check {s}", unit="img", disable=not progress):
                if reason is None and max_side == 0 and max(w, h) > _MAX_STORED_SIDE:
                    reason = f"image is {w}x{h}; ffcv stores at most {_MAX_STORED_SIDE} per side (use --max-side)"
                if reason is None:
                    ok.append((path, label))
                else:
                    bad.append((path, reason))
        if not ok:
            _write_skipped(skipped_path, skipped_lines + [f"{s}\t{p}\t{r}" for p, r in bad])
            raise ValueError(f"{root / s}: none of its {len(samples)} images could be read "
                             f"(reasons in {skipped_path})")
        if s == "train" and shuffle_seed is not None:
            perm = np.random.default_rng(int(shuffle_seed)).permutation(len(ok))
            ok = [ok[i] for i in perm]

        final = out / f"{s}.beton"
        fail_log = out / f".{s}.failures.tmp-{os.getpid()}"
        fields = {"image": RGBImageField(write_mode="jpg", max_resolution=max_side or None, jpeg_quality=quality),
                  "label": IntField()}
        try:
            # Small page size for small sets: each writer process fills its own pages, so
            # big pages would pad a small file with megabytes of nothing.
            page = (1 << 21) if len(ok) < 20000 else (1 << 23)
            with atomic_path(final) as tmp:  # fsync, the usual file mode, then the rename
                writer = DatasetWriter(str(tmp), fields, page_size=page, num_workers=min(workers, len(ok)))
                with _named_ffcv_progress(f"write {s}.beton", progress):
                    writer.from_indexed_dataset(_PackDataset(ok, max_side, fail_log),
                                                chunksize=max(1, min(100, len(ok) // (4 * workers) or 1)))
            late = fail_log.read_text().splitlines() if fail_log.exists() else []
        finally:
            fail_log.unlink(missing_ok=True)

        skipped_lines += [f"{s}\t{p}\t{r}" for p, r in bad] + [f"{s}\t{ln}" for ln in late]
        _write_skipped(skipped_path, skipped_lines)
        seconds = time.perf_counter() - t0
        nbytes = final.stat().st_size
        summary["splits"][s] = {"images": len(ok), "skipped": len(bad), "placeholders": len(late),
                                "bytes": nbytes, "seconds": seconds,
                                "mb_per_s": nbytes / 1e6 / seconds, "images_per_s": len(ok) / seconds}

    _mark_demo(root, out)
    per = summary["splits"].values()
    summary.update(images=sum(p["images"] for p in per), skipped=sum(p["skipped"] for p in per),
                   bytes=sum(p["bytes"] for p in per), seconds=sum(p["seconds"] for p in per))
    summary["mb_per_s"] = summary["bytes"] / 1e6 / max(summary["seconds"], 1e-9)
    summary["images_per_s"] = summary["images"] / max(summary["seconds"], 1e-9)
    return summary


def _write_skipped(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "# split\tpath\treason\n" + "".join(ln + "\n" for ln in lines))


def format_summary(summary: dict) -> str:
    """Human-readable lines for a :func:`write_ffcv` summary."""
    lines = []
    for s, p in summary["splits"].items():
        extra = f", {p['placeholders']} placeholder(s)" if p.get("placeholders") else ""
        lines.append(f"{s}: {p['images']} images written, {p['skipped']} skipped{extra}, "
                     f"{p['bytes'] / 1e6:.1f} MB in {p['seconds']:.1f} s "
                     f"({p['mb_per_s']:.1f} MB/s, {p['images_per_s']:.0f} img/s)")
    lines.append(f"total: {summary['images']} images, {summary['skipped']} skipped, "
                 f"{summary['bytes'] / 1e6:.1f} MB, {summary['mb_per_s']:.1f} MB/s -> {summary['out']}")
    if "train" in summary["splits"] and summary.get("train_order"):
        lines.append(f"train order: {summary['train_order']}")
    if summary["skipped"]:
        lines.append(f"skipped files and reasons: {Path(summary['out']) / SKIPPED_NAME}")
    return "\n".join(lines)
