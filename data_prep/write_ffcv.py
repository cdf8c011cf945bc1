#!/usr/bin/env python
"""Pack an ImageNet-style folder into FFCV files for fastairl's ffcv backend.

    python data_prep/write_ffcv.py --data /imagenet --out /data/in1k [--max-side 512]
        [--quality 90] [--workers N] [--splits train,val] [--shuffle-seed 0 | --no-shuffle]
        [--overwrite]

The train split is written in a seeded shuffled order (``--shuffle-seed``, default 0;
``--no-shuffle`` keeps ImageFolder's class-sorted order): fastairl's default sample
order is a full random permutation per epoch whatever the file order, but its
memory-saving ``sample_order=quasi_random`` only mixes a few file pages at a time and
needs a shuffled file. Labels travel with their images; val keeps ImageFolder order.
``--data demo`` packs the small built-in dataset (generated on first use). Output:
``<out>/train.beton``, ``<out>/val.beton``, ``<out>/classes.json`` and
``<out>/skipped.txt`` (unreadable images, with the reason; they are left out, the run
still succeeds). Exit status: 0 done, 2 bad arguments or an existing output without
``--overwrite``, 1 any other failure. The logic lives in
:func:`fastairl.data.ffcv_writer.write_ffcv` so ``make demo`` and the tests call it
directly.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fastairl.runtime.cli_util import ArgumentParser
    p = ArgumentParser(prog="write_ffcv.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="ImageNet-style folder with train/<class>/* and val/<class>/*, or 'demo'")
    p.add_argument("--out", required=True, help="output folder for <split>.beton, classes.json, skipped.txt")
    p.add_argument("--max-side", type=int, default=512,
                   help="cap the long side of stored images (0 keeps full size; default 512)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of stored images (default 90)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for checking and encoding (default: all CPUs)")
    p.add_argument("--splits", default="train,val", help="comma-separated splits to pack (default train,val)")
    p.add_argument("--shuffle-seed", type=int, default=0,
                   help="seed of the train split's shuffled file order (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="write train in ImageFolder (class-sorted) order")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fastairl.runtime.cli_util import error
    from fastairl.data.ffcv_writer import OutputExistsError, format_summary, write_ffcv

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        summary = write_ffcv(args.data, args.out, max_side=args.max_side, quality=args.quality,
                             workers=args.workers, overwrite=args.overwrite, splits=splits,
                             progress=not args.quiet,
                             shuffle_seed=None if args.no_shuffle else args.shuffle_seed)
    except OutputExistsError as e:
        return error(e)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return error(e)
    except KeyboardInterrupt:
        print("write_ffcv.py: interrupted; no partial .beton was left behind", file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
