"""Reading backbones out of checkpoints, and writing files without ever clobbering one.

The transfer tools (detectron2 conversion, NormRescale, torchvision export) all
start from "give me the ResNet of that checkpoint", but checkpoints reach us in
several shapes:

* a pre-training checkpoint of the reference (or of fastairl, same layout): a dict
  with ``start_epoch``, ``model`` (keys ``module.online_encoder.*``,
  ``module.target_encoder.*``, maybe ``module.queue``/``module.queue_ptr``),
  ``optimizer``, and optionally ``classifier``/``optimizer_cls``;
* a supervised checkpoint: ``model`` with ``module.conv1.weight ... module.fc.0.*``;
* any of the above without the DDP ``module.`` prefix, or as a bare state dict
  with no ``model`` wrapper, or a plain torchvision ResNet ``state_dict()``.

This module normalises all of them to torchvision ResNet key names, so the tools
on top only ever deal with one naming scheme. It also holds the atomic, no-clobber
writers those tools use, so a crash mid-write never leaves a half-written file
under the user's chosen name and an existing file is never replaced by accident.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)

ENCODERS = ("online", "target", "supervised", "auto")

# Prefixes (after the DDP "module." is gone) under which the siamese network keeps
# its two encoders. The supervised network has no prefix at all.
_ENCODER_PREFIX = {"online": "online_encoder.", "target": "target_encoder."}

# Top-level names of a torchvision ResNet; used to recognise a supervised network.
_RESNET_ROOTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "fc.")

# Keys a state dict wrapper may use for the network weights, most specific first.
_WRAPPER_KEYS = ("model", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint the user pointed at cannot be used; the message says why and what to do.

    The CLIs catch this and print it as a single line, so users see the cause
    instead of a traceback from inside torch.
    """


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a torch checkpoint onto the CPU, safely where possible.

    ``weights_only=True`` is tried first because a checkpoint from the internet can
    otherwise run arbitrary code when unpickled. Old checkpoints sometimes pickle a
    harmless non-tensor object (an ``argparse.Namespace``, a numpy scalar) that the
    safe loader refuses; only in that case do we fall back to a full unpickle, and
    say so loudly. Everything else (missing file, truncated or foreign file) becomes
    a :class:`CheckpointError` naming the path.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (check the path)")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    _check_torch_file(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise CheckpointError(_unreadable_message(p, exc)) from None
        log.warning(
            "%s holds Python objects besides tensors; loading it with weights_only=False "
            "(only do this with checkpoints from a source you trust)",
            p,
        )
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # any failure here means the file is unusable
            raise CheckpointError(_unreadable_message(p, exc2)) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for bad files
        raise CheckpointError(_unreadable_message(p, exc)) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{p} holds a {type(obj).__name__}, not a checkpoint dict / state_dict"
        )
    return dict(obj)


# torch.save's formats: a zip archive (torch >= 1.6), or the legacy pickle stream that starts
# with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2: PROTO 2, LONG1 of 10 bytes).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_WHAT_TO_PASS = ("pass the .pth/.pth.tar that fastairl/train.py or the reference wrote (e.g. "
                 "outputs/<exp>/last.pth)")


def _check_torch_file(p: Path) -> None:
    """Name what the file is when it cannot be a torch checkpoint, before torch says it in
    its own words (for some files a long ``weights_only`` text about trusting the source).

    Looks at the first bytes and the zip directory only: a plain pickle is never unpickled
    here, since unpickling a file of unknown origin can run code."""
    import zipfile

    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes), not a checkpoint; {_WHAT_TO_PASS}")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(p):
            raise CheckpointError(f"{p} is a truncated torch checkpoint ({size:,} bytes, the end of the file is "
                                  f"missing: an interrupted copy or download?); copy it again")
        return
    if head.startswith(_LEGACY_MAGIC):
        return
    if head[:1] == b"\x80":
        raise CheckpointError(f"{p} is a plain Python pickle (a detectron2 weight file such as "
                              f"convert_detectron2 writes?), not a torch checkpoint; {_WHAT_TO_PASS} "
                              f"(norm_rescale --pickles reads detectron2 pickles)")
    raise CheckpointError(f"{p} is not a torch checkpoint (it starts with bytes {head[:8]!r}); {_WHAT_TO_PASS}")


