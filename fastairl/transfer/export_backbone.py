"""Export one encoder of a checkpoint as a plain torchvision ResNet state_dict.

Usage::

    python -m fastairl.export_backbone IN OUT.pth [--encoder online|target|supervised|auto] [--overwrite]

Downstream code outside fastairl (fine-tuning scripts, other detection or
segmentation frameworks) usually knows how to load ``torchvision.models.resnet50``
weights and nothing else. The written file is exactly such a state dict without
the classifier (``fc``), so ``resnet50().load_state_dict(sd, strict=False)``
reports only ``fc.weight``/``fc.bias`` as missing. The architecture is read off the
tensor shapes (ResNet-18 to 152, wide variants), and the export is checked
against a freshly built torchvision model before anything is written, so a
mismatch surfaces here rather than in the user's downstream job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

import torch

from fastairl.transfer.cli import encoder_tool_parser
from fastairl.backbone_io import (
    ENCODERS,
    CheckpointError,
    atomic_save,
    check_output_path,
    detect_arch,
    extract_backbone,
    load_checkpoint,
    model_state,
)


def torchvision_backbone(state: Mapping[str, torch.Tensor], encoder: str = "online") -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(state_dict, arch)``: the encoder's weights as a torchvision ResNet, fc dropped.

    Every tensor is cloned so the saved file holds only the backbone, not the
    storage of the whole checkpoint it was sliced from. Raises
    :class:`CheckpointError` if the result would not load into
    ``torchvision.models.<arch>()`` (missing, extra or mis-shaped keys).
    """
    import torchvision  # imported here: only this tool needs it, and it is slow to import

    backbone = extract_backbone(state, encoder)
    arch = detect_arch(backbone)
    with torch.device("meta"):  # only names and shapes are needed: skip weight initialisation
        reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    expected = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(backbone))
    unexpected = sorted(set(backbone) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"the {encoder} encoder does not match torchvision {arch}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, ref in expected.items():
        if tuple(backbone[k].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"'{k}' has shape {list(backbone[k].shape)}, torchvision {arch} expects {list(ref.shape)}"
            )
    # Keep torchvision's key order, so the file reads like a torchvision state_dict.
    return {k: backbone[k].detach().clone().contiguous() for k in expected}, arch


def build_parser() -> argparse.ArgumentParser:
    return encoder_tool_parser("python -m fastairl.export_backbone",
                               "Write one encoder of a checkpoint as a torchvision ResNet state_dict (fc dropped).",
                               output_help="file to write (e.g. resnet50_moco.pth)", verb="export")


def main(argv: Sequence[str] | None = None) -> int:
    from fastairl.runtime.cli_util import error
    args = build_parser().parse_args(argv)
    try:
        check_output_path(args.output, args.overwrite)
        state = model_state(load_checkpoint(args.input))
        sd, arch = torchvision_backbone(state, args.encoder)
        atomic_save(sd, args.output, overwrite=args.overwrite)
    except (CheckpointError, OSError) as exc:
        return error(exc)
    print(f"wrote torchvision {arch} backbone ({len(sd)} tensors, {args.encoder} encoder, no fc) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
