"""The one run loop: epochs of steps, with logging, limits, stop signals and checkpoints.

Pre-training and linear evaluation are two tasks on this loop; they bring the step, the
checkpoint and what happens at an epoch end. Why one loop: two copies had drifted apart
(the stop flag agreed at different cadences, a non-finite loss handled differently), and
every rule here (when to log, when to stop, what a resumed epoch skips) must hold for both.
"""
from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field

import torch

from .logging_utils import progress_bar

log = logging.getLogger("fastairl")

#: Under DDP the ranks agree on a stop signal every this many steps: one tiny all-reduce,
#: a bounded delay, and every rank stops (and checkpoints) at the same step.
STOP_CHECK_EVERY = 5


class LoopTask(abc.ABC):
    """What the loop needs of a task. The loop advances ``global_step``; a stop signal sets
    ``stop_requested`` (``fastairl.runtime.stop_signals``). ``dist`` is the process group info
    (``distributed``, ``world_size``), ``device`` the training device, ``logger`` a
    :class:`fastairl.runtime.logging_utils.RunLogger`, ``is_main`` whether this is rank 0 and
    ``steps_per_epoch`` the batches of one epoch on this rank."""

    global_step: int = 0
    stop_requested: bool = False

    @abc.abstractmethod
    def train_step(self, views: list[torch.Tensor], labels: torch.Tensor, step: int, epoch: int) -> dict:
        """One optimizer step; returns the metrics to log (tensors or numbers)."""

    @abc.abstractmethod
    def save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        """Write the run's state after ``batch_in_epoch`` batches of ``epoch``."""

    def begin_epoch(self, epoch: int) -> None:
        """Put the trained modules in training mode (the default trains nothing extra)."""

    def end_epoch(self, epoch: int) -> dict:
        """After the last batch of ``epoch``: checkpoint, and any evaluation, whose metrics
        are merged into the returned record."""
        self.save_checkpoint(epoch, self.steps_per_epoch)
        return {}

    def log_extras(self) -> dict:
        """Numbers logged next to the step's metrics (e.g. the target momentum)."""
        return {}


@dataclass
class LoopSettings:
    epochs: int
    steps_per_epoch: int
    log_every: int
    name: str                       # the progress bar's label
    max_steps: int | None = None    # steps in this invocation
    until_step: int | None = None   # stop when the run's global step reaches N (resume-friendly)
    save_every_steps: int = 0       # also checkpoint every N steps inside an epoch (0: epoch ends only)
    progress: bool = True


@dataclass
class LoopResult:
    last: dict = field(default_factory=dict)  # the newest log record, with the epoch-end metrics merged in
    stopped: bool = False                     # a limit or a stop signal ended the run inside an epoch
    position: float = 0.0                     # epochs done (fractional when stopped inside one)


def agree_to_stop(requested: bool, step: int, dist, device: torch.device) -> bool:
    """Whether to stop after ``step``. One process: at once. Several: the flags of all ranks
    are combined every :data:`STOP_CHECK_EVERY` steps, so all stop at the same step."""
    if not dist.distributed:
        return requested
    if step % STOP_CHECK_EVERY:
        return False
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item() > 0)


class NonFiniteGuard:
    """One host sync per step: is the loss (and, given an optimizer, the gradient norm)
    finite on every rank? If not: raise, or skip the step while ``allowed`` permits."""

    def __init__(self, allowed: int, dist, checkpoint, hint: str = ""):
        self.allowed, self.dist, self.checkpoint, self.hint = allowed, dist, checkpoint, hint
        self.skipped = 0

    def ok(self, loss: torch.Tensor, optimizer, step: int) -> bool:
        bad = ~torch.isfinite(loss.detach().float())
        if optimizer is not None:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                bad = bad | ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
        bad = bad.float().reshape(1)
        if self.dist.distributed:
            torch.distributed.all_reduce(bad)
        if not bool(bad.item() > 0):
            return True
        self.skipped += 1
        what = f"non-finite loss or gradient at step {step} (loss {loss.item():.4g})"
        if self.skipped > self.allowed:
            raise FloatingPointError(f"{what}; {self.hint + '; ' if self.hint else ''}the last good checkpoint "
                                     f"{self.checkpoint} is intact"
                                     + ("" if self.allowed else " (--skip-nonfinite N skips up to N such steps)"))
        log.warning("%s: step skipped (%d of at most %d)", what, self.skipped, self.allowed)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        return False