def _unreadable_message(p: Path, exc: BaseException) -> str:
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    if "weights only" in first_line.lower() or "\x1b[" in first_line:
        first_line = type(exc).__name__  # torch's advice about weights_only is not the cause here
    return (f"cannot read {p} as a torch checkpoint ({first_line[:200]}); the file may be truncated or "
            f"corrupt; {_WHAT_TO_PASS}")


def load_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a detectron2-style weight pickle (``{"model": {name: ndarray}, ...}``).

    ``encoding="latin1"`` mirrors how detectron2 reads these files, so pickles
    written by Python 2 era tools load too.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"pickle not found: {p} (check the path)")
    if not p.is_file():
        raise CheckpointError(f"pickle path is not a file: {p}")
    try:
        with open(p, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {p} as a pickle: {first[:200]}; the file may be truncated or corrupt") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def model_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the network state dict inside a checkpoint, whatever its wrapper.

    Accepts ``{"model": sd, ...}`` (reference/fastairl), ``{"state_dict": sd, ...}``
    (common elsewhere) or a bare state dict; the optimizer and probe entries of a
    wrapper are ignored because no transfer tool needs them.
    """
    for key in _WRAPPER_KEYS:
        inner = ckpt.get(key)
        if _is_state_dict(inner):
            return dict(inner)
    if _is_state_dict(ckpt):
        return dict(ckpt)
    top = ", ".join(sorted(map(str, ckpt.keys()))[:12]) or "nothing"
    raise CheckpointError(
        "found no network weights: expected a 'model' (or 'state_dict') entry holding tensors, "
        f"or a bare state_dict; the checkpoint has: {top}"
    )


def replace_model_state(ckpt: Mapping[str, Any], new_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Return a copy of ``ckpt`` whose network weights are ``new_state``, wrapper kept.

    The counterpart of :func:`model_state`: tools that edit weights write back a file
    with the same structure the user gave them (epoch, optimizer, probe included),
    so it stays loadable by whatever produced it.
    """
    for key in _WRAPPER_KEYS:
        if _is_state_dict(ckpt.get(key)):
            out = dict(ckpt)
            out[key] = dict(new_state)
            return out
    if _is_state_dict(ckpt):
        return dict(new_state)
    raise CheckpointError("found no network weights to replace in this checkpoint")


def strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DistributedDataParallel ``module.`` prefix, if every key has one."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def available_encoders(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Which encoders a state dict holds: any of ``online``, ``target``, ``supervised``."""
    keys = strip_module(state).keys()
    found = [name for name, pre in _ENCODER_PREFIX.items() if any(k.startswith(pre) for k in keys)]
    if any(k.startswith(_RESNET_ROOTS) for k in keys):
        found.append("supervised")
    return found


def encoder_keys(state: Mapping[str, torch.Tensor], encoder: str = "online") -> dict[str, str]:
    """Map the torchvision names of one encoder (``fc.*`` included) to their keys in ``state``.

    Keeping the original keys lets callers edit the encoder in place (NormRescale
    writes back into the same checkpoint) while comparing by torchvision name.
    ``auto`` picks the online encoder if present, else the supervised network, else
    the target encoder.
    """
    if encoder not in ENCODERS:
        raise CheckpointError(f"unknown encoder '{encoder}': choose one of {', '.join(ENCODERS)}")
    have = available_encoders(state)
    if encoder == "auto":
        for cand in ("online", "supervised", "target"):
            if cand in have:
                encoder = cand
                break
    if encoder not in have:
        found = ", ".join(have) if have else "none (no ResNet keys such as conv1.weight found)"
        raise CheckpointError(f"no '{encoder}' encoder in this checkpoint; encoders present: {found}")
    prefixed = bool(state) and all(k.startswith("module.") for k in state)
    skip = len("module.") if prefixed else 0
    mapping: dict[str, str] = {}
    for key in state:
        name = key[skip:]
        if encoder == "supervised":
            if name.startswith(_RESNET_ROOTS):
                mapping[name] = key
        else:
            pre = _ENCODER_PREFIX[encoder]
            if name.startswith(pre):
                mapping[name[len(pre):]] = key
    return mapping


def extract_backbone(state: Mapping[str, torch.Tensor], encoder: str = "online") -> dict[str, torch.Tensor]:
    """Return one encoder's ResNet weights under torchvision names, heads (``fc.*``) dropped.

    ``encoder`` is ``online`` | ``target`` | ``supervised`` | ``auto``. BN buffers
    (including ``num_batches_tracked``) are kept because a torchvision ResNet's
    ``state_dict()`` has them; consumers that do not want them drop them.
    """
    mapping = encoder_keys(state, encoder)
    backbone = {name: state[key] for name, key in mapping.items() if not name.startswith("fc.")}
    if "conv1.weight" not in backbone:
        raise CheckpointError(
            f"the '{encoder}' encoder has no conv1.weight, so it is not a torchvision-style ResNet "
            f"(first keys: {', '.join(list(backbone)[:5]) or 'none'})"
        )
    return backbone


# (blocks per stage, block type) -> torchvision constructor name.
_ARCHS = {
    ((2, 2, 2, 2), "basic"): "resnet18",
    ((3, 4, 6, 3), "basic"): "resnet34",
    ((3, 4, 6, 3), "bottleneck"): "resnet50",
    ((3, 4, 23, 3), "bottleneck"): "resnet101",
    ((3, 8, 36, 3), "bottleneck"): "resnet152",
}


def detect_arch(backbone: Mapping[str, torch.Tensor]) -> str:
    """Name the torchvision ResNet whose layout matches ``backbone`` (torchvision names).

    Needed because checkpoints do not record their architecture; the block counts
    per stage, the presence of ``conv3`` (bottleneck) and the bottleneck width
    identify it uniquely among torchvision's ResNets.
    """
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in backbone if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(idx))
    kind = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    arch = _ARCHS.get((tuple(blocks), kind))
    if arch is None:
        raise CheckpointError(
            f"backbone with {kind} blocks {blocks} per stage is not a torchvision ResNet "
            "(known: resnet18/34/50/101/152 and wide_resnet50_2/101_2)"
        )
    if kind == "bottleneck":
        width = backbone["layer1.0.conv1.weight"].shape[0]
        if width == 128:
            if arch not in ("resnet50", "resnet101"):
                raise CheckpointError(f"wide bottleneck backbone with blocks {blocks} is not a torchvision ResNet")
            arch = "wide_" + arch + "_2"
        elif width != 64:
            raise CheckpointError(f"bottleneck width {width} in layer1.0.conv1 matches no torchvision ResNet")
    return arch


