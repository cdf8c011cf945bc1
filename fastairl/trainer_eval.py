"""The evaluations a pre-training run makes of itself: the supervised experiment's val
top-1 (its own classifier on centre crops) and the kNN monitor (``--knn-every``) on any
method's online encoder. A mixin of :class:`fastairl.engine.Trainer`; both log per epoch
and return the numbers the loop puts on the progress bar."""
from __future__ import annotations

import logging

import torch

from .data import build_loader
from .data.augment import normalize_uint8
from .data.base import LoaderSpec
from .eval.knn import knn_eval_encoder
from .methods.supervised import topk_acc

log = logging.getLogger("fastairl")


class EvalMixin:
    """Val accuracy and the kNN monitor for a :class:`fastairl.engine.Trainer`."""

    def validate(self, epoch: int) -> dict:
        spec = LoaderSpec(root=str(self.data_root), split="val", recipe="eval", image_size=self.cfg.image_size,
                          batch_size=self.local_batch, rank=self.dist.rank, world_size=self.dist.world_size,
                          device=str(self.device), workers=self.loader.spec.workers if hasattr(self.loader, "spec") else 2,
                          seed=self.cfg.seed, train=False)
        loader = build_loader("folder" if self.loader_name == "folder" else self.loader_name, spec)
        enc = self.model.online_encoder
        enc.eval()
        counts = torch.zeros(3, device=self.device)
        try:
            for views, labels in loader:
                if loader.output == "uint8":  # eval crops: normalise only, no training augmentation
                    x = normalize_uint8(views[0], channels_last=self.opts.channels_last)
                else:
                    x = views[0]
                with self._autocast():
                    logits = enc(x)
                a1, a5 = topk_acc(logits.float(), labels)
                n = labels.shape[0]
                counts += torch.tensor([a1 * n / 100, a5 * n / 100, n], device=self.device)
        finally:
            if callable(getattr(loader, "close", None)):  # a loader per validation: stop its threads
                loader.close()
        if self.dist.distributed:
            torch.distributed.all_reduce(counts)
        self.model.train()
        res = {"val_acc1": float(counts[0] / counts[2] * 100), "val_acc5": float(counts[1] / counts[2] * 100)}
        self.logger.log({"epoch": epoch + 1, **res}, self.global_step, prefix="val")
        if self.is_main:
            log.info("epoch %d: val top-1 %.2f top-5 %.2f", epoch + 1, res["val_acc1"], res["val_acc5"])
        return res

    def knn_monitor(self, epoch: int) -> dict:
        res = knn_eval_encoder(self.model.online_encoder, self.data_root, self.cfg.image_size, self.local_batch,
                               self.device, workers=2, amp_dtype=self.amp_dtype, k=self.cfg.knn_k,
                               loader=self.loader_name)
        self.model.train()
        self.logger.log({"epoch": epoch + 1, "knn_acc1": res["acc1"], "knn_acc5": res["acc5"]},
                        self.global_step, prefix="knn")
        if self.is_main:
            log.info("epoch %d: kNN top-1 %.2f", epoch + 1, res["acc1"])
        return {"knn_acc1": res["acc1"]}
