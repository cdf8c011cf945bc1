"""Cut an ImageNet-sized benchmark folder out of the photographs bundled in installed wheels.

    python data_prep/make_photo_set.py                         # into the cache, 256 images
    python data_prep/make_photo_set.py --out /data/photos --n-images 5000
    python data_prep/make_photo_set.py --export-sources gpu-photos   # for a machine without them

The photographs come from scikit-image (``skimage.data``) and matplotlib
(``sample_data``), so this works offline. Benchmarks and tests create the folder on
first use by themselves (``ensure_photo_set``); this script makes it ahead of time or at
another size. It never replaces an existing folder unless ``--overwrite`` is given.
``--export-sources DIR`` writes the source photographs themselves (about 6 MB of PNG);
with ``FASTAIRL_PHOTO_SOURCES=DIR`` a machine that has neither package cuts the same set.
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
from fastairl.runtime.cli_util import error  # noqa: E402
from fastairl.data.photos import default_photo_root, export_source_photos, make_photo_set  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__, "ensure_photo_set")
    p.add_argument("--n-images", type=int_at_least("--n-images", 2), default=256,
                   help="total images, about 1/8 of them in val (default 256)")
    p.add_argument("--classes", type=int_at_least("--classes", 1), default=8,
                   help="number of classes (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--export-sources", type=Path, metavar="DIR",
                   help="only write the source photographs to DIR (NN_<name>.png), for "
                        "FASTAIRL_PHOTO_SOURCES=DIR on a machine without scikit-image and matplotlib")
    return add_output_flags(p)


def main(argv: list[str] | None = None) -> int:
    start_logging()
    args = build_parser().parse_args(argv)
    if args.export_sources is not None:
        try:
            paths = export_source_photos(args.export_sources)
        except (RuntimeError, FileExistsError) as e:
            return error(e)
        size = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} source photographs ({size / 1e6:.1f} MB) to {args.export_sources}; "
              f"use them with FASTAIRL_PHOTO_SOURCES={args.export_sources}")
        return 0
    out = args.out if args.out is not None else default_photo_root(args.n_images, args.seed, args.classes)
    return make_folder(
        out, args.overwrite,
        lambda dest: make_photo_set(dest, n_images=args.n_images, num_classes=args.classes, seed=args.seed,
                                    overwrite=args.overwrite, workers=args.workers),
        errors=(RuntimeError, ValueError, FileExistsError),
        detail=lambda done: f" from {len(done.get('sources', []))} source photographs")


if __name__ == "__main__":
    sys.exit(main())
