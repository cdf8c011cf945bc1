"""What the dataset-maker scripts of data_prep/ share: flag checks and the write-then-report flow.

Why a module: ``make_demo_data.py`` and ``make_photo_set.py`` promise the same things
(one-line errors for bad integer flags, never replacing an existing folder without
``--overwrite``, exit code 2 on a user error, a one-line summary of what was written),
and keeping one copy keeps the promise identical.

The scripts run as files (``python data_prep/make_demo_data.py``) or are loaded by
path (the tests), so they import this module by putting their own folder on
``sys.path``; importing it in turn makes ``fastairl`` importable from a checkout that
has not installed the package.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable

try:
    import fastairl  # noqa: F401
except ImportError:  # run as a file from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastairl.runtime.cli_util import ArgumentParser, error  # noqa: E402
from fastairl.data.cache import read_done

__all__ = ["add_output_flags", "int_at_least", "make_folder", "new_parser", "start_logging"]


def int_at_least(flag: str, minimum: int) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer flag that must be ``>= minimum``; the error names the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {value}")
        return value
    return parse


def new_parser(doc: str, ensure_fn: str) -> argparse.ArgumentParser:
    """A parser described by the script's first docstring paragraph, with ``--out``.

    ``ensure_fn`` names the library function that makes the same folder on first use,
    whose cache location is the default output.
    """
    p = ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default: the cache folder {ensure_fn} uses, "
                        "under $FASTAIRL_CACHE or ~/.cache/fastairl)")
    return p


def add_output_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The last flags of every maker: ``--workers`` and ``--overwrite``."""
    p.add_argument("--workers", type=int_at_least("--workers", 1), default=None,
                   help="generator processes (default: up to 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if it already exists")
    return p


def start_logging() -> None:
    """Warnings of the generators (e.g. a slow fallback) reach the console, one line each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def make_folder(out: Path, overwrite: bool, make: Callable[[Path], object],
                errors: tuple[type[BaseException], ...], detail: Callable[[dict], str] = lambda done: "") -> int:
    """Run ``make(out)`` unless ``out`` exists (and no ``overwrite``); the exit code of the script.

    ``errors`` are the exceptions ``make`` raises for problems the user can fix: printed
    as one ``error:`` line, exit code 2. On success, prints what was written (images,
    megabytes, ``detail(done)``, seconds, where), ``done`` being the folder's completion
    record (empty if it has none).
    """
    out = out.expanduser()
    if out.exists() and not overwrite:
        return error(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    t0 = time.perf_counter()
    try:
        make(out)
    except errors as e:
        return error(e)
    seconds = time.perf_counter() - t0
    done = read_done(out) or {}
    print(f"wrote {done.get('images', '?')} images ({done.get('bytes', 0) / 1e6:.1f} MB)"
          f"{detail(done)} in {seconds:.1f} s to {out}")
    return 0
