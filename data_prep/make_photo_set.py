"""Cut an ImageNet-sized benchmark folder out of the photographs bundled in installed wheels.

    python data_prep/make_photo_set.py                         # into the cache, 256 images
    python data_prep/make_photo_set.py --out /data/photos --n-images 5000

The photographs come from scikit-image (``skimage.data``) and matplotlib
(``sample_data``), so this works offline. Benchmarks and tests create the folder on
first use by themselves (``ensure_photo_set``); this script makes it ahead of time or at
another size. It never replaces an existing folder unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    import fastairl  # noqa: F401
except ImportError:  # run as a file from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastairl.data.demo import read_done
from fastairl.data.photos import default_photo_root, make_photo_set


def _int_at_least(flag: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the cache folder ensure_photo_set uses, "
                        "under $FASTAIRL_CACHE or ~/.cache/fastairl)")
    p.add_argument("--n-images", type=_int_at_least("--n-images", 2), default=256,
                   help="total images, about 1/8 of them in val (default 256)")
    p.add_argument("--classes", type=_int_at_least("--classes", 1), default=8,
                   help="number of classes (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=_int_at_least("--workers", 1), default=None,
                   help="generator processes (default: up to 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if it already exists")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    out = args.out if args.out is not None else default_photo_root(args.n_images, args.seed, args.classes)
    out = out.expanduser()
    if out.exists() and not args.overwrite:
        print(f"error: {out} already exists; pass --overwrite to replace it or choose "
              f"another --out", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        make_photo_set(out, n_images=args.n_images, num_classes=args.classes, seed=args.seed,
                       overwrite=args.overwrite, workers=args.workers)
    except (RuntimeError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    done = read_done(out) or {}
    print(f"wrote {done.get('images', '?')} images ({done.get('bytes', 0) / 1e6:.1f} MB) "
          f"from {len(done.get('sources', []))} source photographs in {seconds:.1f} s to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
