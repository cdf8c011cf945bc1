"""The backbone and device flags of the evaluation tools (``knn``, ``linear_eval``), declared
and checked in one place so both read them the same way (:func:`fastairl.eval.encoders.load_encoder`,
:mod:`fastairl.runtime.device`)."""
from __future__ import annotations

import argparse
from collections.abc import Iterable

from fastairl.data import loader_names
from fastairl.eval.encoders import ENCODER_CHOICES
from fastairl.models.resnet import ARCHS


def add_encoder_flags(p: argparse.ArgumentParser, encoder_help: str) -> None:
    """``--ckpt --data --encoder --arch --random-init``: which backbone, on which data (see :func:`load_encoder`)."""
    p.add_argument("--ckpt", help="pre-training / supervised checkpoint (fastairl or reference layout)")
    p.add_argument("--data", default="demo", help="ImageNet-style folder (train/, val/), folder with .beton files, or 'demo'")
    p.add_argument("--encoder", default="auto", choices=ENCODER_CHOICES, help=encoder_help)
    p.add_argument("--arch", default="auto", choices=("auto",) + tuple(ARCHS),
                   help="backbone architecture (auto: detected from the checkpoint's block structure)")
    p.add_argument("--random-init", action="store_true", help="evaluate an untrained --arch as a baseline")


def add_device_flags(p: argparse.ArgumentParser, amp_what: str, workers: int) -> None:
    """``--device --amp --channels-last/--no-channels-last --loader --workers``; ``amp_what`` says what autocasts."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help=f"autocast for {amp_what} (default: bf16 on GPUs that support it, off on CPU)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=True)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--loader", default="auto", choices=list(loader_names()), help="data backend")
    p.add_argument("--workers", type=int, default=workers, help="loader worker processes per process")


def check_positive_flags(flags: Iterable[tuple[str, float]], image_size: int) -> None:
    """Raise ``UserError`` for the first ``(flag, value)`` that is not > 0, then for an ``--image-size`` under 32.

    32 px is the least a ResNet's five stride-2 stages reduce to a 1x1 feature map.
    """
    from fastairl.runtime.errors import UserError
    for flag, v in flags:
        if v <= 0:
            raise UserError(f"{flag} {v}: must be > 0")
    if image_size < 32:
        raise UserError(f"--image-size {image_size}: too small for a ResNet (use >= 32)")
