"""Run logging: console (rank 0), ``log.jsonl`` (one JSON object per logged step) and
TensorBoard event files."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def setup_console(rank: int, level: int = logging.INFO) -> None:
    fmt = "[%(asctime)s fastairl" + (f" r{rank}" if rank else "") + "] %(levelname)s %(message)s"
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, format=fmt, datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)


def progress_bar(total: int, desc: str, unit: str = "step"):
    """A tqdm bar, or None (with one warning) where tqdm is not installed: a bare machine
    with only torch and torchvision still trains, just without the bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        logging.getLogger(__name__).warning("tqdm is not installed: no progress bar (pip install tqdm, "
                                            "or make venv); progress goes to log.jsonl and the console log")
        return None
    return tqdm(total=max(total, 0), dynamic_ncols=True, desc=desc, unit=unit, mininterval=1.0)


def drop_after_step(path: Path, step: int) -> int:
    """Cut ``log.jsonl`` before its first record with a step past ``step``, the step a resumed
    run continues from: a run killed after logging steps its checkpoint does not hold would
    otherwise log those steps twice. Returns how many lines were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    cut = len(lines)
    for i, ln in enumerate(lines):
        try:
            rec_step = json.loads(ln).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(rec_step, (int, float)) and rec_step > step:
            cut = i
            break
    if cut < len(lines):
        from fastairl.runtime.atomic_io import atomic_write_text
        atomic_write_text(path, "".join(lines[:cut]))
    return len(lines) - cut


class RunLogger:
    """Writes metrics to ``log.jsonl`` and TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        if purge_step is not None:
            drop_after_step(run_dir / "log.jsonl", purge_step)
        self.jsonl = open(run_dir / "log.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
        except ImportError:
            logging.getLogger(__name__).warning("tensorboard is not installed: no TensorBoard event files "
                                                "(pip install tensorboard, or make venv)")

    def log(self, record: dict, step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
