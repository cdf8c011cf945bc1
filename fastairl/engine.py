"""The training loop shared by every method.

One process per device (torchrun) or one plain process. Per iteration: fetch a batch
(time spent waiting is logged as the data-wait share), run the batched augmentation when
the loader hands over uint8 views, forward under autocast, backward (GradScaler for fp16),
optimizer step, the method's ``after_step`` (target EMA, queue), the gradient-free online
probe. Epochs, logging, limits, stop signals and checkpoint cadence are the shared loop's
(``fastairl/runtime/loop.py``); checkpoint/resume and the evaluations live in
``trainer_state.py`` and ``trainer_eval.py``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt_io
from .runtime import distributed as fdist
from .config import Config, reference_warnings
from .data import build_loader, choose_loader, resolve_data
from .data import registry
from .data.base import LoaderSpec
from .runtime.logging_utils import RunLogger
from .methods import build_method, method_class
from .methods.supervised import topk_acc
from .optim import lr_at
from .runtime.device import cuda_bf16_native, resolve_amp, resolve_device  # noqa: F401 (re-exported)
from .runtime.errors import UserError
from .runtime.loop import STOP_CHECK_EVERY, LoopSettings, LoopTask, NonFiniteGuard, run_loop  # noqa: F401
from .optim.build import build_optimizer
from .trainer_eval import EvalMixin
from .trainer_state import CheckpointWriteError, RunStateMixin, code_version  # noqa: F401 (re-exported)
from .runtime.run_folder import discard_start_files, missing_checkpoint_message, prepare_run_dir
from .runtime.stop_signals import install_stop_handlers

log = logging.getLogger("fastairl")


@dataclass
class RunOptions:
    data: str = "demo"
    output_dir: str = "outputs"
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    loader: str | None = None
    max_steps: int | None = None
    resume: str | None = None
    overwrite: bool = False
    compile: bool = False
    workers: int | None = None
    progress: bool = True
    save_every_steps: int = 0        # also checkpoint every N optimizer steps (0: epoch ends only)
    until_step: int | None = None    # stop when the run's global step reaches N (resume-friendly)
    skip_nonfinite: int = 0          # skip up to N steps with a non-finite loss/gradient instead of stopping


class Trainer(RunStateMixin, EvalMixin, LoopTask):
    def __init__(self, cfg: Config, opts: RunOptions):
        self.cfg, self.opts = cfg, opts
        self.device = resolve_device(opts.device)
        self.dist = fdist.init(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", fdist.cuda_index(self.dist.local_rank))
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest conv kernels once
        self.is_main = self.dist.is_main
        self.amp_dtype = resolve_amp(opts.amp, self.device)
        self.stop_requested = False
        self.stop_signal = None
        self.run_dir_fresh = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, opts, d = self.cfg, self.opts, self.dist
        if cfg.batch_size % d.world_size:
            raise UserError(f"--batch-size {cfg.batch_size} is not divisible by the {d.world_size} processes")
        self.local_batch = cfg.batch_size // d.world_size
        self._check_ranks_agree()
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restarts > 0 and not opts.resume:
            # torchrun restarted the job after a failure: continue from the last checkpoint
            last = Path(opts.output_dir) / cfg.name / "last.pth"
            if last.is_file():
                opts.resume = "auto"
                log.warning("torchrun restart #%d: resuming from %s", restarts, last)
            else:
                opts.overwrite = True
                log.warning("torchrun restart #%d: no checkpoint yet, starting the run again", restarts)
        self.data_root = resolve_data(opts.data)
        self.loader_name = choose_loader(opts.loader or cfg.loader, self.data_root, self.device.type)
        if registry.needs_packed(self.loader_name) and opts.data == "demo":
            from .data.demo_packed import ensure_demo_packed
            self.data_root = ensure_demo_packed(self.data_root)
        if cfg.sample_order not in registry.get(self.loader_name).orders:
            able = [n for n in registry.names() if cfg.sample_order in registry.get(n).orders]
            raise UserError(f"sample_order={cfg.sample_order} is {'/'.join(able)}'s page-aware order; the "
                            f"{self.loader_name} loader always uses a full random permutation (use --loader "
                            f"{able[0]} or sample_order=random)")
        workers = opts.workers if opts.workers is not None else cfg.workers
        spec = LoaderSpec(root=str(self.data_root), split="train", recipe=cfg.recipe, image_size=cfg.image_size,
                          batch_size=self.local_batch, rank=d.rank, world_size=d.world_size,
                          device=str(self.device), workers=workers, seed=cfg.seed, train=True,
                          extra={"max_bad_share": cfg.max_bad_share, "order": cfg.sample_order})
        self.loader = build_loader(self.loader_name, spec)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"--data {opts.data}: fewer training images than one global batch of {cfg.batch_size}")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.run_dir = Path(opts.output_dir) / cfg.name
        self.nonfinite = NonFiniteGuard(opts.skip_nonfinite, d, self.run_dir / "last.pth")
        self._resume_path, self._resume_ckpt = None, None
        if opts.resume:
            self._resume_path = self.run_dir / "last.pth" if opts.resume == "auto" else Path(opts.resume)
            if not self._resume_path.is_file():
                raise UserError(missing_checkpoint_message(self._resume_path, opts.resume == "auto"))
            try:
                self._resume_ckpt = ckpt_io.load(self._resume_path)
            except (ValueError, FileNotFoundError) as e:
                raise UserError(str(e)) from None
        self.num_classes = self._choose_num_classes()

        self._prepare_run_dir()

        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        model = build_method(cfg, self.device, self.num_classes).to(self.device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        scale = cfg.batch_size / 256.0
        self.base_lr = cfg.lr * scale
        self.optimizer = build_optimizer(cfg, model, self.base_lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.probe = None
        if cfg.probe and not model.classifies:
            feat_dim = model.online_encoder.feat_dim
            self.probe = nn.Linear(feat_dim, self.num_classes).to(self.device)
            self.probe_base_lr = cfg.probe_lr * scale
            self.probe_opt = torch.optim.SGD(self.probe.parameters(), lr=self.probe_base_lr, momentum=0.9,
                                             weight_decay=0.0)

        self.augment = None
        if self.loader.output == "uint8":
            from .data.augment import GPUAugment
            from .data.recipes import get_recipe
            self.augment = GPUAugment(get_recipe(cfg.recipe), out_dtype=torch.float32,
                                      channels_last=opts.channels_last,
                                      flip_done=self.loader.flipped).to(self.device)

        if opts.compile:
            model.online_encoder.compile()
            if model.uses_target:
                model.target_encoder.compile()

        self.ddp_model = model
        self.ddp_probe = self.probe
        if d.distributed:
            kw = dict(device_ids=[self.device.index]) if self.device.type == "cuda" else {}
            self.ddp_model = nn.parallel.DistributedDataParallel(model, **_no_buffer_sync(), **kw)
            if self.probe is not None:
                self.ddp_probe = nn.parallel.DistributedDataParallel(self.probe, **kw)

        # Weights start identical on every rank (seeded above). From here on each rank draws
        # its own augmentation choices: GPUAugment samples from the global generator, and a
        # shared seed would give image i of every rank's batch the same jitter, blur and
        # solarize decisions (the reference's loader workers each had their own stream).
        torch.manual_seed(cfg.seed * 1_000_003 + 1 + d.rank)

        self.start_epoch, self.start_batch, self.global_step = 0, 0, 0
        if self._resume_ckpt is not None:
            self._resume(self._resume_path, self._resume_ckpt)
            self._resume_ckpt = None
        self.logger = RunLogger(self.run_dir, self.is_main, purge_step=self.global_step or None)
        if self.is_main:
            cfg.save(self.run_dir / "config.json")
            log.info("run %s: %s %s, %d process(es) on %s, amp=%s, channels_last=%s, loader=%s, data=%s",
                     cfg.name, cfg.method, cfg.arch, d.world_size, self.device,
                     {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype],
                     opts.channels_last, self.loader_name, self.data_root)
            log.info("global batch %d (%d per process), %d steps/epoch, %d epochs, lr %.4g",
                     cfg.batch_size, self.local_batch, self.steps_per_epoch, cfg.epochs, self.base_lr)
            for msg in reference_warnings(cfg, d.world_size, self.local_batch):
                log.warning(msg)

    def _prepare_run_dir(self) -> None:
        self.run_dir_fresh = prepare_run_dir(self.run_dir, self.is_main, bool(self.opts.resume),
                                             self.opts.overwrite)

    def _choose_num_classes(self) -> int:
        data_classes = self.loader.num_classes
        n = self.cfg.num_classes or data_classes
        ck = self._resume_ckpt
        if ck is not None and not self.cfg.num_classes:
            head = ckpt_io.strip_prefix(ck.get("classifier") or {}).get("weight")
            if head is None:
                key = method_class(self.cfg.method).class_head_key
                head = ckpt_io.strip_prefix(ck["model"]).get(key) if key else None
            if head is not None and head.dim() == 2:
                n = int(head.shape[0])
        if n < data_classes:
            raise UserError(f"the classifier has {n} classes but the data has {data_classes}; "
                            f"set --set num_classes={data_classes} or use matching data")
        if n != data_classes:
            log.info("classifier size %d (from %s); the data has %d classes", n,
                     "the resumed checkpoint" if not self.cfg.num_classes else "num_classes", data_classes)
        return n

    # -------------------------------------------------------------------- loop
    def _set_lrs(self, step: int, epoch: int) -> float:
        cfg = self.cfg
        lr = lr_at(cfg.schedule, step, self.total_steps, self.base_lr,
                   warmup_iters=int(round(cfg.warmup_epochs * self.steps_per_epoch)),
                   milestones=tuple(cfg.milestones))
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.probe is not None:
            plr = lr_at(cfg.probe_schedule, step, self.total_steps, self.probe_base_lr,
                        milestones=tuple(cfg.probe_milestones), epoch=epoch)
            for g in self.probe_opt.param_groups:
                g["lr"] = plr
        return lr

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.augment is not None:
            return self.augment(views)
        if self.opts.channels_last:
            return [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def train_step(self, views, labels, step: int, epoch: int) -> dict:
        lr = self._set_lrs(step, epoch)
        views = self._prepare_views(views)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.model.loss_parts
        loss, metrics, feats = 0.0, {}, None
        for part in range(parts):
            # a symmetric loss runs forward+backward per term: half the activation memory;
            # DDP all-reduces once, after the last part's backward
            sync = contextlib.nullcontext()
            if part < parts - 1 and self.dist.distributed:
                sync = self.ddp_model.no_sync()
            with sync:
                with self._autocast():
                    out = self.ddp_model(views, labels, part=part) if parts > 1 else self.ddp_model(views, labels)
                part_loss = out[0]
                (self.scaler.scale(part_loss) if self.scaler is not None else part_loss).backward()
            loss = loss + part_loss.detach()
            if part == 0:
                metrics = out[1]
            if out[2] is not None:  # the probe view's features come from whichever part encodes it
                feats = out[2]
        if self.scaler is not None:
            # fp16: the scaler skips steps whose gradients overflow; that is not an error
            if not self.nonfinite.ok(loss, None, step):
                return {"loss": loss.detach(), "lr": lr, "skipped": 1.0}
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not self.nonfinite.ok(loss, self.optimizer, step):
                return {"loss": loss.detach(), "lr": lr, "skipped": 1.0}
            self.optimizer.step()
        self.model.after_step(step, self.total_steps)
        out = {"loss": loss.detach(), "lr": lr, **metrics}
        if self.probe is not None and feats is not None:
            # float32, outside autocast: a linear layer on detached features costs nothing,
            # and under fp16 its gradients would have no GradScaler to keep them from underflowing
            logits = self.ddp_probe(feats.float())
            ploss = F.cross_entropy(logits, labels)
            self.probe_opt.zero_grad(set_to_none=True)
            ploss.backward()
            self.probe_opt.step()
            out["probe_loss"] = ploss.detach()
            out["probe_acc1"] = topk_acc(logits.detach(), labels, ks=(1,))[0]
        return out

    def fit(self) -> dict:
        """Train to the end, ``--max-steps``/``--until-step`` or a stop signal (the shared loop)."""
        opts = self.opts
        settings = LoopSettings(epochs=self.cfg.epochs, steps_per_epoch=self.steps_per_epoch,
                                log_every=self.cfg.log_every, name=self.cfg.name, max_steps=opts.max_steps,
                                until_step=opts.until_step, save_every_steps=opts.save_every_steps,
                                progress=opts.progress)
        install_stop_handlers(self)
        try:
            return run_loop(self, self.loader, settings, self.start_epoch, self.start_batch).last
        finally:
            self.logger.close()

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()

    def end_epoch(self, epoch: int) -> dict:
        self.save_checkpoint(epoch, self.steps_per_epoch)
        out = {}
        if self.model.classifies and self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0:
            out.update(self.validate(epoch))
        if self.cfg.knn_every and (epoch + 1) % self.cfg.knn_every == 0:
            out.update(self.knn_monitor(epoch))
        return out

    def log_extras(self) -> dict:
        return {"momentum": float(self.model.current_momentum)} if self.model.uses_target else {}

    @torch.no_grad()
    def discard_failed_start(self) -> None:
        """A start that failed before its first step and checkpoint removes what it wrote
        (config.json, log.jsonl, tb/), so the rerun finds no half-made run to trip over."""
        if not (self.is_main and self.run_dir_fresh) or self.global_step or (self.run_dir / "last.pth").exists():
            return
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        removed = discard_start_files(self.run_dir)
        if removed:
            log.info("removed what this failed start wrote in %s (%s); nothing was trained", self.run_dir,
                     ", ".join(removed))

    def close(self) -> None:
        fdist.teardown()


def _no_buffer_sync() -> dict:
    """Buffers (queue, BN statistics) are kept in step by the methods themselves; DDP should
    not broadcast them every forward. torch >= 2.14 renamed the switch."""
    import inspect
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
