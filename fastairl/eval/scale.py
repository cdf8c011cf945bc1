"""Where the evaluation tools' image size, arch, kNN k and (on the demo data) schedule come from.

A backbone pre-trained at 64 px sees a different world at 224 px (its BN statistics and
receptive fields were learned at 64), and the demo run trains at demo scale (ResNet-18,
64 px, ``fastairl.config.DEMO_SCALE``). So ``linear_eval``, ``knn`` and ``preview`` take,
for each value the user did not give as a flag:

1. the value stored in the checkpoint (``ck["fastairl"]["config"]``, written by
   :class:`fastairl.engine.Trainer`; reference checkpoints have none);
2. else, on the demo data (``--data demo`` or a folder :func:`~fastairl.data.demo.is_demo_dataset`
   recognises), the demo scale;
3. else the protocol's default (224 px).

``knn`` also takes ``k`` from the checkpoint's ``knn_k`` (the demo monitors with k=20 on its
200 images per class), so it repeats the number the run reported. Each tool logs one line
per value saying which of these it was. The arch of a checkpoint
is still checked against its block structure by :func:`fastairl.eval.encoders.load_encoder`; the
config only tells the user where it came from (and the weights win if the two disagree).

On the demo data ``linear_eval`` also runs ``fastairl.config.LINEAR_EVAL_DEMO_SCALE``
instead of the 100-epoch ImageNet schedule (explicit flags win), as ``train.py`` applies
``DEMO_SCALE``.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger("fastairl")

#: The protocols' crop size when neither a flag, a checkpoint nor the demo data says otherwise.
DEFAULT_IMAGE_SIZE = 224
#: The kNN protocol's neighbours when neither ``--k`` nor the checkpoint's ``knn_k`` says otherwise.
DEFAULT_KNN_K = 200


def is_demo(data: str | os.PathLike | None) -> bool:
    """``--data demo`` or the demo dataset given by its path (image folder or packed)."""
    from fastairl.data.demo import is_demo_dataset
    return data is not None and (str(data) == "demo" or is_demo_dataset(data))


def checkpoint_config(ckpt: str | os.PathLike | None) -> dict | None:
    """The pre-training config stored in a fastairl checkpoint, or None (no checkpoint, a
    reference or bare checkpoint, or a file that does not read: the tool's own loader then
    reports that in one line). Memory-mapped, so reading it costs little beside the
    weights load that follows."""
    if not ckpt or not Path(ckpt).is_file():
        return None
    import torch
    try:
        ck = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable or not a zip checkpoint: no config to read
        return None
    cfg = ck.get("fastairl", {}).get("config") if isinstance(ck, dict) and isinstance(ck.get("fastairl"), dict) else None
    return cfg if isinstance(cfg, dict) else None


def resolve_image_size(flag: int | None, ckpt: str | None, data: str | None, tool: str,
                       cfg: dict | None = None, default: int = DEFAULT_IMAGE_SIZE,
                       default_from: str = "the protocol's default") -> int:
    """The crop size for ``tool`` and one log line saying where it came from."""
    size, note = image_size_source(flag, ckpt, data, tool, cfg, default, default_from)
    log.info("%s", note)
    return size


def image_size_source(flag: int | None, ckpt: str | None, data: str | None, tool: str,
                      cfg: dict | None = None, default: int = DEFAULT_IMAGE_SIZE,
                      default_from: str = "the protocol's default") -> tuple[int, str]:
    """:func:`resolve_image_size` without the logging: ``(size, the line to log)``."""
    from fastairl.config import DEMO_SCALE
    if cfg is None:
        cfg = checkpoint_config(ckpt)
    if flag is not None:
        size, where = flag, "--image-size"
    elif cfg and isinstance(cfg.get("image_size"), int):
        size, where = cfg["image_size"], f"the config stored in {ckpt} (pass --image-size to change)"
    elif is_demo(data):
        size, where = DEMO_SCALE["image_size"], f"demo scale, --data {data} (pass --image-size to change)"
    else:
        size, where = default, f"{default_from} (pass --image-size to change)"
    return size, f"{tool}: image size {size} px from {where}"


def resolve_arch(flag: str, ckpt: str | None, data: str | None, random_init: bool, tool: str,
                 cfg: dict | None = None) -> str:
    """The ``--arch`` value to hand to :func:`fastairl.eval.encoders.load_encoder`, after one log line.

    A checkpoint's arch is detected from its weights (``auto``) and checked against the
    config stored in it by :func:`report_arch`; only a random-init baseline on the demo data
    gets the demo arch when ``--arch`` is not given.
    """
    from fastairl.config import DEMO_SCALE
    if flag != "auto":
        log.info("%s: arch %s from --arch", tool, flag)
        return flag
    if random_init and not ckpt and is_demo(data):
        arch = DEMO_SCALE["arch"]
        log.info("%s: arch %s from demo scale, --data %s (pass --arch to change)", tool, arch, data)
        return arch
    return flag


def report_arch(desc: dict, flag: str, cfg: dict | None, tool: str) -> None:
    """After loading a checkpoint's backbone with ``--arch auto``: say where its arch came from."""
    if flag != "auto" or not desc.get("ckpt"):
        return
    found, ckpt = desc["arch"], desc["ckpt"]
    said = cfg.get("arch") if cfg else None
    if said == found:
        log.info("%s: arch %s from the config stored in %s (its weights agree)", tool, found, ckpt)
    elif said:
        log.warning("%s: the config stored in %s says arch %s but its weights are a %s; using %s", tool, ckpt,
                    said, found, found)
    else:
        log.info("%s: arch %s from the block structure of %s (it stores no config)", tool, found, ckpt)


