"""Generate fastairl's built-in demo dataset (an ImageNet-style JPEG folder).

    python data_prep/make_demo_data.py                      # into the cache, defaults
    python data_prep/make_demo_data.py --out /data/demo --train-per-class 300

Training code generates the demo on first use by itself (``ensure_demo_data``); this
script exists to make it ahead of time, somewhere else, or at another size, and to see
what it costs. It never replaces an existing folder unless ``--overwrite`` is given.
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

from fastairl.data.demo import CLASS_NAMES, default_demo_root, make_demo_data, read_done


def _positive(flag: str, minimum: int):
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
                   help="output folder (default: the cache folder ensure_demo_data uses, "
                        "under $FASTAIRL_CACHE or ~/.cache/fastairl)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train-per-class", type=_positive("--train-per-class", 1), default=100)
    p.add_argument("--val-per-class", type=_positive("--val-per-class", 0), default=20)
    p.add_argument("--classes", type=_positive("--classes", 2), default=len(CLASS_NAMES),
                   help=f"number of classes, 2..{len(CLASS_NAMES)} (default {len(CLASS_NAMES)})")
    p.add_argument("--workers", type=_positive("--workers", 1), default=None,
                   help="generator processes (default: up to 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if it already exists")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.classes > len(CLASS_NAMES):
        parser.error(f"--classes {args.classes}: the demo has {len(CLASS_NAMES)} classes at most")
    out = args.out if args.out is not None else default_demo_root(
        args.seed, args.train_per_class, args.val_per_class, args.classes)
    out = out.expanduser()
    if out.exists() and not args.overwrite:
        print(f"error: {out} already exists; pass --overwrite to replace it or choose "
              f"another --out", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        make_demo_data(out, seed=args.seed, train_per_class=args.train_per_class,
                       val_per_class=args.val_per_class, num_classes=args.classes,
                       overwrite=args.overwrite, workers=args.workers)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    done = read_done(out) or {}
    print(f"wrote {done.get('images', '?')} images ({done.get('bytes', 0) / 1e6:.1f} MB) "
          f"in {seconds:.1f} s to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
