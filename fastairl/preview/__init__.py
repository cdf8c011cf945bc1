"""``python -m fastairl.preview``: look at the augmented views before spending GPU days on them.

    python -m fastairl.preview --exp byol --data demo --loader folder --pairs 16 --out byol_views.png
    python -m fastairl.preview --exp moco_v2p --data demo --loader nvjpeg --pairs 64 --dump views.pt --seed 0 --stats

Why this exists: an augmentation recipe is a handful of probabilities and ranges, and a
loader that silently drops an op (or applies it twice, or in the wrong colour space)
still trains, only worse. Looking at the views, and counting what was applied, is the
cheapest check there is, and comparing loaders the same way is how one finds out why
accuracy moved when the loader changed.

For ``--pairs N`` samples it builds the trainer's loader and collects the views the
model would get (:mod:`.pairs`), recovers the parameters drawn inside the loader
(:mod:`.replay` for ``folder``, :mod:`.uint8_views` for the others), and writes what was
asked: a PNG grid (``--out``, :mod:`.grid`), a dump (``--dump``, :mod:`.result`), a
statistics table (``--stats``, :mod:`.stats`). Each augmentation op's part in all of
that is one entry of :data:`.ops.OPS`.
"""
from fastairl.preview.cli import build_parser, main
from fastairl.preview.grid import PAD, VIEW_COLOURS, GridGeometry, default_cell, grid_geometry, render_grid
from fastairl.preview.ops import CAPTION_LINES, OPS, PARAM_DOC, view_caption
from fastairl.preview.pairs import _resolve_settings, collect
from fastairl.preview.result import (DUMP_FORMAT, PreviewError, PreviewOptions, PreviewResult, denormalize,
                                     load_dump, save_dump)
from fastairl.preview.stats import compute_stats, format_stats

__all__ = ["PreviewOptions", "PreviewResult", "PreviewError", "GridGeometry", "collect", "render_grid",
           "grid_geometry", "default_cell", "view_caption", "compute_stats", "format_stats", "save_dump",
           "load_dump", "denormalize", "build_parser", "main", "DUMP_FORMAT", "PARAM_DOC"]
# also importable from here, as from the single module this package replaced: PAD, CAPTION_LINES,
# VIEW_COLOURS, _resolve_settings; and OPS, the table of ops.
