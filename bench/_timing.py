"""What every timed row shares: the device synchronised at both ends of a window, endless
batches across epoch ends (each crossing counted), and the one way a row is marked skipped
or failed, with its reason, never hidden."""
from __future__ import annotations

import traceback
from typing import Iterator

import torch

from bench._common import _one_line, log


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochCycler:
    """Endless batches from a loader, moving to the next epoch when one runs out.

    Small data sets would otherwise end a window early; every crossing is counted, since
    it includes the loader's start-up (worker processes, prefetch refill) in the window.
    """

    def __init__(self, loader) -> None:
        self.loader = loader
        self.epoch = -1
        self.crossings = 0
        self._it: Iterator | None = None

    def _next_epoch(self) -> None:
        self.epoch += 1
        if self.epoch > 0:
            self.crossings += 1
        self.loader.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def __next__(self):
        if self._it is None:
            self._next_epoch()
        for _ in range(2):
            try:
                return next(self._it)
            except StopIteration:
                self._next_epoch()
        raise RuntimeError(f"loader {type(self.loader).__name__} yielded no batch in a whole epoch")

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()  # runs the generator's cleanup (prefetch threads, ffcv iterators)


def _batch_size_of(labels: torch.Tensor) -> int:
    return int(labels.shape[0])


def _skip(row: dict, reason: str) -> dict:
    row.update(status="skipped", reason=reason)
    log.info("skipped %s: %s", row.get("name"), reason)
    return row


def _fail(row: dict, e: BaseException) -> dict:
    msg = f"{type(e).__name__}: {_one_line(e)}"
    row.update(status="failed", reason=msg)
    log.error("FAILED %s: %s", row.get("name"), msg)
    log.debug("%s", traceback.format_exc())
    return row
