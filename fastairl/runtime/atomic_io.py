"""One atomic file writer for every fastairl tool, and where tool outputs go by default.

Why one: checkpoints, exported backbones, detectron2 pickles and preview grids/dumps all
want the same thing (a reader sees the old file or the complete new one, never a
prefix; a crash or a full disk leaves no half file), and they must all get the file
mode a plain ``open(..., "w")`` gives, the one training outputs have (0644 under the
usual umask 022). ``tempfile.mkstemp`` creates 0600 files; a writer that forgets to
widen the mode leaves outputs that a colleague or a shared cluster job cannot read.

Users: ``checkpoint.atomic_torch_save``, ``backbone_io`` (export, detectron2, NormRescale),
``preview`` (grid, dump), ``data/ffcv_writer`` (``.beton`` via :func:`atomic_path`,
``classes.json``, ``skipped.txt``) and ``logging_utils`` (``log.jsonl`` cut on resume).
Plain appends and one-shot JSON notes (``config.json``, bench reports) are written with
``open``, which already gives the usual mode. ``data/demo.py``'s ``build_atomically``
publishes whole folders (the dataset caches), a different job it keeps.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

#: Where a tool writes a bare file name (no folder part) unless told otherwise; git-ignored.
OUTPUTS = Path("outputs")
#: A file bigger than this (100 MB) has its size said before it is written.
DUMP_NOTE_BYTES = 100 * 10**6


def _umask() -> int:
    """This process's umask, read without changing it where Linux allows (``os.umask``
    only sets, so the fallback sets and restores it, briefly visible to other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~_umask()


def _exists_error(p: Path) -> FileExistsError:
    return FileExistsError(f"refusing to overwrite existing {p}: pass --overwrite (overwrite=True) to replace it")


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, overwrite: bool = True,
                 verify: Callable[[str], None] | None = None) -> Path:
    """Write ``path`` through a temp file in its folder: ``write(f)`` fills the binary file
    ``f``; then fsync, ``verify(temp_path)`` if given, the usual file mode, and publish.

    Same folder, so the final rename is atomic on POSIX. ``overwrite=False`` publishes
    with a hard link, which fails if the name appeared meanwhile, so not even a
    concurrent writer is clobbered (filesystems without hard links fall back to the
    existence check). The temp file is removed on any failure, Ctrl-C included.
    """
    p = Path(path)
    if not overwrite and (p.exists() or p.is_symlink()):
        raise _exists_error(p)
    if p.is_dir():
        raise IsADirectoryError(f"output path {p} is a directory; give a file name")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), file_mode())  # mkstemp creates 0600
        if verify is not None:
            verify(tmp)
        if overwrite:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise _exists_error(p) from None
            except OSError:
                if p.exists():
                    raise _exists_error(p) from None
                os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """:func:`atomic_write` of UTF-8 ``text`` (small manifests, lists, logs cut short)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), overwrite=overwrite)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For a writer that wants a file *name* (ffcv's DatasetWriter): yields a temp path in
    ``path``'s folder to write; on a clean exit it is fsynced, given the usual file mode and
    renamed over ``path``; on any failure (Ctrl-C included) it is removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp created it 0600; a writer that reopens it keeps that mode
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_output_path(value: str | os.PathLike[str], outputs: Path = OUTPUTS) -> Path:
    """A bare file name (``views.png``) goes under ``outputs/`` (created), out of the source
    tree; a name with a folder part (``./views.png``, ``/tmp/views.png``, ``runs/v.png``)
    is used as given."""
    raw = os.fspath(value)
    p = Path(raw).expanduser()
    if os.sep in raw or (os.altsep and os.altsep in raw) or raw.startswith("~") or raw in (".", ".."):
        return p
    outputs.mkdir(parents=True, exist_ok=True)
    return outputs / p


def tensor_bytes(obj) -> int:
    """Bytes of tensor and array data in ``obj`` (nested dicts, lists, tuples): what a
    ``torch.save`` of it weighs, give or take a small header."""
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return int(obj.element_size() * obj.nelement())
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0