def apply_linear_eval_demo_scale(args: argparse.Namespace) -> list[str]:
    """On the demo data, fill the linear-eval flags the user left unset with
    ``LINEAR_EVAL_DEMO_SCALE`` (in place); returns ``flag value`` strings of what it set,
    logged in one line, as ``train.py`` reports ``DEMO_SCALE``.

    With ``--large-norm-config`` only the length and batch are demo-scaled: that preset's
    own lr (0.2 x batch/256, cosine) is already sane at any scale and has no milestones.
    """
    from fastairl.config import LINEAR_EVAL_DEMO_SCALE
    if not is_demo(getattr(args, "data", None)):
        return []
    keys = ("epochs", "batch_size", "eval_every") if args.large_norm_config else tuple(LINEAR_EVAL_DEMO_SCALE)
    done = []
    for key in keys:
        if getattr(args, key, None) is None:
            value = LINEAR_EVAL_DEMO_SCALE[key]
            if key == "milestones":
                value = ",".join(str(m) for m in value)
            setattr(args, key, value)
            done.append(f"--{key.replace('_', '-')} {value}")
    if done and os.environ.get("RANK", "0") == "0":
        log.warning("linear_eval: --data %s is the demo dataset: demo-scale %s (give the flags to change)",
                    args.data, ", ".join(done))
    return done


def prepare_eval_args(args: argparse.Namespace, tool: str) -> dict | None:
    """Fill ``args`` (in place) for ``tool`` (``linear_eval`` or ``knn``): the linear-eval demo
    schedule, the image size, for a random baseline on the demo data the arch, and for kNN
    the k of the run's own monitor (``knn_k``: the demo trains with 20). Returns
    the checkpoint's stored config (or None) for :func:`report_arch`."""
    if tool == "linear_eval":
        apply_linear_eval_demo_scale(args)
    cfg = checkpoint_config(args.ckpt)
    args.image_size = resolve_image_size(args.image_size, args.ckpt, args.data, tool, cfg)
    args.arch = resolve_arch(args.arch, args.ckpt, args.data, args.random_init, tool, cfg)
    if tool == "knn" and args.k is None:  # the run's own monitor k, so the tool repeats its number
        stored = cfg.get("knn_k") if cfg else None
        args.k = stored if isinstance(stored, int) else DEFAULT_KNN_K
        where = f"the config stored in {args.ckpt}" if isinstance(stored, int) else "the protocol's default"
        log.info("%s: k %d from %s (pass --k to change)", tool, args.k, where)
    return cfg


def load_eval_encoder(args: argparse.Namespace, cfg: dict | None, tool: str):
    """:func:`fastairl.eval.encoders.load_encoder` with ``args``' backbone flags, then :func:`report_arch`."""
    from fastairl.eval.encoders import load_encoder
    enc, desc = load_encoder(args.ckpt, args.encoder, args.arch, args.random_init, args.seed)
    report_arch(desc, args.arch, cfg, tool)
    return enc, desc


def preview_config(opts):
    """``fastairl.preview``'s experiment config, view size and the line saying where the size
    came from (logged by the caller once its flags are checked, so a bad flag stays a one-line
    error): ``--exp``, or the config stored in ``--ckpt`` (the run's own recipe, seed and
    size); the size as :func:`resolve_image_size` says, the experiment's value last. Raises ``ValueError`` (one line) for a ``--ckpt``
    without a stored config."""
    from fastairl.config import Config, load_experiment
    stored = checkpoint_config(opts.ckpt) if opts.ckpt else None
    if opts.ckpt and stored is None:
        raise ValueError(f"--ckpt {opts.ckpt}: no fastairl config stored in it (not a file, or a reference/"
                         f"bare checkpoint); give --exp NAME instead")
    if opts.exp is not None:
        cfg = load_experiment(opts.exp)
    elif stored is not None:
        known = {f for f in Config.__dataclass_fields__}
        cfg = Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in known})
    else:
        cfg = Config(name="")
    return cfg, *image_size_source(opts.image_size, opts.ckpt, opts.data, "preview", stored, default=cfg.image_size,
                                   default_from=f"experiment {cfg.name!r}" if cfg.name else "the default config")
