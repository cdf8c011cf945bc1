"""The shared run loop (fastairl/runtime/loop.py) on a toy task: where it logs, where it
checkpoints, what a resume skips, how limits and stop signals end it, the stop cadence under
two gloo processes, and the non-finite policy. Pre-training and linear evaluation both run
on it; their end-to-end tests (test_cli, test_eval, test_reliability) cover the tasks."""
from __future__ import annotations

import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from fastairl.runtime.loop import (STOP_CHECK_EVERY, LoopSettings, LoopTask, NonFiniteGuard, agree_to_stop,
                                   run_loop)

ONE = SimpleNamespace(distributed=False, world_size=1)


class ListLoader:
    """``steps`` batches of 4 per epoch; ``set_epoch(e, start)`` skips the first ``start``."""

    def __init__(self, steps: int):
        self.steps, self.calls, self.start = steps, [], 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.calls.append((epoch, start_batch))
        self.start = start_batch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for b in range(self.start, self.steps):
            yield [torch.full((4, 1), float(b))], torch.zeros(4, dtype=torch.long)


class Logger:
    def __init__(self):
        self.records = []

    def log(self, rec, step, prefix=None):
        self.records.append(dict(rec))


class Toy(LoopTask):
    def __init__(self, steps_per_epoch: int, stop_at_step: int | None = None):
        self.dist, self.device, self.is_main = ONE, torch.device("cpu"), True
        self.logger, self.steps_per_epoch = Logger(), steps_per_epoch
        self.global_step, self.stop_requested = 0, False
        self.stop_at_step = stop_at_step
        self.steps, self.saved, self.epochs_begun = [], [], []

    def train_step(self, views, labels, step, epoch):
        self.steps.append((step, epoch, float(views[0][0, 0])))
        if self.stop_at_step is not None and step + 1 == self.stop_at_step:
            self.stop_requested = True  # as the signal handler does
        return {"loss": torch.tensor(1.0 / (step + 1)), "lr": 0.1}

    def save_checkpoint(self, epoch, batch_in_epoch):
        self.saved.append((epoch, batch_in_epoch, self.global_step))

    def begin_epoch(self, epoch):
        self.epochs_begun.append(epoch)

    def end_epoch(self, epoch):
        super().end_epoch(epoch)
        return {"val_acc": 10.0 * (epoch + 1)}

    def log_extras(self):
        return {"momentum": 0.99}


def settings(**kw) -> LoopSettings:
    base = dict(epochs=2, steps_per_epoch=3, log_every=2, name="toy", progress=False)
    return LoopSettings(**{**base, **kw})


def test_full_run_logs_and_checkpoints_at_the_documented_points():
    task, loader = Toy(3), ListLoader(3)
    res = run_loop(task, loader, settings(), 0, 0)
    assert task.global_step == 6 and not res.stopped and res.position == 2.0
    assert [s[0] for s in task.steps] == list(range(6))
    assert loader.calls == [(0, 0), (1, 0)] and task.epochs_begun == [0, 1]
    assert task.saved == [(0, 3, 3), (1, 3, 6)]  # epoch ends only
    # every 2nd global step and each epoch end (step 3 is an epoch end, 6 both)
    assert [r["step"] for r in task.logger.records] == [2, 3, 4, 6]
    rec = task.logger.records[-1]
    assert rec["epoch"] == 2.0 and rec["loss"] == pytest.approx(1 / 6) and rec["momentum"] == 0.99
    assert rec["images_per_s"] > 0 and 0.0 <= rec["data_wait"] <= 1.0
    assert res.last["val_acc"] == 20.0 and res.last["step"] == 6  # epoch-end metrics merged in


def test_resume_inside_an_epoch_skips_the_done_batches():
    task, loader = Toy(3), ListLoader(3)
    task.global_step = 5  # epoch 1, batch 2 done
    res = run_loop(task, loader, settings(epochs=3), 1, 2)
    assert loader.calls == [(1, 2), (2, 0)]
    assert task.steps[0] == (5, 1, 2.0)  # the third batch of epoch 1 at global step 5
    assert task.global_step == 9 and res.position == 3.0
    assert task.saved == [(1, 3, 6), (2, 3, 9)]


