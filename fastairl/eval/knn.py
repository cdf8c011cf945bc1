"""Weighted k-nearest-neighbour evaluation of a frozen backbone.

Why kNN next to the linear protocol: it needs no training, so it is a cheap, optimizer-free
read-out of representation quality that can run during pre-training (``knn_every``) and on
any checkpoint in minutes. The rule is the one most self-supervised papers use:

* features: the global-average-pooled last stage of the backbone (``Encoder.features``),
  L2-normalised, from the eval transform (short side resized to 256/224 of the crop size,
  centre crop);
* bank: every image of the ``train`` split; queries: every image of the ``val`` split;
* for a query, take the ``k`` (200) most cosine-similar bank entries, weight each by
  ``exp(sim / T)`` (T = 0.07), sum the weights per class; the class ranking gives top-1/5.

Under torchrun every rank extracts features of its own shard, then the shards are
all-gathered. The eval samplers pad the last shard with copies from the start of the split
(so that every rank sees the same number of batches); those copies are dropped by the
dataset index each sample carries, so the bank and the query set are exactly the split,
each image once. Each rank then scores its own slice of the queries and the hit counts are
summed, so the similarity work is spread over the ranks too.

Command line (single process or torchrun)::

    python -m fastairl.knn --ckpt outputs/moco_v2p/last.pth --data /data/in1k
    python -m fastairl.knn --random-init --arch resnet18 --data demo     # baseline

The architecture is read from the checkpoint (see :func:`load_encoder`): the number of
blocks in each of the four stages (``layerN.<i>.`` keys) and whether the blocks have a
third convolution (``layer1.0.conv3`` = bottleneck) identify resnet18 (2-2-2-2 basic),
resnet34 (3-4-6-3 basic), resnet50 (3-4-6-3 bottleneck) and resnet101 (3-4-23-3
bottleneck).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from fastairl.runtime import distributed as fdist
from fastairl.data.augment import normalize_uint8
from fastairl.eval.scale import load_eval_encoder, prepare_eval_args
from fastairl.eval.encoders import ENCODER_CHOICES, load_encoder, resolve_encoder_name  # noqa: F401 (re-exported)
from fastairl.eval.flags import add_device_flags, add_encoder_flags, check_positive_flags  # noqa: F401 (re-exported)
from fastairl.models.resnet import Encoder

log = logging.getLogger("fastairl")

#: Largest similarity block (queries x bank entries) computed at once. 2**27 fp32 values are
#: 512 MiB: an ImageNet bank (1.28 M) is scored about 100 queries at a time, which keeps the
#: peak memory far below the bank itself while each matmul is still large.
SIM_BLOCK_ELEMENTS = 1 << 27

#: Encoder names accepted by the CLIs (``auto``: online if present, else supervised, else target).

_warned: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


# --------------------------------------------------------------------------- the rule
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, query_feats: torch.Tensor,
                num_classes: int, k: int = 200, t: float = 0.07, *, normalized: bool = False,
                chunk_size: int | None = None) -> torch.Tensor:
    """Class scores ``(Q, num_classes)`` of the weighted kNN vote for each query.

    Score of class c for query q = sum over the ``k`` bank entries most cosine-similar to q
    that have label c of ``exp(sim / t)``. Features need not be normalised (they are,
    unless ``normalized=True`` says the caller already did it, which saves a copy of a
    large bank). ``k`` larger than the bank is clamped to the bank size. Queries are scored
    in chunks of ``chunk_size`` (default: as many as keep one similarity block within
    :data:`SIM_BLOCK_ELEMENTS`), so a bank of any size fits as long as the bank itself does.
    The similarity matmul runs in the bank's dtype (fp16 banks on GPU), the vote in fp32.
    """
    if train_feats.dim() != 2 or query_feats.dim() != 2:
        raise ValueError(f"knn_predict: features must be 2-D (N, D); got bank {tuple(train_feats.shape)}, "
                         f"queries {tuple(query_feats.shape)}")
    if train_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(f"knn_predict: bank dim {train_feats.shape[1]} != query dim {query_feats.shape[1]}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"knn_predict: {tuple(train_labels.shape)} labels for {train_feats.shape[0]} bank entries")
    if train_feats.shape[0] == 0:
        raise ValueError("knn_predict: the feature bank is empty")
    if k < 1 or t <= 0 or num_classes < 1:
        raise ValueError(f"knn_predict: need k >= 1, t > 0, num_classes >= 1 (got k={k}, t={t}, "
                         f"num_classes={num_classes})")
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise ValueError(f"knn_predict: bank labels must lie in [0, {num_classes})")
    bank = train_feats if normalized else F.normalize(train_feats, dim=1)
    queries = query_feats.to(device=bank.device, dtype=bank.dtype)
    if not normalized:
        queries = F.normalize(queries, dim=1)
    labels = train_labels.to(bank.device)
    n_bank, n_query = bank.shape[0], queries.shape[0]
    k = min(k, n_bank)
    if chunk_size is None:
        chunk_size = max(1, SIM_BLOCK_ELEMENTS // n_bank)
    scores = torch.zeros(n_query, num_classes, dtype=torch.float32, device=bank.device)
    for s in range(0, n_query, chunk_size):
        sim = queries[s:s + chunk_size] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim.float() / t).exp()
        scores[s:s + chunk_size].scatter_add_(1, labels[top_idx], weights)
    return scores


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[torch.Tensor]:
    """Per-sample bool hits for each k (k clamped to the number of classes)."""
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    hit = top == labels.to(top.device)[:, None]
    return [hit[:, :min(k, kmax)].any(1) for k in ks]


# --------------------------------------------------------------------------- features
def _uses_channels_last(module: torch.nn.Module) -> bool:
    w = getattr(module, "conv1", None)
    w = getattr(w, "weight", None)
    return (w is not None and w.dim() == 4 and not w.is_contiguous()
            and w.is_contiguous(memory_format=torch.channels_last))


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``amp_dtype`` on ``device``, or nothing when AMP is off (``None``)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def shard_indices(loader, rank: int, world: int) -> tuple[list[int] | None, int | None]:
    """Dataset indices of the samples this rank's eval loader yields, in order, and the
    split size; ``(None, None)`` when the backend does not say.

    The folder backend exposes its sampler; any other backend is assumed to follow torch's
    ``DistributedSampler`` rule for eval (unshuffled, rank-strided, the tail padded with the
    first indices), which is what ffcv does, given that it reports the split size.
    """
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "indices") and hasattr(sampler, "n"):
        return list(sampler.indices()), int(sampler.n)
    n = None
    for attr in ("num_samples", "dataset_size"):
        if isinstance(getattr(loader, attr, None), int):
            n = int(getattr(loader, attr))
    if n is None and hasattr(loader, "dataset"):
        with contextlib.suppress(TypeError):
            n = len(loader.dataset)
    if n is None:
        return None, None
    per_rank = math.ceil(n / world)
    order = list(range(n))
    order += order[: per_rank * world - n]
    return order[rank::world], n


@torch.no_grad()
def extract_features(encoder: Encoder, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
                     store_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's L2-normalised pooled features, labels and dataset indices.

    ``encoder`` must already be in eval mode. uint8 views (ffcv-like backends) get only the
    normalisation here: the eval transform has no random op.
    """
    rank, world = fdist.rank(), fdist.world_size()
    idx_list, _ = shard_indices(loader, rank, world)
    cl = _uses_channels_last(encoder)
    feats, labels = [], []
    for views, y in loader:
        x = views[0]
        if getattr(loader, "output", "normalized") == "uint8":
            x = normalize_uint8(x, channels_last=cl)
        elif cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            f = encoder.features(x)
        feats.append(F.normalize(f.float(), dim=1).to(store_dtype))
        labels.append(y.to(device=f.device, dtype=torch.int64))
    dim = getattr(encoder, "feat_dim", 0)
    feats_t = torch.cat(feats) if feats else torch.zeros(0, dim, device=device, dtype=store_dtype)
    labels_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)
    if idx_list is not None and len(idx_list) != feats_t.shape[0]:
        _warn_once("idx-mismatch", "kNN: the loader yielded %d samples but its sampler lists %d; padded "
                   "duplicates cannot be told apart and are kept", feats_t.shape[0], len(idx_list))
        idx_list = None
    if idx_list is None:
        if world > 1:
            _warn_once("no-idx", "kNN: this loader does not report sample indices; the few padded "
                       "duplicates of the last shard are kept in the bank and the queries")
        # unique pseudo-indices: rank-strided positions, so nothing is dropped
        idx = torch.arange(feats_t.shape[0], device=feats_t.device) * world + rank
    else:
        idx = torch.tensor(idx_list, dtype=torch.int64, device=feats_t.device)
    return feats_t, labels_t, idx


