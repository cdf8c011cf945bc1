"""Generate fastairl's built-in demo dataset (an ImageNet-style JPEG folder).

    python data_prep/make_demo_data.py                      # into the cache, defaults
    python data_prep/make_demo_data.py --out /data/demo --train-per-class 300

Training code generates the demo on first use by itself (``ensure_demo_data``); this
script exists to make it ahead of time, somewhere else, or at another size, and to see
what it costs. It never replaces an existing folder unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path (tests) rather than run as a file: find _cli.py beside it
    sys.path.append(_HERE)

from _cli import add_output_flags, int_at_least, make_folder, new_parser, start_logging  # noqa: E402
# (importing _cli also makes fastairl importable from a checkout)
from fastairl.data.demo import CLASS_NAMES, default_demo_root, make_demo_data  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, "ensure_demo_data")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train-per-class", type=int_at_least("--train-per-class", 1), default=100)
    p.add_argument("--val-per-class", type=int_at_least("--val-per-class", 0), default=20)
    p.add_argument("--classes", type=int_at_least("--classes", 2), default=len(CLASS_NAMES),
                   help=f"number of classes, 2..{len(CLASS_NAMES)} (default {len(CLASS_NAMES)})")
    return add_output_flags(p)


def main(argv: list[str] | None = None) -> int:
    start_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.classes > len(CLASS_NAMES):
        parser.error(f"--classes {args.classes}: the demo has {len(CLASS_NAMES)} classes at most")
    out = args.out if args.out is not None else default_demo_root(
        args.seed, args.train_per_class, args.val_per_class, args.classes)
    return make_folder(
        out, args.overwrite,
        lambda dest: make_demo_data(dest, seed=args.seed, train_per_class=args.train_per_class,
                                    val_per_class=args.val_per_class, num_classes=args.classes,
                                    overwrite=args.overwrite, workers=args.workers),
        errors=(ValueError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())
