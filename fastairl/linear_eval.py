"""Linear evaluation of a frozen backbone: the reference's protocol, run fast.

The protocol (REFERENCE.md, "Linear evaluation"), kept as is:

* the backbone of the chosen encoder (online by default; target or a supervised network
  on request) is frozen *and in eval mode*, so its BN layers use their running statistics
  and nothing of it changes; the feature is the global-average-pooled last stage (2048-d
  for ResNet-50/101, 512-d for ResNet-18/34);
* the classifier is ``Linear(feat, classes)`` with PyTorch's default init, optionally
  followed by an affine ``BatchNorm1d(classes)`` (``--bn``; the BN comes *after* the
  Linear, as in the reference), trained with cross-entropy on augmented images (recipe
  ``supervised``: random-resized crop 0.08-1 + flip) and validated on the eval transform
  (resize to 256/224 of the crop, centre crop);
* default: SGD lr 30 x batch/256, momentum 0.9, wd 0, batch 256, 100 epochs, x0.1 at
  epochs 60 and 80, validate every 20 epochs, report the best top-1 (and its top-5);
* ``--large-norm-config`` (for LARS-trained models, whose features have a different
  scale): lr 0.2, batch 256, 80 epochs, Nesterov, cosine per iteration. The reference
  means batch 1024 with a scaled lr, but it overwrites the scaled lr with a fixed 0.2 and
  sets the batch only after its loader is built, so what it runs (and what its numbers
  come from) is lr 0.2 at batch 256; that is the preset. ``--batch-size B`` gives
  lr 0.2 x B/256 (logged).

What fastairl adds around it, none of which changes the protocol's numbers: torchrun DDP
(the classifier in DDP, each rank its own shard), AMP and channels_last for the backbone's
trunk (under ``torch.no_grad``; the pooled features are averaged in fp32 and the
classifier and its loss run in fp32 outside autocast, so no gradient scaler is ever
needed, even with ``--amp fp16``), any loader backend (uint8 crops
from ffcv go through the batched augmentation on the device), exact validation under DDP
(padded duplicates of the eval sampler are dropped by dataset index), atomic checkpoints
with mid-epoch ``--resume``, TensorBoard + ``log.jsonl``, and a bit-for-bit check that
the backbone (every parameter and BN buffer) is unchanged after training: if anything
moved, the run fails naming the tensor, because a "linear" number from a backbone that
drifted would be a fine-tuning number in disguise.

There is no precomputed-features mode: the reference trains on freshly augmented crops
every epoch, which a feature cache cannot reproduce.

    python -m fastairl.linear_eval --ckpt outputs/moco_v2p/last.pth --data /data/in1k
    torchrun --nproc_per_node 8 -m fastairl.linear_eval --ckpt byol_lars.pth --large-norm-config
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastairl import distributed as fdist
from fastairl.data.augment import normalize_uint8
from fastairl.eval_scale import DEFAULT_IMAGE_SIZE, load_eval_encoder, prepare_eval_args
from fastairl.runtime.loop import LoopTask
from fastairl.knn import (add_device_flags, add_encoder_flags, autocast, check_positive_flags, gather_unique,
                          load_encoder, shard_indices, topk_hits)

log = logging.getLogger("fastairl")

#: The two settings of the reference. ``lr`` is per 256 images of global batch.
PRESETS: dict[str, dict] = {
    "default": {"lr": 30.0, "batch_size": 256, "epochs": 100, "momentum": 0.9, "weight_decay": 0.0,
                "nesterov": False, "schedule": "multistep", "milestones": (60, 80)},
    "large_norm": {"lr": 0.2, "batch_size": 256, "epochs": 80, "momentum": 0.9, "weight_decay": 0.0,
                   "nesterov": True, "schedule": "cosine", "milestones": ()},
}
EVAL_EVERY = 20
CKPT_KIND = "fastairl_linear_eval"
EXIT_USER, EXIT_BACKBONE_CHANGED = 2, 4

#: Checkpoint stems too generic to name a run by themselves; the parent folder is prepended.
_GENERIC_STEMS = {"last", "best", "checkpoint", "model", "final"}


class BackboneChangedError(RuntimeError):
    """The frozen backbone differs from what was loaded: the evaluation is invalid."""


# --------------------------------------------------------------------------- frozen check
def tensor_fingerprint(module: nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer of ``module`` (its ``state_dict``), by name.

    Hashes the raw bytes together with dtype and shape, of a contiguous CPU copy, so the
    memory format (channels_last) and the device do not matter but any changed bit does.
    """
    out = {}
    for name, t in module.state_dict().items():
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def changed_tensors(reference: dict[str, str], module: nn.Module) -> list[str]:
    """Names whose bytes differ from ``reference`` (or that appeared / disappeared)."""
    now = tensor_fingerprint(module)
    names = sorted(set(reference) | set(now))
    return [n for n in names if reference.get(n) != now.get(n)]


