"""NormRescale: give model B's weights the per-tensor L2 norms of model A.

Usage::

    python -m fastairl.norm_rescale --norm-from A --weights-from B --out C [--encoder online] [--overwrite]

The paper asks whether transfer differences between pre-training methods come from
the *directions* of the learned weights or merely from their *scale* (methods end
with very different weight norms, which interacts with fine-tuning learning rates
and weight decay). Rescaling every tensor of B to the norm of A's same tensor,
``w_B * ||w_A|| / ||w_B||``, keeps B's directions and takes A's scales; comparing
the transfer of C with that of A and B separates the two effects.

Works on torch checkpoints (the chosen encoder of B, projector/predictor included
unless ``--backbone-only``; the output is B's checkpoint with only those tensors
changed) and on detectron2 pickles (every floating array; the output is B's
pickle with the rescaled arrays). Integer buffers such as ``num_batches_tracked``
are left alone: they count steps and have no scale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from fastairl.backbone_io import (
    ENCODERS,
    CheckpointError,
    atomic_pickle,
    atomic_save,
    check_output_path,
    encoder_keys,
    load_checkpoint,
    load_pickle,
    model_state,
    replace_model_state,
)

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x


def _is_floating(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    if isinstance(x, np.ndarray):
        return np.issubdtype(x.dtype, np.floating)
    return False


def norm_rescale(
    norm_from: Mapping[str, ArrayLike], weights_from: Mapping[str, ArrayLike]
) -> tuple[dict[str, ArrayLike], list[str]]:
    """Rescale each floating entry of ``weights_from`` to the L2 norm of ``norm_from``'s entry.

    Returns ``(rescaled, notes)``: ``rescaled`` has the same keys and value types
    (tensor or ndarray, same dtype) as ``weights_from``, non-floating entries passed
    through; ``notes`` names the tensors that could not be rescaled meaningfully
    (all-zero in B: left as they are; all-zero in A: the result is zero, as the
    formula says). Norms are computed in float64 so fp32 results match A's norm to
    rounding. Raises :class:`CheckpointError` naming the key for a tensor A lacks, a
    shape mismatch, or non-finite values.
    """
    out: dict[str, ArrayLike] = {}
    notes: list[str] = []
    for key, w_b in weights_from.items():
        if not _is_floating(w_b):
            out[key] = w_b
            continue
        if key not in norm_from:
            raise CheckpointError(f"'{key}' of --weights-from has no counterpart in --norm-from")
        w_a = norm_from[key]
        tb, ta = _as_tensor(w_b), _as_tensor(w_a)
        if tuple(ta.shape) != tuple(tb.shape):
            raise CheckpointError(
                f"'{key}' has shape {list(tb.shape)} in --weights-from but {list(ta.shape)} in --norm-from"
            )
        if not ta.is_floating_point():
            raise CheckpointError(f"'{key}' is floating in --weights-from but {ta.dtype} in --norm-from")
        n_b = torch.linalg.vector_norm(tb.double()).item()
        n_a = torch.linalg.vector_norm(ta.double()).item()
        if not (np.isfinite(n_a) and np.isfinite(n_b)):
            raise CheckpointError(f"'{key}' holds non-finite values (inf/nan) in one of the models")
        if n_b == 0.0:
            notes.append(f"'{key}' is all zero in --weights-from; left unchanged")
            out[key] = w_b
            continue
        if n_a == 0.0:
            notes.append(f"'{key}' is all zero in --norm-from; the rescaled tensor is zero")
        scaled = (tb.double() * (n_a / n_b)).to(tb.dtype)
        out[key] = scaled.numpy() if isinstance(w_b, np.ndarray) else scaled
    return out, notes


def rescale_checkpoints(
    ckpt_a: Mapping[str, Any],
    ckpt_b: Mapping[str, Any],
    encoder: str = "online",
    backbone_only: bool = False,
) -> tuple[dict[str, Any], int, list[str]]:
    """Apply :func:`norm_rescale` to one encoder of two torch checkpoints.

    Tensors are matched by their torchvision name inside the encoder, so A and B may
    differ in wrapper and ``module.`` prefix (for example A a DDP checkpoint and B a
    bare state dict). Returns (B's checkpoint with the rescaled tensors, number of
    tensors rescaled, notes).
    """
    state_a, state_b = model_state(ckpt_a), model_state(ckpt_b)
    keys_a = encoder_keys(state_a, encoder)
    keys_b = encoder_keys(state_b, encoder)
    if backbone_only:
        keys_b = {n: k for n, k in keys_b.items() if not n.startswith("fc.")}
    # Key everything by B's full key so that messages name what the user has in B.
    named_b = {k: state_b[k] for k in keys_b.values()}
    named_a = {keys_b[n]: state_a[k] for n, k in keys_a.items() if n in keys_b}
    for name, key_b in keys_b.items():
        if key_b not in named_a and _is_floating(state_b[key_b]):
            raise CheckpointError(
                f"'{key_b}' of --weights-from has no counterpart '{name}' in the {encoder} encoder of --norm-from"
            )
    rescaled, notes = norm_rescale(named_a, named_b)
    new_state = dict(state_b)
    new_state.update(rescaled)
    count = sum(1 for k in named_b if _is_floating(named_b[k]))
    return replace_model_state(ckpt_b, new_state), count, notes


def rescale_pickles(pkl_a: Mapping[str, Any], pkl_b: Mapping[str, Any]) -> tuple[dict[str, Any], int, list[str]]:
    """Apply :func:`norm_rescale` to two detectron2 weight pickles (a single backbone each)."""
    wa = _pickle_weights(pkl_a)
    wb = _pickle_weights(pkl_b)
    rescaled, notes = norm_rescale(wa, wb)
    count = sum(1 for v in wb.values() if _is_floating(v))
    if isinstance(pkl_b.get("model"), Mapping):
        out = dict(pkl_b)
        out["model"] = rescaled
    else:
        out = rescaled
    return out, count, notes


def _pickle_weights(obj: Mapping[str, Any]) -> dict[str, Any]:
    inner = obj.get("model")
    weights = inner if isinstance(inner, Mapping) else obj
    arrays = {k: v for k, v in weights.items() if isinstance(v, (np.ndarray, torch.Tensor))}
    if not arrays:
        raise CheckpointError("the pickle holds no weight arrays (expected {'model': {name: ndarray}})")
    return dict(weights)


def build_parser() -> argparse.ArgumentParser:
    from fastairl.runtime.cli_util import ArgumentParser
    ap = ArgumentParser(
        prog="python -m fastairl.norm_rescale",
        description="Rescale every tensor of model B to the L2 norm of model A's same tensor.",
    )
    ap.add_argument("--norm-from", required=True, metavar="A", help="model whose per-tensor norms are taken")
    ap.add_argument("--weights-from", required=True, metavar="B", help="model whose weights (directions) are kept")
    ap.add_argument("--out", required=True, metavar="C",
                    help="output: a checkpoint shaped like B (.pkl when A and B are detectron2 pickles)")
    ap.add_argument("--encoder", default=None, choices=ENCODERS,
                    help="encoder of torch checkpoints to rescale (default: online); not used for .pkl")
    ap.add_argument("--backbone-only", action="store_true",
                    help="torch checkpoints: leave the projector/predictor (fc.*) of B untouched")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from fastairl.runtime.cli_util import error
    args = build_parser().parse_args(argv)
    is_pkl = [Path(p).suffix == ".pkl" for p in (args.norm_from, args.weights_from)]
    try:
        if is_pkl[0] != is_pkl[1]:
            raise CheckpointError(
                f"--norm-from {args.norm_from} and --weights-from {args.weights_from} must both be torch "
                "checkpoints or both detectron2 .pkl files (convert with python -m fastairl.convert_detectron2)"
            )
        out_is_pkl = Path(args.out).suffix == ".pkl"
        if is_pkl[0] and not out_is_pkl:
            raise CheckpointError(f"--out {args.out} must end in .pkl, like the detectron2 pickles it is made from")
        if not is_pkl[0] and out_is_pkl:
            raise CheckpointError(f"--out {args.out} must not end in .pkl: the result is a torch checkpoint like B")
        check_output_path(args.out, args.overwrite)
        if is_pkl[0]:
            if args.encoder is not None:
                print("note: --encoder is not used for detectron2 pickles (each holds one backbone)")
            result, count, notes = rescale_pickles(load_pickle(args.norm_from), load_pickle(args.weights_from))
            atomic_pickle(result, args.out, overwrite=args.overwrite)
            what = "arrays"
        else:
            encoder = args.encoder or "online"
            result, count, notes = rescale_checkpoints(
                load_checkpoint(args.norm_from), load_checkpoint(args.weights_from), encoder, args.backbone_only
            )
            atomic_save(result, args.out, overwrite=args.overwrite)
            what = f"tensors of the {encoder} encoder"
    except (CheckpointError, OSError) as exc:
        return error(exc)
    for note in notes:
        print(f"note: {note}")
    print(f"rescaled {count} {what} of {args.weights_from} to the norms of {args.norm_from}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