def _atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], overwrite: bool) -> Path:
    """Write through a temp file in the target directory, then move it into place
    (:func:`fastairl.runtime.atomic_io.atomic_write`: never a prefix, the usual file mode, and
    without ``overwrite`` published by a hard link so not even a concurrent writer is
    clobbered)."""
    from .runtime.atomic_io import atomic_write
    return atomic_write(path, write, overwrite=overwrite)


def atomic_save(obj: Any, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically; an existing file needs ``overwrite=True``."""
    return _atomic_write(path, lambda f: torch.save(obj, f), overwrite)


def atomic_pickle(obj: Any, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Pickle ``obj`` to ``path`` atomically (detectron2 weight files are plain pickles).

    Protocol 4 rather than the newest so that older Python versions running
    detectron2 can still read the file.
    """
    return _atomic_write(path, lambda f: pickle.dump(obj, f, protocol=4), overwrite)


def check_output_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Fail before any heavy work if ``path`` exists and ``--overwrite`` was not given.

    The writers check again at write time; this early check only saves the user
    from loading a large checkpoint just to be told no.
    """
    p = Path(path)
    if p.exists() and p.is_dir():
        raise CheckpointError(f"output path {p} is a directory; give a file name")
    if p.exists() and not overwrite:
        raise CheckpointError(f"refusing to overwrite existing {p}: pass --overwrite to replace it")
    return p