def test_max_steps_stops_inside_an_epoch_with_a_checkpoint_and_a_record():
    task = Toy(3)
    res = run_loop(task, ListLoader(3), settings(max_steps=4, log_every=100), 0, 0)
    assert res.stopped and res.position == pytest.approx(1 + 1 / 3)
    assert task.saved == [(0, 3, 3), (1, 1, 4)]
    assert [r["step"] for r in task.logger.records] == [3, 4]  # epoch end, and the last step


def test_until_step_counts_the_run_not_the_invocation():
    task = Toy(3)
    task.global_step = 2
    res = run_loop(task, ListLoader(3), settings(until_step=4), 0, 2)
    assert res.stopped and task.global_step == 4 and task.saved[-1] == (1, 1, 4)
    done = Toy(3)
    done.global_step = 4
    res = run_loop(done, ListLoader(3), settings(until_step=4), 1, 1)
    assert not done.steps and not done.saved and res.position == 1.0  # nothing left to do


def test_save_every_steps_checkpoints_inside_epochs_only():
    task = Toy(3)
    run_loop(task, ListLoader(3), settings(save_every_steps=2), 0, 0)
    # steps 2 and 4 inside epochs; step 6 is an epoch end, checkpointed once by end_epoch
    assert task.saved == [(0, 2, 2), (0, 3, 3), (1, 1, 4), (1, 3, 6)]


def test_a_stop_signal_in_one_process_stops_after_that_step():
    task = Toy(3, stop_at_step=2)
    res = run_loop(task, ListLoader(3), settings(), 0, 0)
    assert res.stopped and task.global_step == 2 and task.saved == [(0, 2, 2)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_worker(rank: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dist = SimpleNamespace(distributed=True, world_size=2)
        # only rank 1 is signalled, after step 3: both must stop at the next agreed step
        stops = [step for step in range(1, 12)
                 if agree_to_stop(rank == 1 and step >= 3, step, dist, torch.device("cpu"))]
        out.put((rank, stops[0] if stops else None))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_agree_to_stop_at_the_same_step():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_stop_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == {0: STOP_CHECK_EVERY, 1: STOP_CHECK_EVERY}


def _model_and_opt():
    m = torch.nn.Linear(2, 1)
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


def test_nonfinite_guard_skips_then_raises_naming_the_checkpoint(caplog):
    guard = NonFiniteGuard(1, ONE, "runs/x/last.pth", hint="lower --lr")
    m, opt = _model_and_opt()
    m(torch.ones(1, 2)).sum().backward()
    assert guard.ok(torch.tensor(0.5), opt, 0)
    assert guard.ok(torch.tensor(math.nan), opt, 1) is False  # the one allowed skip
    assert all(p.grad is None for p in m.parameters())  # gradients of the skipped step dropped
    assert "step skipped (1 of at most 1)" in caplog.text
    with pytest.raises(FloatingPointError) as e:
        guard.ok(torch.tensor(math.inf), opt, 7)
    msg = str(e.value)
    assert "at step 7" in msg and "lower --lr" in msg and "runs/x/last.pth is intact" in msg
    assert "--skip-nonfinite" not in msg  # the flag is already in use


def test_nonfinite_guard_checks_gradients_and_names_the_flag():
    guard = NonFiniteGuard(0, ONE, "last.pth")
    m, opt = _model_and_opt()
    (m(torch.ones(1, 2)).sum() * torch.tensor(math.inf)).backward()
    with pytest.raises(FloatingPointError, match=r"--skip-nonfinite N"):
        guard.ok(torch.tensor(1.0), opt, 3)  # a finite loss with an infinite gradient
    assert guard.ok(torch.tensor(1.0), None, 4)  # without an optimizer only the loss counts


def test_both_tasks_run_on_the_loop():
    from fastairl.engine import Trainer
    from fastairl.linear_eval import LinearEval
    for task in (Trainer, LinearEval):
        assert issubclass(task, LoopTask)
        assert "fit" in vars(task) and "end_epoch" in vars(task)
