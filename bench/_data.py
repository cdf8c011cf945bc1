"""The data the rows read: ``--data``/``--photos`` resolved to a folder (the demo or photo
set generated on first use), and the packed ``train.beton`` made once from it for the
packed rows, never behind the user's back for a large folder."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from bench._common import BenchError, _one_line, log
from bench._settings import CUDA_DEFAULT_PHOTOS


def _count_train_images(root: Path, stop_after: int) -> int:
    """Number of image files under ``root/train`` (stops counting past ``stop_after``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS
    n = 0
    for _, _, files in os.walk(root / "train", followlinks=True):
        n += sum(1 for f in files if f.lower().endswith(IMG_EXTENSIONS))
        if n > stop_after:
            break
    return n


def ensure_packed(root: Path, max_pack: int) -> tuple[Path | None, str | None]:
    """A folder with ``train.beton`` + ``classes.json`` for the packed rows, or (None, why not).

    Uses ``root`` itself when it holds ``train.beton``; otherwise packs ``root/train`` once
    into the cache with :func:`fastairl.data.ffcv_writer.write_ffcv` (ffcv's writer is
    needed for that) and reuses that copy on later runs. Large folders are not packed
    behind the user's back: above ``max_pack`` images the rows are skipped with the command
    that packs them.
    """
    if (root / "train.beton").is_file():
        return root, None
    if not (root / "train").is_dir():
        return None, f"{root} has neither train.beton nor a train/ folder"
    n = _count_train_images(root, max_pack)
    if n > max_pack:
        return None, (f"{root}/train holds more than {max_pack} images; pack it once with "
                      f"`python data_prep/write_ffcv.py --data {root} --out DIR` and pass --packed DIR "
                      f"(or raise --max-pack)")
    from fastairl.data.cache import cache_dir, folder_lock
    key = hashlib.sha1(f"{root.resolve()}|{n}".encode()).hexdigest()[:12]
    out = cache_dir() / "bench-packed" / f"{root.name}-{key}"
    marker = out / "bench-source.json"
    want = {"source": str(root.resolve()), "train_images": n}

    def ready() -> bool:
        try:
            return (out / "train.beton").is_file() and json.loads(marker.read_text()) == want
        except (OSError, ValueError):
            return False

    if ready():  # packed by an earlier run; readable without ffcv (nvjpeg has its own reader)
        return out, None
    try:
        import ffcv  # noqa: F401
        from fastairl.data.ffcv_writer import write_ffcv
    except Exception as e:  # a broken install raises more than ImportError
        return None, (f"--data has no train.beton and ffcv, needed to pack one, is not importable "
                      f"({type(e).__name__}: {_one_line(e)})")
    with folder_lock(out):
        if not ready():
            log.info("packing %s/train (%d images) into %s once with write_ffcv, for the ffcv and packed rows",
                     root, n, out)
            write_ffcv(root, out, splits=("train",), overwrite=True, progress=True)
            marker.write_text(json.dumps(want))
    return out, None


def _resolve_data(args: argparse.Namespace, device: str) -> tuple[Path, str]:
    """``--data``/``--photos`` -> (folder, kind), generating the demo or photo set on first use."""
    from fastairl.data import resolve_data
    if args.photos is not None:
        return _photo_set(args.photos)
    data = args.data
    if data is None and device == "cuda":
        n = CUDA_DEFAULT_PHOTOS
        log.info("--data not given on a GPU: using a set of %d real photographs at ImageNet sizes (--photos %d)",
                 n, n)
        return _photo_set(n)
    data = data or "demo"
    try:
        root = resolve_data(data)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise BenchError(str(e)) from None
    return root, "demo" if data == "demo" else "folder"


def _photo_set(n: int) -> tuple[Path, str]:
    """The photo set of ``n`` images. Without photographs to cut (no scikit-image, no
    matplotlib, no FASTAIRL_PHOTO_SOURCES) there is no stand-in: the demo data is cut from
    the same photographs, so the user gets one line saying what to install or pass."""
    from fastairl.data.photos import ensure_photo_set
    try:
        return ensure_photo_set(n_images=n), "photos"
    except RuntimeError as e:
        raise BenchError(f"--photos {n}: {_one_line(e)}; or measure a folder or packed set with --data PATH") from None
