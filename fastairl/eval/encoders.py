"""A backbone for evaluation from any checkpoint fastairl reads (or a seeded random one):
the one loader behind ``knn``, ``linear_eval``, the demo's baseline and ``eval_scale``, so
every tool picks the encoder, detects the arch and refuses a mismatch the same way."""
from __future__ import annotations

import torch

from fastairl.models.resnet import ARCHS, Encoder

ENCODER_CHOICES = ("auto", "online", "target", "supervised")


def resolve_encoder_name(state: dict, encoder: str) -> str:
    """``auto`` -> the concrete encoder ``extract_backbone`` will pick (for names, logs)."""
    from fastairl.backbone_io import available_encoders
    if encoder != "auto":
        return encoder
    have = available_encoders(state)
    for cand in ("online", "supervised", "target"):
        if cand in have:
            return cand
    return "online"


def load_encoder(ckpt: str | None, encoder: str = "auto", arch: str = "auto", random_init: bool = False,
                 seed: int = 0) -> tuple[Encoder, dict]:
    """A backbone-only :class:`Encoder` (``fc`` = identity) and a description of it.

    From a checkpoint: any layout :mod:`fastairl.backbone_io` reads (fastairl/reference
    pre-training, supervised, bare state dicts), the chosen encoder, heads dropped. The
    architecture is detected from the block structure (:func:`fastairl.backbone_io.detect_arch`)
    unless ``arch`` names it, and a named arch that contradicts the weights is refused.
    ``random_init=True`` builds an untrained ``arch`` (seeded) as a chance-level baseline.
    Raises ``ValueError`` (one-line messages) for anything the user can fix.
    """
    from fastairl.backbone_io import detect_arch, extract_backbone, load_checkpoint, model_state
    if encoder not in ENCODER_CHOICES:
        raise ValueError(f"--encoder {encoder}: choose one of {', '.join(ENCODER_CHOICES)}")
    if arch != "auto" and arch not in ARCHS:
        raise ValueError(f"--arch {arch}: choose auto or one of {', '.join(ARCHS)}")
    if random_init:
        if ckpt:
            raise ValueError("--random-init and --ckpt exclude each other (the baseline has no checkpoint)")
        if arch == "auto":
            raise ValueError("--random-init needs an explicit --arch (e.g. --arch resnet18)")
        torch.manual_seed(seed)
        enc = Encoder(arch)
        return enc, {"ckpt": None, "encoder": "random", "arch": arch}
    if not ckpt:
        raise ValueError("--ckpt is required (or --random-init --arch NAME for a random baseline)")
    state = model_state(load_checkpoint(ckpt))
    backbone = extract_backbone(state, encoder)
    name = resolve_encoder_name(state, encoder)
    found = detect_arch(backbone)
    if found not in ARCHS:
        raise ValueError(f"{ckpt}: the {name} backbone is a {found}, which fastairl does not build "
                         f"(supported: {', '.join(ARCHS)})")
    if arch != "auto" and arch != found:
        raise ValueError(f"--arch {arch}: the {name} encoder of {ckpt} is a {found} (by its block "
                         f"structure); drop --arch or pass --arch {found}")
    enc = Encoder(found)
    expected = enc.state_dict()
    missing = [k for k in expected if k not in backbone and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in backbone if k not in expected]
    bad = [k for k in expected if k in backbone and tuple(backbone[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                else f"{bad[0]} has shape {tuple(backbone[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}")
        raise ValueError(f"{ckpt}: the {name} backbone does not fit a torchvision {found} ({what})")
    enc.load_state_dict(backbone, strict=False)
    return enc, {"ckpt": str(ckpt), "encoder": name, "arch": found}
