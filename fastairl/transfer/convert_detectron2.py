"""Turn a pre-trained ResNet into a detectron2 weight pickle for detection/segmentation transfer.

Usage::

    python -m fastairl.convert_detectron2 IN OUT.pkl --encoder online|target|supervised [--overwrite]

detectron2 names its ResNet differently from torchvision (``stem.conv1`` and
``res2..res5``, the norm of a conv nested under it as ``convK.norm``, the projection
shortcut as ``shortcut``). It reads ``.pkl`` weight files as pickled numpy arrays
and, when the pickle says ``matching_heuristics``, aligns names by suffix, which is
what lets the same file initialise both the C4 backbone (res2-res4) and the C4 ROI
head (res5). detectron2 itself is not needed to write this file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fastairl.transfer.cli import encoder_tool_parser
from fastairl.backbone_io import (
    ENCODERS,
    CheckpointError,
    atomic_pickle,
    check_output_path,
    detect_arch,
    extract_backbone,
    load_checkpoint,
    model_state,
)

_BN_PARAM = r"(weight|bias|running_mean|running_var)"
# (pattern on a torchvision name, detectron2 name template). Group names carry the
# stage (torchvision layerN), block index, conv index and BN parameter.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"conv1\.weight"), "stem.conv1.weight"),
    (re.compile(rf"bn1\.(?P<p>{_BN_PARAM})"), "stem.conv1.norm.{p}"),
    (re.compile(r"layer(?P<s>[1-4])\.(?P<b>\d+)\.conv(?P<k>\d)\.weight"), "res{s1}.{b}.conv{k}.weight"),
    (re.compile(rf"layer(?P<s>[1-4])\.(?P<b>\d+)\.bn(?P<k>\d)\.(?P<p>{_BN_PARAM})"), "res{s1}.{b}.conv{k}.norm.{p}"),
    (re.compile(r"layer(?P<s>[1-4])\.(?P<b>\d+)\.downsample\.0\.weight"), "res{s1}.{b}.shortcut.weight"),
    (re.compile(rf"layer(?P<s>[1-4])\.(?P<b>\d+)\.downsample\.1\.(?P<p>{_BN_PARAM})"), "res{s1}.{b}.shortcut.norm.{p}"),
)


def detectron2_name(tv_name: str) -> str | None:
    """detectron2's name for a torchvision ResNet parameter/buffer, or None if it has none."""
    for pattern, template in _RULES:
        m = pattern.fullmatch(tv_name)
        if m:
            groups = m.groupdict()
            if "s" in groups:
                groups["s1"] = str(int(groups["s"]) + 1)  # layer1 is detectron2's res2
            return template.format(**groups)
    return None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16 and detectron2 trains in fp32 master weights, so every
    # floating tensor is stored as float32 (exact for fp32 sources).
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()
    return t.contiguous().numpy().copy()


def convert(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename a torchvision-named backbone to detectron2 names, as numpy arrays.

    Returns ``(converted, unconverted)``: ``unconverted`` lists the input keys with no
    detectron2 counterpart (they are not written). ``num_batches_tracked`` is dropped
    without being listed, because detectron2's norms have no such buffer.
    """
    converted: dict[str, np.ndarray] = {}
    unconverted: list[str] = []
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        new = detectron2_name(name)
        if new is None:
            unconverted.append(name)
            continue
        converted[new] = _to_numpy(tensor)
    return converted, unconverted


def to_detectron2_pickle(converted: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Wrap converted weights the way detectron2's checkpointer expects a foreign pickle.

    detectron2 treats a ``.pkl`` holding both ``model`` and ``__author__`` as its own
    format; without ``__author__`` it would assume a Caffe2 model and rename keys by
    Caffe2 rules. Any author other than "Caffe2" avoids that conversion; "torchvision"
    also records the pixel convention the ``det/`` configs match. ``matching_heuristics``
    asks detectron2 to align names by suffix, which the C4 ROI head needs to pick up
    ``res5``.
    """
    return {"model": dict(converted), "__author__": "torchvision", "matching_heuristics": True}


def r50_warning(arch: str) -> str:
    """One line for a converted backbone that is not a ResNet-50: every ``det/`` config
    builds an R50 (``RESNETS.DEPTH: 50``), so the pickle loads there only partly or not at all."""
    return (f"fastairl: warning: the converted backbone is a {arch}, but the det/ configs are for ResNet-50 "
            f"(R50); in your own config set MODEL.RESNETS.DEPTH (and RES2_OUT_CHANNELS 64 for resnet18/34)")


def build_parser() -> argparse.ArgumentParser:
    return encoder_tool_parser("python -m fastairl.convert_detectron2",
                               "Convert a fastairl/reference/torchvision ResNet checkpoint to a detectron2 .pkl.",
                               output_help="detectron2 weight file to write; must end in .pkl", verb="convert")


def main(argv: Sequence[str] | None = None) -> int:
    from fastairl.runtime.cli_util import error
    args = build_parser().parse_args(argv)
    if not args.output.endswith(".pkl"):
        # detectron2 only unpickles weights from files named *.pkl; anything else it
        # would try to torch.load and fail far from here.
        return error(f"output {args.output!r} must end in .pkl (detectron2 reads weight pickles only from .pkl files)")
    try:
        check_output_path(args.output, args.overwrite)
        state = model_state(load_checkpoint(args.input))
        backbone = extract_backbone(state, args.encoder)
        converted, unconverted = convert(backbone)
        if not converted:
            raise CheckpointError(f"nothing in {args.input} converts to detectron2 names")
        atomic_pickle(to_detectron2_pickle(converted), args.output, overwrite=args.overwrite)
    except (CheckpointError, OSError) as exc:
        return error(exc)
    try:
        arch = detect_arch(backbone)
    except CheckpointError:
        arch = "ResNet of an unrecognised layout"
    print(f"wrote {len(converted)} tensors ({arch}, {args.encoder} encoder) from {args.input} to {args.output}")
    if arch != "resnet50":
        print(r50_warning(arch), file=sys.stderr, flush=True)
    if unconverted:
        print(f"unconverted keys (not written): {', '.join(unconverted)}")
    else:
        print("unconverted keys: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
