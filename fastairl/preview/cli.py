"""``python -m fastairl.preview``'s command line: flags, output checks, and what to write."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fastairl.runtime.atomic_io import DUMP_NOTE_BYTES, atomic_write, default_output_path, tensor_bytes
from fastairl.preview.grid import render_grid
from fastairl.preview.pairs import collect
from fastairl.preview.result import PreviewError, PreviewOptions, save_dump
from fastairl.preview.stats import compute_stats, format_stats

log = logging.getLogger("fastairl.preview")


def build_parser() -> argparse.ArgumentParser:
    from fastairl.config import available_experiments
    from fastairl.data import LOADERS
    from fastairl.data.recipes import RECIPES

    from fastairl.runtime.cli_util import ArgumentParser

    p = ArgumentParser(
        prog="python -m fastairl.preview",
        description="Show, dump and count the augmented views a loader produces for a recipe, "
                    "exactly as the trainer's model receives them.")
    p.add_argument("--exp", help=f"experiment whose recipe and settings to use: {', '.join(available_experiments())}")
    p.add_argument("--recipe", help=f"augmentation recipe, overrides the experiment's: {', '.join(sorted(RECIPES))}")
    p.add_argument("--data", default="demo", help="ImageNet-style folder, folder with train.beton, or 'demo'")
    p.add_argument("--loader", help=f"data backend: {', '.join(LOADERS)} (default: the experiment's, auto)")
    p.add_argument("--pairs", type=int, default=16, help="samples to produce (any number; batched internally)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="per-process batch of the loader (default 32). With a run's batch, --workers and "
                        "--seed, the folder loader gives that run's very views and nvjpeg/dali its crops "
                        "(colour ops then come from the preview's own seeded draws)")
    p.add_argument("--workers", type=int, help="loader workers/threads (default: the experiment's)")
    p.add_argument("--seed", type=int, help="random seed (default: the experiment's, 0)")
    p.add_argument("--epoch", type=int, default=0, help="first epoch to draw from (default 0)")
    p.add_argument("--ckpt", help="a fastairl run's checkpoint: its stored config gives recipe, seed and size")
    p.add_argument("--image-size", type=int, help="view size (default: --ckpt's, demo 64, else the experiment's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", help="write the PNG grid here (.png; a bare name goes under outputs/)")
    p.add_argument("--rows", type=int, help="pairs shown in the grid (default: all pairs, at most 16)")
    p.add_argument("--cell", type=int, help="grid cell size in pixels (default: the view size times the "
                                            "smallest integer reaching 224)")
    p.add_argument("--dump", help="torch.save the views, parameters, labels and indices here (a bare name goes "
                                            "under outputs/; its size is said first when over 100 MB)")
    p.add_argument("--stats", action="store_true", help="print per-op shares next to the recipe, brightness "
                                                       "and saturation")
    p.add_argument("--overwrite", action="store_true", help="replace existing --out/--dump files")
    return p


def _check_output(flag: str, value: str | None, suffix: str | None, overwrite: bool) -> Path | None:
    if value is None:
        return None
    path = default_output_path(value)  # a bare name goes under outputs/
    if suffix is not None and path.suffix.lower() != suffix:
        raise PreviewError(f"{flag} {value}: expected a file name ending in {suffix}")
    if path.is_dir():
        raise PreviewError(f"{flag} {value}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise PreviewError(f"{flag} {value}: folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise PreviewError(f"{flag} {value}: file exists; pass --overwrite to replace it or choose another name")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl.runtime.logging_utils import setup_console

    setup_console(0)
    try:
        out = _check_output("--out", args.out, ".png", args.overwrite)
        dump = _check_output("--dump", args.dump, None, args.overwrite)
        if out is not None and dump is not None and out.resolve() == dump.resolve():
            raise PreviewError(f"--out and --dump name the same file {out}")
        if out is None and dump is None and not args.stats:
            raise PreviewError("nothing to do: pass --out FILE.png, --dump FILE.pt and/or --stats")
        if args.pairs < 1:
            raise PreviewError(f"--pairs {args.pairs}: must be an integer >= 1")
        if args.rows is not None and args.rows < 1:
            raise PreviewError(f"--rows {args.rows}: must be an integer >= 1")
        if args.cell is not None and args.cell < 8:
            raise PreviewError(f"--cell {args.cell}: must be an integer >= 8")
        rows = args.rows if args.rows is not None else min(args.pairs, 16)
        if rows > args.pairs:
            raise PreviewError(f"--rows {rows}: more than --pairs {args.pairs}")
        opts = PreviewOptions(exp=args.exp, recipe=args.recipe, data=args.data, loader=args.loader,
                              pairs=args.pairs, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                              epoch=args.epoch, image_size=args.image_size, device=args.device, ckpt=args.ckpt,
                              keep_views=dump is not None, rows=rows if out is not None else 1)
        res = collect(opts)
        if dump is not None:
            if (size := tensor_bytes(res.as_dump())) > DUMP_NOTE_BYTES:
                log.warning("dump: writing %.1f MB to %s", size / 1e6, dump)
            save_dump(res, dump)
            log.info("dump: %s (%d pairs, %d views each)", dump, res.num_pairs, len(res.views))
        if out is not None:
            img = render_grid(res, rows=rows, cell=args.cell)
            atomic_write(out, lambda f: img.save(f, format="PNG"))
            log.info("grid: %s (%d rows, %dx%d px)", out, rows, img.width, img.height)
        if args.stats:
            print(format_stats(compute_stats(res.as_dump()), res.meta))
        return 0
    except (PreviewError, FileNotFoundError, NotADirectoryError, FileExistsError, ValueError, ImportError) as e:
        from fastairl.runtime.cli_util import error
        return error(e)
