"""Generated-dataset plumbing: the cache location, atomic folders, DONE markers, locks, pools.

Why a module of its own: the demo dataset and the photo set are both generated on first
use by whichever process asks first (torchrun ranks included), so they share one way to
build a folder atomically, mark it complete, lock it against concurrent builders, and
fan the work out over a process pool. Keeping it apart from the image renderers lets
both renderers (and the benchmarks) use it without importing each other.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

log = logging.getLogger(__name__)

DONE_NAME = "DONE"


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$FASTAIRL_CACHE`` or ``~/.cache/fastairl``.

    One shared location lets every process of a job (and later jobs) reuse the same
    generated folder instead of regenerating it.
    """
    env = os.environ.get("FASTAIRL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastairl"


def default_workers() -> int:
    """Processes for generation: at most 2, fewer if this process may use fewer CPUs."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def run_tasks(fn: Callable[[Any], int], tasks: Sequence[Any], workers: int | None) -> int:
    """Run ``fn`` over ``tasks`` (in a fork pool when ``workers > 1``); returns the sum.

    Fork (not spawn) keeps start-up to milliseconds: the workers only run numpy and PIL.
    """
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    if workers > 1 and multiprocessing.current_process().daemon:
        global _warned_daemon
        if not _warned_daemon:
            log.warning("generating in one process: this is a daemonic process (e.g. a "
                        "DataLoader worker), which may not start a pool; expect it to be "
                        "%dx slower", workers)
            _warned_daemon = True
        workers = 1
    if workers == 1 or len(tasks) < 8:
        return sum(fn(t) for t in tasks)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers) as pool:
        return sum(pool.imap_unordered(fn, tasks, chunksize=max(1, len(tasks) // (workers * 8))))


_warned_daemon = False


def read_done(out: Path) -> dict | None:
    """The parameters recorded in ``out/DONE``, or None if the folder is not complete."""
    try:
        return json.loads((Path(out) / DONE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(out: Path) -> None:
    """Remove ``<out>.tmp-<pid>`` / ``<out>.old-<pid>`` left by generators that died mid-way."""
    leftovers = list(out.parent.glob(out.name + ".tmp-*")) + list(out.parent.glob(out.name + ".old-*"))
    for p in leftovers:
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            log.warning("removing %s left by an interrupted generator (pid %d)", p, pid)
            shutil.rmtree(p, ignore_errors=True)


def build_atomically(out: Path, params: dict, overwrite: bool,
                     fill: Callable[[Path], dict]) -> Path:
    """Create folder ``out`` by filling a temporary sibling and renaming it into place.

    ``fill(tmp)`` writes the content and returns extra facts for the DONE marker. The
    marker is written last inside the temporary folder, and the rename is atomic on one
    file system, so ``out`` either does not exist or is complete. An existing ``out`` is
    only replaced when ``overwrite`` is true.
    """
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it, "
            f"or choose another output folder"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; remove it or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        extra = fill(tmp)
        done = dict(params)
        done.update(extra)
        (tmp / DONE_NAME).write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``<parent>/.<name>.lock`` while the block runs.

    Lets several processes of one job (e.g. torchrun ranks) ask for the same generated
    folder at once: the first generates it, the others wait and then reuse it. flock
    is per machine; on network file systems without lock support, generate once
    beforehand with the ``data_prep`` scripts.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_folder(out: Path, params: dict, explicit: bool,
                  build: Callable[[bool], Path]) -> Path:
    """Return ``out`` once it is a complete folder made with ``params``; build it if needed.

    ``build(overwrite)`` generates it. A cache folder (``explicit`` false) whose marker is
    missing or different is regenerated; a folder the user named is never replaced, since
    it may hold their data.
    """
    out = Path(out).expanduser()

    def matches() -> bool:
        done = read_done(out)
        return done is not None and all(done.get(k) == v for k, v in params.items())

    if matches():  # fast path, no lock needed: DONE only appears after the atomic rename
        return out
    with folder_lock(out):
        if matches():
            return out
        _remove_stale_tmp(out)
        if out.exists():
            if explicit:
                done = read_done(out)
                what = "has no DONE marker" if done is None else f"was made with {done}"
                raise FileExistsError(
                    f"{out} exists but {what}, not {params}; delete it or pass another root"
                )
            log.warning("cached folder %s is incomplete or stale; regenerating it", out)
            return build(True)
        return build(False)


__all__ = ["cache_dir", "DONE_NAME", "read_done", "default_workers", "run_tasks",
           "build_atomically", "folder_lock", "ensure_folder"]