def gather_varsize(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, shards of any size (rank order)."""
    world = fdist.world_size()
    if world == 1:
        return x
    import torch.distributed as dist
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    m = max(sizes_i)
    if x.shape[0] < m:
        x = torch.cat([x, x.new_zeros((m - x.shape[0],) + tuple(x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes_i)])


def gather_unique(idx: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-gather per-rank ``tensors`` keyed by dataset index ``idx``; keep each index once,
    sorted by index. Returns ``(idx, *tensors)``."""
    all_idx = gather_varsize(idx)
    gathered = [gather_varsize(t) for t in tensors]
    order = torch.argsort(all_idx, stable=True)
    sorted_idx = all_idx[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    sel = order[keep]
    return (all_idx[sel], *[g[sel] for g in gathered])


# --------------------------------------------------------------------------- evaluation
def _eval_loader(loader_name: str, root: Path, split: str, image_size: int, batch_size: int,
                 device: torch.device, workers: int):
    from fastairl.data import build_loader
    from fastairl.data.base import LoaderSpec
    spec = LoaderSpec(root=str(root), split=split, recipe="eval", image_size=image_size, batch_size=batch_size,
                      rank=fdist.rank(), world_size=fdist.world_size(), device=str(device), workers=workers,
                      seed=0, train=False)
    try:
        loader = build_loader(loader_name, spec)
    except ImportError as e:
        raise ValueError(f"--loader {loader_name}: the backend cannot be imported ({e}); use --loader folder") from None
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    return loader


def knn_eval_encoder(encoder: Encoder, data_root, image_size: int, batch_size: int, device, workers: int = 2,
                     amp_dtype: torch.dtype | None = None, *, k: int = 200, t: float = 0.07,
                     loader: str = "auto") -> dict[str, float]:
    """kNN top-1/top-5 (percent) of ``encoder``'s pooled features: train split as the bank,
    val split as the queries.

    ``batch_size`` is per process. Uses the default process group when one is initialised
    (every rank must call this). The encoder's train/eval flags are restored afterwards, so
    the trainer can call it between epochs.
    """
    from fastairl.data import choose_loader
    device = torch.device(device)
    root = Path(data_root)
    name = choose_loader(loader, root, device.type)
    bank_loader = _eval_loader(name, root, "train", image_size, batch_size, device, workers)
    query_loader = _eval_loader(name, root, "val", image_size, batch_size, device, workers)
    if bank_loader.num_classes != query_loader.num_classes:
        raise ValueError(f"{root}: train has {bank_loader.num_classes} classes but val has "
                         f"{query_loader.num_classes}; both splits need the same class folders")
    num_classes = bank_loader.num_classes
    # fp16 bank on GPU halves its memory (ImageNet x 2048: 5 GB instead of 10); cosine
    # similarities in fp16 are good to ~1e-3, far below the gaps kNN ranks on.
    store = torch.float16 if device.type == "cuda" else torch.float32
    modes = {m: m.training for m in encoder.modules()}
    encoder.eval()
    try:
        bank, bank_y, bank_idx = extract_features(encoder, bank_loader, device, amp_dtype, store)
        query, query_y, query_idx = extract_features(encoder, query_loader, device, amp_dtype, store)
    finally:
        for m, flag in modes.items():
            m.training = flag
        for ld in (bank_loader, query_loader):  # stop their threads: the monitor runs every few epochs
            if callable(getattr(ld, "close", None)):
                ld.close()
    _, bank, bank_y = gather_unique(bank_idx, bank, bank_y)
    _, query, query_y = gather_unique(query_idx, query, query_y)
    rank, world = fdist.rank(), fdist.world_size()
    mine, mine_y = query[rank::world], query_y[rank::world]
    counts = torch.zeros(3, dtype=torch.float64, device=bank.device)
    if mine.shape[0]:
        scores = knn_predict(bank, bank_y, mine, num_classes, k=k, t=t, normalized=True)
        h1, h5 = topk_hits(scores, mine_y)
        counts += torch.stack([h1.sum(), h5.sum(), torch.tensor(mine.shape[0], device=h1.device)]).double()
    if world > 1:
        import torch.distributed as dist
        counts = counts.float()  # gloo all_reduce has no float64 on every build; counts are < 2**24
        dist.all_reduce(counts)
    total = float(counts[2])
    if total == 0:
        raise ValueError(f"{root}/val: no query images")
    log.info("kNN: bank %d train images, %d val queries, %d classes, k=%d, T=%g",
             bank.shape[0], int(total), num_classes, min(k, bank.shape[0]), t)
    return {"acc1": float(counts[0]) / total * 100.0, "acc5": float(counts[1]) / total * 100.0}


# --------------------------------------------------------------------------- checkpoints
# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from fastairl.runtime.cli_util import ArgumentParser
    p = ArgumentParser(prog="python -m fastairl.knn",
                                description="Weighted kNN evaluation (k=200, T=0.07) of a checkpoint's backbone; "
                                            "single process or torchrun.")
    add_encoder_flags(p, "which encoder of the checkpoint (auto: online if present, else supervised, else target)")
    p.add_argument("--image-size", type=int, help="centre-crop size (default: the checkpoint's, demo 64, else 224)")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size for feature extraction")
    p.add_argument("--k", type=int, help="neighbours per query (default: the checkpoint's knn_k, else 200)")
    p.add_argument("--t", type=float, default=0.07, help="temperature of the exp(sim / T) weights")
    add_device_flags(p, "feature extraction", workers=4)
    p.add_argument("--seed", type=int, default=0, help="seed of the --random-init weights")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl.backbone_io import CheckpointError
    from fastairl.data import resolve_data
    from fastairl.runtime.device import resolve_amp, resolve_device
    from fastairl.runtime.errors import UserError
    from fastairl.runtime.logging_utils import setup_console

    setup_console(int(os.environ.get("RANK", "0")))
    try:
        ckpt_config = prepare_eval_args(args, "knn")  # image size (and a random baseline's arch)
        check_positive_flags((("--image-size", args.image_size), ("--batch-size", args.batch_size), ("--k", args.k)),
                             args.image_size)
        if args.t <= 0:
            raise UserError(f"--t {args.t}: the temperature must be > 0")
        if args.workers < 0:
            raise UserError(f"--workers {args.workers}: must be >= 0")
        device = resolve_device(args.device)
        info = fdist.init(device.type)
        if device.type == "cuda":
            device = torch.device("cuda", fdist.cuda_index(info.local_rank))
        amp_dtype = resolve_amp(args.amp, device)
        if args.batch_size % info.world_size:
            raise UserError(f"--batch-size {args.batch_size} is not divisible by the {info.world_size} processes")
        root = resolve_data(args.data)
        enc, desc = load_eval_encoder(args, ckpt_config, "knn")
        enc = enc.to(device)
        if args.channels_last:
            enc = enc.to(memory_format=torch.channels_last)
        if info.is_main:
            log.info("kNN of %s (%s encoder, %s) on %s, %d process(es) on %s", desc["ckpt"] or "random init",
                     desc["encoder"], desc["arch"], root, info.world_size, device)
        res = knn_eval_encoder(enc, root, args.image_size, args.batch_size // info.world_size, device,
                               workers=args.workers, amp_dtype=amp_dtype, k=args.k, t=args.t, loader=args.loader)
        if info.is_main:
            print(f"kNN (k={args.k}, T={args.t:g}) {desc['arch']} {desc['encoder']}: "
                  f"top-1 {res['acc1']:.2f} top-5 {res['acc5']:.2f}", flush=True)
        return 0
    except (CheckpointError, UserError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        from fastairl.runtime.cli_util import error
        return error(e)
    finally:
        fdist.teardown()


if __name__ == "__main__":
    sys.exit(main())
