"""What a pre-training run keeps between processes and restarts: the checkpoint it writes
(reference layout plus ``fastairl`` extras: step, RNG states, scaler, method state), resuming
from one bit-exactly, and the start-time check that every rank runs the same code and flags.
A mixin of :class:`fastairl.engine.Trainer`, kept apart so the loop reads alone."""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt_io
from . import rank_check
from .runtime.errors import UserError

log = logging.getLogger("fastairl")


class CheckpointWriteError(UserError):
    """The disk refused a checkpoint; the previous one is intact."""


def code_version() -> str:
    """A digest of fastairl's own source files, to catch ranks running different code."""
    h = hashlib.sha1()
    pkg = Path(__file__).resolve().parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(f.relative_to(pkg).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _rng_state() -> dict:
    """RNG states as tensors and plain numbers, so checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        # a checkpoint from a machine with more (or fewer) visible GPUs: restore the common ones
        for i, st in enumerate(list(state["cuda"])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(st, i)


class RunStateMixin:
    """Checkpoint, resume and rank agreement for a :class:`fastairl.engine.Trainer`."""

    def _check_ranks_agree(self) -> None:
        """Every rank must run the same experiment, batch and code; a mismatch (a stale
        checkout on one node, different flags) is caught here, not as a hang later."""
        if not self.dist.distributed:
            return
        mine = {"exp": self.cfg.name, "batch_size": self.cfg.batch_size, "config": _digest(self.cfg.to_dict()),
                "code": code_version()}
        allv = [None] * self.dist.world_size
        torch.distributed.all_gather_object(allv, mine)
        for r, other in enumerate(allv):
            diff = [k for k in mine if other[k] != allv[0][k]]
            if diff:
                k = diff[0]
                raise UserError(f"rank {r} disagrees with rank 0 on {k}: {other[k]!r} vs {allv[0][k]!r}; start every "
                                f"rank with the same code, --exp, --batch-size and --set flags")

    def _resume(self, path: Path, ck: dict) -> None:
        try:
            expected = self.model.layout_state_dict()
            ckpt_io.check_model_keys(ck["model"], expected, path)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        self.model.load_layout_state_dict(ckpt_io.strip_prefix(ck["model"]))
        if self.opts.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if "optimizer" in ck and ckpt_io.optimizer_state_fits(self.optimizer, ck["optimizer"]):
            self.optimizer.load_state_dict(ck["optimizer"])
        elif "optimizer" in ck:
            log.warning("resume: the optimizer state in %s does not fit this optimizer; momentum buffers "
                        "start from zero", path)
        if self.probe is not None and "classifier" in ck:
            self.probe.load_state_dict(ckpt_io.strip_prefix(ck["classifier"]))
            if "optimizer_cls" in ck and ckpt_io.optimizer_state_fits(self.probe_opt, ck["optimizer_cls"]):
                self.probe_opt.load_state_dict(ck["optimizer_cls"])
        extra = ck.get("fastairl")
        if extra:
            self.start_epoch = int(extra["epoch"])
            self.start_batch = int(extra["batch_in_epoch"])
            self.global_step = int(extra["step"])
            if self.scaler is not None and extra.get("scaler"):
                self.scaler.load_state_dict(extra["scaler"])
            self.model.restore_extra_state(extra.get("method_state"))
            rngs = extra.get("rng")
            if rngs and self.dist.rank < len(rngs) and rngs[self.dist.rank] is not None:
                _set_rng_state(rngs[self.dist.rank])
        else:  # a reference checkpoint: epochs done only
            self.start_epoch = int(ck.get("start_epoch", 0))
            self.global_step = self.start_epoch * self.steps_per_epoch
        if self.start_batch >= self.steps_per_epoch:
            self.start_epoch, self.start_batch = self.start_epoch + 1, 0
        log.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.start_epoch, self.start_batch,
                 self.global_step)

    # --------------------------------------------------------------- checkpoint
    def save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        """All ranks call this (RNG states are gathered); rank 0 writes."""
        rng = _rng_state()
        rngs = [rng]
        if self.dist.distributed:
            rngs = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, rng)
        agree = rank_check.check_ranks_agree(self.model, self.probe, self.global_step, self.cfg.rank_check)
        if not self.is_main:
            return
        epochs_done = epoch + (1 if batch_in_epoch >= self.steps_per_epoch else 0)
        ck = {
            "start_epoch": epochs_done,
            "model": ckpt_io.add_prefix(self.model.layout_state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "fastairl": {
                "step": self.global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config": self.cfg.to_dict(), "rng": rngs,
                "method_state": self.model.extra_state(),
                "world_size": self.dist.world_size, "rank_check": agree,
            },
        }
        if self.probe is not None:
            ck["classifier"] = ckpt_io.add_prefix(self.probe.state_dict())
            ck["optimizer_cls"] = self.probe_opt.state_dict()
        path = self.run_dir / "last.pth"
        try:
            ckpt_io.atomic_torch_save(ck, path, verify=True)
        except OSError as e:
            raise CheckpointWriteError(f"could not write checkpoint {path} ({e.strerror or e}); the previous "
                                       f"checkpoint is intact. Free disk space, then continue with --resume") from None
