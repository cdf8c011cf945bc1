"""The run folder's rules: never replace a run without ``--overwrite``, and never let a
start that failed before its first checkpoint block the next one.

A start writes ``config.json`` (or ``args.json``), ``log.jsonl`` and ``tb/`` before the
first step; when it fails before any ``last.pth`` exists those files hold nothing that
can be continued, so the failed start removes them, and a later start that finds only
them (a start killed before it could clean up) treats the folder as empty.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import distributed as fdist

log = logging.getLogger("fastairl")

#: What a start writes before its first checkpoint.
START_FILES = ("config.json", "args.json", "log.jsonl", "tb")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; printed as one line, exit 2."""


def holds_only_a_failed_start(rd: Path) -> bool:
    """True when ``rd`` holds start files but no checkpoint (and nothing else)."""
    names = {p.name for p in rd.iterdir()}
    return bool(names) and names <= set(START_FILES)


def discard_start_files(rd: Path) -> list[str]:
    """Remove the start files of ``rd`` (only those), then ``rd`` itself when empty."""
    removed = []
    for name in START_FILES:
        p = rd / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            removed.append(name + "/")
        elif p.exists() or p.is_symlink():
            p.unlink()
            removed.append(name)
    if rd.is_dir() and not any(rd.iterdir()):
        rd.rmdir()
    return removed


def prepare_run_dir(run_dir: Path, is_main: bool, resume: bool, overwrite: bool,
                    where: str = "--output-dir") -> bool:
    """Create the run folder, never replacing a run without ``overwrite``. Rank 0 decides and
    every rank learns the verdict, so all exit together on error. ``where`` names the
    flags that choose the folder, for the message. Returns whether this start owns the
    folder's start files (it was absent, empty or a failed start's leftovers), i.e. may
    remove them again if it fails before writing a checkpoint."""
    err, fresh = None, False
    if is_main:
        rd = Path(run_dir)
        if rd.exists() and not rd.is_dir():
            err = f"output path {rd} is a file; choose another {where}"
        else:
            exists = rd.exists() and any(rd.iterdir())
            if exists and not resume and holds_only_a_failed_start(rd):
                removed = discard_start_files(rd)
                log.warning("%s holds no checkpoint, only what an earlier failed start wrote (%s): starting "
                            "afresh there", rd, ", ".join(removed))
                exists = False
            if exists and not (resume or overwrite):
                err = (f"output folder {rd} already holds a run; pass --resume to continue it or "
                       f"--overwrite to replace it (or choose another {where})")
            elif exists and overwrite and not resume:
                shutil.rmtree(rd)
                exists = False
            fresh = not exists
        if err is None:
            rd.mkdir(parents=True, exist_ok=True)
    err, fresh = fdist.broadcast_object((err, fresh))
    if err:
        raise RunFolderError(err)
    return fresh


def missing_checkpoint_message(path: Path, auto: bool) -> str:
    """``--resume`` without a checkpoint to continue from: say so, and what to do."""
    if not auto:
        return f"--resume: checkpoint {path} does not exist"
    folder = Path(path).parent
    if folder.is_dir() and any(folder.iterdir()):
        why = f"{folder} holds no checkpoint (last.pth): the earlier start stopped before writing one"
    else:
        why = f"there is no run in {folder} yet (no last.pth)"
    return f"--resume: {why}; drop --resume to start the run afresh"
