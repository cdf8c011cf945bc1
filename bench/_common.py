"""What every part of the bench shares: its one logger (whose level the command line sets),
the error a user can fix, the host name used in file names, and errors cut to one line so
that a skipped or failed row stays one readable table cell."""
from __future__ import annotations

import logging
import re
import socket
import sys

#: One logger for every bench module, so that ``_configure_logging`` sets them all.
log = logging.getLogger("bench.throughput")


class BenchError(Exception):
    """A problem with the command line or the data the user can fix; one line, exit code 2."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname() or "host")[:60]


def _one_line(e: BaseException | str) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _configure_logging(rank: int = 0, verbose: bool = False) -> None:
    fmt = "[bench %(asctime)s" + (f" r{rank}" if rank else "") + "] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=fmt, datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    log.setLevel(logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING))