def check_frozen(reference: dict[str, str], module: nn.Module) -> None:
    """Raise :class:`BackboneChangedError` naming the first changed tensor, if any changed.

    Collective under DDP: every rank checks its own copy and all ranks raise together,
    so no rank is left waiting in a collective.
    """
    bad = changed_tensors(reference, module)
    if fdist.world_size() > 1:
        import torch.distributed as dist
        per_rank: list = [None] * fdist.world_size()
        dist.all_gather_object(per_rank, bad)
        for r, b in enumerate(per_rank):
            if b:
                bad, rank = b, r
                break
        else:
            rank = None
    else:
        rank = 0 if bad else None
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        where = f" on rank {rank}" if fdist.world_size() > 1 else ""
        raise BackboneChangedError(f"the frozen backbone changed during linear evaluation: tensor "
                                   f"'{bad[0]}'{more} differs bit-for-bit from the loaded weights{where}; "
                                   f"the result is not a linear-evaluation result")


# --------------------------------------------------------------------------- classifier
#: Layout tag of the classifier in linear-eval checkpoints (``linear.*`` then ``bn.*``).
HEAD_LAYOUT = "linear_then_bn"


class LinearClassifier(nn.Module):
    """Linear -> [affine BatchNorm1d(classes)], as the reference's linear protocol: the
    Linear keeps PyTorch's default init and ``--bn`` normalises the logits, not the
    features."""

    def __init__(self, feat_dim: int, num_classes: int, bn: bool = False):
        super().__init__()
        self.linear = nn.Linear(feat_dim, num_classes)
        self.bn = nn.BatchNorm1d(num_classes) if bn else None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        out = self.linear(f)
        return self.bn(out) if self.bn is not None else out


def check_head_layout(ck: dict, path) -> None:
    """Refuse, in one line, a linear-eval checkpoint whose ``--bn`` classifier has the old
    layout (affine-free BN on the features before the Linear); without ``--bn`` the layout
    never changed, so those checkpoints resume as before."""
    from fastairl.runtime.errors import UserError
    if ck.get("bn") and "bn.weight" not in ck.get("classifier", {}):
        raise UserError(f"--resume: {path} was written by an older fastairl whose --bn put an affine-free BN "
                        f"before the Linear; --bn now follows the reference (BN after the Linear), so that "
                        f"run cannot be continued: start a new run (another --name, or --overwrite)")


def lr_for(schedule: str, base_lr: float, epoch: int, step: int, total_steps: int,
           milestones: tuple[int, ...]) -> float:
    """``multistep``: x0.1 at each milestone epoch (constant within an epoch, as the
    reference's per-epoch scheduler); ``cosine``: per iteration from ``base_lr`` to 0."""
    from fastairl.optim.schedules import lr_at
    kind = "cosine" if schedule == "cosine" else "multistep_epochs"
    return lr_at(kind, step, total_steps, base_lr, milestones=milestones, epoch=epoch)


def default_run_name(ckpt: str | None, encoder: str, arch: str) -> str:
    """``<ckpt-stem>-<encoder>``; generic stems (``last.pth``) get their folder's name in front."""
    if ckpt is None:
        return f"random-{arch}"
    p = Path(ckpt)
    stem = p.stem
    if stem.lower() in _GENERIC_STEMS and p.resolve().parent.name:
        stem = f"{p.resolve().parent.name}-{stem}"
    return f"{stem}-{encoder}"


