"""Device and AMP choice from the ``--device`` / ``--amp`` flags, shared by training,
evaluation, the demo and the benchmark (one rule, one set of messages)."""
from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


def cuda_bf16_native() -> bool:
    """Whether the current GPU computes in bf16 natively (compute capability 8.0 or newer).

    ``torch.cuda.is_bf16_supported()`` also says True on older GPUs (T4, V100) where
    bf16 is only emulated and cuDNN has no bf16 convolutions, so it must not pick AMP.
    """
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the keyword
        return torch.cuda.get_device_capability()[0] >= 8


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    """bf16 by default on GPUs that compute in it natively, fp16 on older GPUs, off on CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_bf16_native() else torch.float16
        return None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if name not in table:
        raise UserError(f"--amp {name}: choose bf16, fp16 or off")
    if name == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (use --amp bf16 or off on CPU)")
    return table[name]