def _progress_total(task: LoopTask, s: LoopSettings) -> int:
    total = s.epochs * s.steps_per_epoch - task.global_step
    if s.max_steps is not None:
        total = min(total, s.max_steps)
    if s.until_step is not None:
        total = min(total, max(s.until_step - task.global_step, 0))
    return total


def run_loop(task: LoopTask, loader, s: LoopSettings, start_epoch: int, start_batch: int) -> LoopResult:
    """Train ``task`` from (``start_epoch``, ``start_batch``) to the end, a limit or a stop.

    Logs every ``log_every`` global steps, at each epoch end and at the last step (with
    images/s and the share of time spent waiting for data since the previous record);
    checkpoints where it stops, every ``save_every_steps`` and at epoch ends."""
    res = LoopResult(position=float(start_epoch))
    bar = progress_bar(_progress_total(task, s), s.name) if task.is_main and s.progress else None
    steps_this_run = 0

    def at_limit() -> bool:
        return ((s.max_steps is not None and steps_this_run >= s.max_steps)
                or (s.until_step is not None and task.global_step >= s.until_step))

    done = s.until_step is not None and task.global_step >= s.until_step
    try:
        for epoch in range(start_epoch, s.epochs if not done else start_epoch):
            first = start_batch if epoch == start_epoch else 0
            loader.set_epoch(epoch, first)
            task.begin_epoch(epoch)
            batch_idx = first
            t_wait, n_img, t0 = 0.0, 0, time.perf_counter()
            it = iter(loader)
            while True:
                tw = time.perf_counter()
                try:
                    views, labels = next(it)
                except StopIteration:
                    break
                t_wait += time.perf_counter() - tw
                out = task.train_step(views, labels, task.global_step, epoch)
                task.global_step += 1
                steps_this_run += 1
                batch_idx += 1
                n_img += labels.shape[0] * task.dist.world_size
                if bar is not None:
                    bar.update(1)
                if task.global_step % s.log_every == 0 or batch_idx == s.steps_per_epoch or at_limit():
                    res.last = _log_record(task, out, epoch + batch_idx / s.steps_per_epoch, n_img, t_wait, t0, bar)
                    t0, n_img, t_wait = time.perf_counter(), 0, 0.0
                if at_limit() or agree_to_stop(task.stop_requested, task.global_step, task.dist, task.device):
                    task.save_checkpoint(epoch, batch_idx)
                    res.stopped, res.position = True, epoch + batch_idx / s.steps_per_epoch
                    return res
                if s.save_every_steps and task.global_step % s.save_every_steps == 0 and batch_idx < s.steps_per_epoch:
                    task.save_checkpoint(epoch, batch_idx)
            res.position = float(epoch + 1)
            res.last.update(task.end_epoch(epoch))
        return res
    finally:
        if bar is not None:
            bar.close()


def _log_record(task: LoopTask, out: dict, epoch: float, n_img: int, t_wait: float, t0: float, bar) -> dict:
    if task.device.type == "cuda":
        torch.cuda.synchronize(task.device)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    rec = {"step": task.global_step, "epoch": epoch}
    for k, v in out.items():
        rec[k] = float(v.item()) if torch.is_tensor(v) else float(v)
    rec.update(task.log_extras())
    rec["images_per_s"] = n_img / elapsed
    rec["data_wait"] = t_wait / elapsed
    task.logger.log(rec, task.global_step)
    if bar is not None:
        bar.set_postfix(epoch=f"{rec['epoch']:.2f}", loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}")
    return rec