# --------------------------------------------------------------------------- runner
@dataclass
class Settings:
    lr: float
    batch_size: int
    epochs: int
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str
    milestones: tuple[int, ...]
    eval_every: int


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The preset, then any explicitly given flag on top of it."""
    from fastairl.runtime.errors import UserError
    pre = dict(PRESETS["large_norm" if args.large_norm_config else "default"])
    for key in ("lr", "batch_size", "epochs", "weight_decay"):
        v = getattr(args, key)
        if v is not None:
            pre[key] = v
    if args.milestones is not None:
        if pre["schedule"] != "multistep":
            raise UserError("--milestones: the --large-norm-config schedule is cosine and has no milestones")
        try:
            pre["milestones"] = tuple(int(s) for s in args.milestones.split(",") if s.strip())
        except ValueError:
            raise UserError(f"--milestones {args.milestones}: expected comma-separated epochs, e.g. 60,80") from None
    s = Settings(eval_every=EVAL_EVERY if args.eval_every is None else args.eval_every, **pre)
    if args.large_norm_config and args.batch_size is not None and args.lr is None:
        log.info("--large-norm-config with --batch-size %d: lr 0.2 x %d/256 = %.4g (the reference ran 0.2 at "
                 "batch 256)", s.batch_size, s.batch_size, s.lr * s.batch_size / 256.0)
    size = DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size  # None: eval_scale decides later
    check_positive_flags((("--batch-size", s.batch_size), ("--epochs", s.epochs), ("--image-size", size)), size)
    if s.lr <= 0:
        raise UserError(f"--lr {s.lr}: must be > 0")
    if s.weight_decay < 0:
        raise UserError(f"--weight-decay {s.weight_decay}: must be >= 0")
    if s.eval_every < 0:
        raise UserError(f"--eval-every {s.eval_every}: must be >= 0 (0: only at the end)")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps {args.max_steps}: must be > 0")
    if args.workers < 0:
        raise UserError(f"--workers {args.workers}: must be >= 0")
    if args.skip_nonfinite < 0:
        raise UserError(f"--skip-nonfinite {args.skip_nonfinite}: must be >= 0")
    return s


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
        from fastairl.logging_utils import RunLogger
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
        from fastairl.run_folder import prepare_run_dir
        self.run_dir_fresh = prepare_run_dir(self.run_dir, self.is_main, bool(self.args.resume),
                                             self.args.overwrite, where="--output-dir / --name")

    def discard_failed_start(self) -> None:
        """A start that failed before its first step and checkpoint removes what it wrote."""
        from fastairl.run_folder import discard_start_files
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
        from fastairl.run_folder import missing_checkpoint_message
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
        from fastairl.stop_signals import install_stop_handlers
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


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from fastairl.cli_util import ArgumentParser
    p = ArgumentParser(prog="python -m fastairl.linear_eval",
                                description="Linear evaluation of a frozen backbone (the reference protocol); "
                                            "single process or torchrun.")
    add_encoder_flags(p, "which encoder (auto: online if present, else supervised, else target)")
    p.add_argument("--bn", action="store_true", help="BatchNorm1d(classes) after the linear layer (the reference's)")
    p.add_argument("--large-norm-config", action="store_true",
                   help="lr 0.2, batch 256, 80 epochs, Nesterov, cosine (for LARS-trained models; what the "
                        "reference runs); with --batch-size B the lr is 0.2 x B/256")
    p.add_argument("--lr", type=float, help="lr per 256 images (default 30, or 0.2 with --large-norm-config)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 256; the lr scales with it)")
    p.add_argument("--epochs", type=int, help="epochs (default 100, or 80 with --large-norm-config)")
    p.add_argument("--milestones", help="epochs of the x0.1 steps, comma-separated (default 60,80)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    p.add_argument("--eval-every", type=int, help=f"validate every N epochs (and at the end; default {EVAL_EVERY})")
    p.add_argument("--image-size", type=int, help="crop size (default: the checkpoint's, demo 64, else 224)")
    p.add_argument("--output-dir", default="outputs/linear", help="runs go to <output-dir>/<name>/")
    p.add_argument("--name", help="run name (default: <ckpt-stem>-<encoder>)")
    add_device_flags(p, "the backbone", workers=6)
    p.add_argument("--max-steps", type=int, help="stop after N steps in this invocation (checkpoint + validation)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue: no value = <output-dir>/<name>/last.pth; or a path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip up to N steps with a non-finite loss/gradient instead of stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20, help="log training metrics every N steps")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl.backbone_io import CheckpointError
    from fastairl.cli_util import EXIT_INTERRUPTED, error, report_stop, stopped
    from fastairl.runtime.errors import UserError
    from fastairl.logging_utils import setup_console
    from fastairl.stop_signals import interrupted

    setup_console(int(os.environ.get("RANK", "0")))
    run = None
    ok = False
    try:
        if args.log_every <= 0:
            raise UserError(f"--log-every {args.log_every}: must be > 0")
        run = LinearEval(args)
        run.setup()
        res = run.fit()
        if run.is_main:
            print(f"linear eval {res['arch']} {res['encoder']}: top-1 {res['last_acc1']:.2f} top-5 "
                  f"{res['last_acc5']:.2f} (epoch {round(res['last_epoch'], 2):g}); best top-1 {res['best_acc1']:.2f} "
                  f"top-5 {res['best_acc5']:.2f} (epoch {round(res['best_epoch'], 2):g})", flush=True)
        ok = True
        code = 0
        if run.is_main:
            code = report_stop(log, run.run_dir, run.global_step, complete=run.global_step >= run.total_steps,
                               interrupted=interrupted(run),
                               files=("args.json", "log.jsonl", "tb", "last.pth", "best.pth", "result.json"))
        return EXIT_INTERRUPTED if interrupted(run) else code
    except BackboneChangedError as e:
        return error(e, EXIT_BACKBONE_CHANGED)
    except (CheckpointError, UserError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        return error(e, EXIT_USER)
    except FloatingPointError as e:
        return stopped(e)
    except KeyboardInterrupt:
        return error("interrupted at once (a second Ctrl-C, or while starting); the run folder keeps its last "
                     "checkpoint, if any", EXIT_INTERRUPTED)
    finally:
        if run is not None:
            if not ok:
                run.discard_failed_start()
            run.close()
        else:
            fdist.teardown()


if __name__ == "__main__":
    sys.exit(main())
