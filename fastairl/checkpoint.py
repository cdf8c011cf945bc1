"""Checkpoints in the reference layout, written atomically.

Layout (``../shared/reference/checkpoint_layout.json``): ``start_epoch`` (epochs done),
``model`` (keys ``module.online_encoder.*``, ``module.target_encoder.*``, ``module.queue``,
``module.queue_ptr``; supervised: ``module.<resnet>``), ``optimizer``, and with the online
probe ``classifier`` (``module.weight``/``module.bias``) and ``optimizer_cls``. fastairl adds
its own keys under ``fastairl`` (step, scaler, RNG states, config) which the reference ignores,
so our files load there and theirs load here.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

PREFIX = "module."


def add_prefix(sd: dict) -> dict:
    return {PREFIX + k: v for k, v in sd.items()}


def strip_prefix(sd: dict) -> dict:
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in sd.items()}


def atomic_torch_save(obj, path: Path, verify: bool = False) -> None:
    """Write to a temp file in the same folder, fsync, verify, then rename over ``path``: a
    crash or a full disk mid-write leaves the previous file intact. ``verify`` re-opens the
    temp file (memory-mapped, so cheap) and checks its size and top-level keys."""
    from .runtime.atomic_io import atomic_write

    def write(f) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's zip writer reports a failed write (disk full) this way
            raise OSError(f"write failed: {str(e).splitlines()[0]}") from None

    atomic_write(path, write, verify=(lambda tmp: _verify(tmp, obj)) if verify else None)


def _verify(tmp: str, obj) -> None:
    if os.path.getsize(tmp) == 0:
        raise OSError(f"checkpoint temp file {tmp} is empty")
    try:
        back = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise OSError(f"checkpoint temp file {tmp} does not read back ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and set(back) != set(obj):
        raise OSError(f"checkpoint temp file {tmp} reads back with other keys")


def load(path: Path) -> dict:
    """A pre-training checkpoint (fastairl's or the reference's), with one-line errors."""
    from .backbone_io import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise ValueError(f"checkpoint {path} has no 'model' entry; expected a fastairl or reference "
                         f"pre-training checkpoint")
    return ckpt


def check_model_keys(model_sd: dict, expected: dict, path: Path) -> None:
    """Clear error when a checkpoint's model does not fit the experiment being run."""
    got = strip_prefix(model_sd)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    bad = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} with other shapes (e.g. {k}: {tuple(got[k].shape)} vs {tuple(expected[k].shape)})")
        raise ValueError(f"checkpoint {path} does not match this experiment/arch: " + "; ".join(parts))


def optimizer_state_fits(opt: torch.optim.Optimizer, state: dict) -> bool:
    """True when ``state`` has the same groups, sizes and buffer shapes as ``opt``."""
    try:
        groups = state["param_groups"]
        if len(groups) != len(opt.param_groups):
            return False
        for g_saved, g in zip(groups, opt.param_groups):
            if len(g_saved["params"]) != len(g["params"]):
                return False
            for pid, p in zip(g_saved["params"], g["params"]):
                st = state["state"].get(pid, {})
                buf = st.get("momentum_buffer")
                if buf is not None and tuple(buf.shape) != tuple(p.shape):
                    return False
        return True
    except (KeyError, TypeError, AttributeError):
        return False
