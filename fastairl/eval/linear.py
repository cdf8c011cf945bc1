"""Linear evaluation of a frozen backbone: the reference's protocol (REFERENCE.md, "Linear
evaluation"; the presets and the classifier are in ``linear_protocol``), run fast: torchrun
DDP, AMP and channels_last for the frozen trunk (the classifier and its loss in fp32, so no
gradient scaler is needed), any loader backend, exact validation under DDP, atomic
checkpoints with mid-epoch ``--resume``, and the bit-for-bit frozen check (``frozen``).
There is no precomputed-features mode: the protocol trains on freshly augmented crops every
epoch, which a feature cache cannot reproduce. ``docs/linear-eval.md`` has the details; the
command line is ``linear_cli`` (``python -m fastairl.linear_eval``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastairl.runtime import distributed as fdist
from fastairl.data.augment import normalize_uint8
from fastairl.eval.frozen import BackboneChangedError, check_frozen, tensor_fingerprint  # noqa: F401
from fastairl.eval.knn import autocast, gather_unique, shard_indices, topk_hits
from fastairl.eval.linear_protocol import (HEAD_LAYOUT, LinearClassifier, check_head_layout, default_run_name,
                                           lr_for, resolve_settings)
from fastairl.eval.scale import load_eval_encoder, prepare_eval_args
from fastairl.runtime.loop import LoopTask

log = logging.getLogger("fastairl")

CKPT_KIND = "fastairl_linear_eval"
EXIT_USER, EXIT_BACKBONE_CHANGED = 2, 4


class LinearEval(LoopTask):
    """One linear-evaluation run (one process per device, or one plain process)."""

    def __init__(self, args: argparse.Namespace):
        from fastairl.runtime.device import resolve_amp, resolve_device
        self.args = args
        self.ckpt_config = prepare_eval_args(args, "linear_eval")  # demo schedule, image size, arch
        self.s = resolve_settings(args)
        self.device = resolve_device(args.device)
        self.dist = fdist.init(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", fdist.cuda_index(self.dist.local_rank))
        self.is_main = self.dist.is_main
        self.amp_dtype = resolve_amp(args.amp, self.device)
        self.stop_requested = False
        self.stop_signal = None
        self.run_dir_fresh = False
        self.logger = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from fastairl.data import build_loader, choose_loader, resolve_data
        from fastairl.data.base import LoaderSpec
        from fastairl.runtime.errors import UserError
        a, s, d = self.args, self.s, self.dist
        if s.batch_size % d.world_size:
            raise UserError(f"--batch-size {s.batch_size} is not divisible by the {d.world_size} processes")
        self.local_batch = s.batch_size // d.world_size
        self.data_root = resolve_data(a.data)

        backbone, self.desc = load_eval_encoder(a, self.ckpt_config, "linear_eval")
        self.fingerprint = tensor_fingerprint(backbone)
        backbone.requires_grad_(False)
        backbone = backbone.to(self.device)
        if a.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        backbone.eval()
        self.backbone = backbone

        name = a.name or default_run_name(a.ckpt, self.desc["encoder"], self.desc["arch"])
        self.run_dir = Path(a.output_dir) / name
        self._prepare_run_dir()
        from fastairl.runtime.loop import NonFiniteGuard
        self.nonfinite = NonFiniteGuard(a.skip_nonfinite, d, self.run_dir / "last.pth", hint="lower --lr")

        self.loader_name = choose_loader(a.loader, self.data_root, self.device.type)

        def make(split: str, train: bool):
            spec = LoaderSpec(root=str(self.data_root), split=split, recipe="supervised" if train else "eval",
                              image_size=a.image_size, batch_size=self.local_batch, rank=d.rank,
                              world_size=d.world_size, device=str(self.device), workers=a.workers,
                              seed=a.seed, train=train)
            try:
                return build_loader(self.loader_name, spec)
            except ImportError as e:
                raise UserError(f"--loader {self.loader_name}: the backend cannot be imported ({e}); "
                                f"use --loader folder") from None

        self.train_loader = make("train", True)
        self.val_loader = make("val", False)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"--data {a.data}: fewer training images than one global batch of {s.batch_size}")
        if self.train_loader.num_classes != self.val_loader.num_classes:
            raise UserError(f"{self.data_root}: train has {self.train_loader.num_classes} classes but val has "
                            f"{self.val_loader.num_classes}; both splits need the same class folders")
        self.num_classes = self.train_loader.num_classes
        self.total_steps = s.epochs * self.steps_per_epoch

        self.augment = None
        if self.train_loader.output == "uint8":
            from fastairl.data.augment import GPUAugment
            from fastairl.data.recipes import get_recipe
            self.augment = GPUAugment(get_recipe("supervised"), out_dtype=torch.float32,
                                      channels_last=a.channels_last, flip_done=self.train_loader.flipped)

        torch.manual_seed(a.seed)  # the same classifier initialisation on every rank
        self.head = LinearClassifier(backbone.feat_dim, self.num_classes, bn=a.bn).to(self.device)
        self.base_lr = s.lr * s.batch_size / 256.0
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=self.base_lr, momentum=s.momentum,
                                         weight_decay=s.weight_decay, nesterov=s.nesterov)
        self.ddp_head = self.head
        if d.distributed:
            kw = dict(device_ids=[self.device.index]) if self.device.type == "cuda" else {}
            self.ddp_head = nn.parallel.DistributedDataParallel(self.head, **kw)

        self.start_epoch, self.start_batch, self.global_step = 0, 0, 0
        self.best = {"acc1": -1.0, "acc5": -1.0, "epoch": 0}
        self.last_val: dict | None = None
        self._pos = (0, 0)  # (epoch, batch) of the newest checkpoint
        if a.resume:
            self._resume(a.resume)
        from fastairl.runtime.logging_utils import RunLogger
        self.logger = RunLogger(self.run_dir, self.is_main, purge_step=self.global_step or None)
        if self.is_main:
            (self.run_dir / "args.json").write_text(json.dumps(
                {**vars(a), "resolved": {**vars(s), "milestones": list(s.milestones)}, "backbone": self.desc},
                indent=2, sort_keys=True, default=str))
            amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
            log.info("linear eval of %s (%s encoder, %s, %d-d features%s) on %s: %d process(es) on %s, amp=%s, "
                     "loader=%s", self.desc["ckpt"] or "random init", self.desc["encoder"], self.desc["arch"],
                     backbone.feat_dim, ", BN" if a.bn else "", self.data_root, d.world_size, self.device, amp,
                     self.loader_name)
            log.info("global batch %d, %d steps/epoch, %d epochs, lr %.4g (%s%s), run folder %s", s.batch_size,
                     self.steps_per_epoch, s.epochs, self.base_lr, s.schedule,
                     f" x0.1 at epochs {list(s.milestones)}" if s.schedule == "multistep" else "", self.run_dir)

    def _prepare_run_dir(self) -> None:
        from fastairl.runtime.run_folder import prepare_run_dir
        self.run_dir_fresh = prepare_run_dir(self.run_dir, self.is_main, bool(self.args.resume),
                                             self.args.overwrite, where="--output-dir / --name")

    def discard_failed_start(self) -> None:
        """A start that failed before its first step and checkpoint removes what it wrote."""
        from fastairl.runtime.run_folder import discard_start_files
        run_dir = getattr(self, "run_dir", None)
        if (not (self.is_main and getattr(self, "run_dir_fresh", False)) or getattr(self, "global_step", 0)
                or run_dir is None or (run_dir / "last.pth").exists()):
            return
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        discard_start_files(run_dir)

    def _resume(self, which: str) -> None:
        from fastairl.runtime.errors import UserError
        from fastairl.backbone_io import load_checkpoint
        from fastairl.runtime.run_folder import missing_checkpoint_message
        path = self.run_dir / "last.pth" if which == "auto" else Path(which)
        if not path.is_file():
            raise UserError(missing_checkpoint_message(path, which == "auto"))
        ck = load_checkpoint(path)
        if ck.get("kind") != CKPT_KIND:
            raise UserError(f"--resume: {path} is not a linear-evaluation checkpoint of fastairl (give the "
                            f"pre-training checkpoint as --ckpt, and --resume only a linear-eval run's last.pth)")
        saved = ck["backbone"]["fingerprint"]
        if saved != self.fingerprint:
            diff = sorted(n for n in set(saved) | set(self.fingerprint) if saved.get(n) != self.fingerprint.get(n))
            raise UserError(f"--resume: {path} was trained on another backbone (tensor '{diff[0]}' differs); "
                            f"give the same --ckpt/--encoder as the first run ({ck['backbone'].get('ckpt')}, "
                            f"{ck['backbone'].get('encoder')})")
        check_head_layout(ck, path)
        try:
            self.head.load_state_dict(ck["classifier"])
        except RuntimeError:
            raise UserError(f"--resume: the classifier in {path} does not fit this run (was --bn "
                            f"{'not ' if self.args.bn else ''}given the first time?)") from None
        self.optimizer.load_state_dict(ck["optimizer"])
        self.start_epoch, self.start_batch = int(ck["epoch"]), int(ck["batch_in_epoch"])
        self.global_step = int(ck["step"])
        self.best = dict(ck["best"])
        self.last_val = ck.get("last_val")
        self._pos = (self.start_epoch, self.start_batch)
        if self.start_batch >= self.steps_per_epoch:
            self.start_epoch, self.start_batch = self.start_epoch + 1, 0
        log.info("resumed from %s at epoch %d, batch %d (step %d)", path, self.start_epoch, self.start_batch,
                 self.global_step)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, epoch: int, batch_in_epoch: int, best: bool = False) -> None:
        """Checks the backbone (all ranks), then rank 0 writes ``last.pth`` (and ``best.pth``)."""
        check_frozen(self.fingerprint, self.backbone)
        self._pos = (epoch, batch_in_epoch)
        if not self.is_main:
            return
        from fastairl.checkpoint import atomic_torch_save
        ck = {
            "kind": CKPT_KIND,
            "classifier": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": self.global_step,
            "epochs_done": epoch + (1 if batch_in_epoch >= self.steps_per_epoch else 0),
            "best": self.best, "last_val": self.last_val,
            "num_classes": self.num_classes, "feat_dim": self.backbone.feat_dim, "bn": bool(self.args.bn),
            "head_layout": HEAD_LAYOUT,
            "backbone": {**self.desc, "fingerprint": self.fingerprint},
            "settings": {**vars(self.s), "milestones": list(self.s.milestones)},
        }
        atomic_torch_save(ck, self.run_dir / "last.pth")
        if best:
            atomic_torch_save(ck, self.run_dir / "best.pth")

    # ------------------------------------------------------------------ loop
    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            f = self.backbone.features(x)
        return f.float()

    def train_step(self, views: list[torch.Tensor], labels: torch.Tensor, step: int, epoch: int) -> dict:
        lr = lr_for(self.s.schedule, self.base_lr, epoch, step, self.total_steps, self.s.milestones)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x = self.augment(views)[0] if self.augment is not None else views[0]
        f = self._features(x)
        logits = self.ddp_head(f)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        acc1 = topk_hits(logits.detach(), labels, ks=(1,))[0].float().mean() * 100.0
        if not self.nonfinite.ok(loss, self.optimizer, step):
            return {"loss": loss.detach(), "acc1": acc1, "lr": lr, "skipped": 1.0}
        self.optimizer.step()
        return {"loss": loss.detach(), "acc1": acc1, "lr": lr}

    @torch.no_grad()
    def validate(self, epoch_done: int) -> dict:
        """Exact top-1/top-5 on the val split (each image once, whatever the world size)."""
        if self.dist.distributed:
            # DDP syncs the BN running statistics from rank 0 at the start of each forward, so
            # after the last step every rank holds its own update; validate (and save) rank 0's.
            for b in self.head.buffers():
                fdist.broadcast_(b, 0)
        self.head.eval()
        loader = self.val_loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        idx_list, _ = shard_indices(loader, self.dist.rank, self.dist.world_size)
        hits1, hits5 = [], []
        for views, labels in loader:
            x = views[0]
            if loader.output == "uint8":
                x = normalize_uint8(x, channels_last=self.args.channels_last)
            logits = self.head(self._features(x))
            h1, h5 = topk_hits(logits, labels)
            hits1.append(h1)
            hits5.append(h5)
        self.head.train()
        h1 = torch.cat(hits1).long() if hits1 else torch.zeros(0, dtype=torch.long, device=self.device)
        h5 = torch.cat(hits5).long() if hits5 else torch.zeros(0, dtype=torch.long, device=self.device)
        if idx_list is not None and len(idx_list) == h1.shape[0]:
            idx = torch.tensor(idx_list, dtype=torch.long, device=h1.device)
        else:  # no index information: count every sample this rank saw (duplicates included)
            idx = torch.arange(h1.shape[0], device=h1.device) * self.dist.world_size + self.dist.rank
        _, h1, h5 = gather_unique(idx, h1, h5)
        n = h1.shape[0]
        res = {"acc1": float(h1.float().mean() * 100.0) if n else 0.0,
               "acc5": float(h5.float().mean() * 100.0) if n else 0.0, "n": n, "epoch": epoch_done}
        self.last_val = res
        improved = res["acc1"] > self.best["acc1"]
        if improved:
            self.best = {"acc1": res["acc1"], "acc5": res["acc5"], "epoch": epoch_done}
        rec = {"epoch": epoch_done, "step": self.global_step, "acc1": res["acc1"], "acc5": res["acc5"],
               "images": n, "best_acc1": self.best["acc1"], "best_acc5": self.best["acc5"]}
        self.logger.log(rec, self.global_step, prefix="val")
        if self.is_main:
            log.info("epoch %g: val top-1 %.2f top-5 %.2f (%d images); best top-1 %.2f at epoch %g",
                     round(epoch_done, 2), res["acc1"], res["acc5"], n, self.best["acc1"], round(self.best["epoch"], 2))
        res["improved"] = improved
        return res

    def fit(self) -> dict:
        """Train (the shared loop), validate where the run ends if it was not just validated,
        and check the backbone is bit-for-bit what was loaded."""
        from fastairl.runtime.loop import LoopSettings, run_loop
        from fastairl.runtime.stop_signals import install_stop_handlers
        settings = LoopSettings(epochs=self.s.epochs, steps_per_epoch=self.steps_per_epoch,
                                log_every=self.args.log_every, name=self.run_dir.name,
                                max_steps=self.args.max_steps, progress=self.args.progress)
        install_stop_handlers(self)
        self.validated_at = None
        end = run_loop(self, self.train_loader, settings, self.start_epoch, self.start_batch).position
        if self.validated_at != end:
            # stopped early (or resumed a finished run): still report a number for these weights
            improved = self.validate(end)["improved"]
            self.save_checkpoint(*self._pos, best=improved)
        check_frozen(self.fingerprint, self.backbone)
        result = {"best_acc1": self.best["acc1"], "best_acc5": self.best["acc5"], "best_epoch": self.best["epoch"],
                  "last_acc1": self.last_val["acc1"], "last_acc5": self.last_val["acc5"],
                  "last_epoch": self.last_val["epoch"], "steps": self.global_step,
                  "encoder": self.desc["encoder"], "arch": self.desc["arch"], "ckpt": self.desc["ckpt"]}
        if self.is_main:
            (self.run_dir / "result.json").write_text(json.dumps(result, indent=2))
        return result

    def begin_epoch(self, epoch: int) -> None:
        self.head.train()

    def end_epoch(self, epoch: int) -> dict:
        """Validate every ``eval_every`` epochs and after the last, then checkpoint (``best.pth``
        too when top-1 improved)."""
        done = epoch + 1
        best = False
        if self.s.eval_every and done % self.s.eval_every == 0 or done == self.s.epochs:
            best = self.validate(done)["improved"]
            self.validated_at = done
        self.save_checkpoint(epoch, self.steps_per_epoch, best=best)
        return {}

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        fdist.teardown()
