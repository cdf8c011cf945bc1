"""Experiment configuration: one dataclass, filled from ``exp/<name>.py``, then ``--set``.

Every experiment value lives in ``exp/`` (and augmentation numbers in
``fastairl/data/recipes.py``); the defaults here are only neutral run settings.
``--set key=value`` converts ``value`` with the field's type and refuses unknown keys.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

EXP_DIR = Path(__file__).resolve().parent.parent / "exp"


class ConfigError(ValueError):
    """A user-caused configuration problem; the CLI prints it as one line."""


@dataclass
class Config:
    name: str = ""
    method: str = "moco"               # moco | byol | supervised
    arch: str = "resnet50"
    image_size: int = 224
    recipe: str = "moco_plus"          # fastairl.data.recipes.RECIPES
    # heads
    head: str = "mlp_bn"               # linear | mlp | mlp_bn
    dim: int = 256
    hidden_dim: int = 4096
    predictor: bool = False
    last_bias: bool = True
    target_predictor: bool = False     # the target keeps (and applies) the predictor too (S-MoCo)
    # batch norm per encoder: bn | syncbn | plainsync
    online_bn: str = "bn"
    target_bn: str = "bn"
    shuffle_bn: bool = False
    # MoCo
    symmetric: bool = True
    temperature: float = 0.2
    queue_size: int = 65536
    # target encoder
    momentum_base: float = 0.99
    momentum_schedule: str = "cosine"  # cosine | fixed
    # optimisation
    optimizer: str = "sgd"             # sgd | lars
    lr: float = 0.03                   # per 256 images of global batch
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    nesterov: bool = False
    lars_eta: float = 0.001
    schedule: str = "warmcos"          # warmcos | multistep | cosine | constant
    warmup_epochs: float = 10.0
    milestones: tuple = (0.6, 0.8)     # fractions of all iterations (multistep)
    epochs: int = 200
    batch_size: int = 256              # global
    # online linear probe on detached pooled features of view 1
    probe: bool = True
    probe_lr: float = 30.0             # per 256, like every SGD lr of the reference
    probe_schedule: str = "multistep_epochs"  # multistep_epochs | cosine
    probe_milestones: tuple = (60, 80) # epochs
    # classes of the supervised head and the probe; 0 = from the data (a resumed checkpoint's
    # head size wins when it has at least as many classes, e.g. 1000-class reference files)
    num_classes: int = 0
    # supervised baseline
    eval_every: int = 0                # validate every N epochs (0: never)
    # data
    loader: str = "auto"
    workers: int = 6                   # per process (reference-style folder loader)
    seed: int = 0
    log_every: int = 10
    knn_every: int = 0
    knn_k: int = 200                   # neighbours of the kNN monitor (knn_every)
    max_bad_share: float = 0.01       # stop when more than this share of the images is unreadable
    # training sample order: "random" = a full seeded permutation per epoch on every backend and
    # world size (the reference's DistributedSampler); "quasi_random" = ffcv's page-aware order
    # (ffcv loader, one process): less memory for a file larger than RAM, but it mixes only a
    # few pages at a time, so it needs a file written shuffled (data_prep/write_ffcv.py does)
    sample_order: str = "random"
    # ranks compared bit for bit at every checkpoint (fastairl/rank_check.py): error | warn | off
    rank_check: str = "error"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}

#: ``--data demo`` is the built-in dataset for laptops and CI machines (10 classes, 2,000
#: train / 400 val JPEGs of 112 px, ``fastairl.data.demo``): unless
#: the user sets them, the run uses these demo-scale values (a full ResNet-50 at 224 px
#: with 256 images per step needs ~25 GB and minutes per step on a CPU). Heads, queue,
#: optimiser and schedule keep the experiment's values.
DEMO_SCALE = {"arch": "resnet18", "image_size": 64, "batch_size": 64}

#: ``python -m fastairl.linear_eval --data demo``: the reference schedule (lr 30 per 256,
#: batch 256, 100 epochs, x0.1 at 60/80) is hours of CPU on the demo's 2,000 images and its lr
#: diverges on demo-scale features (loss near 5e5). Unless the user gives the flag, the
#: demo runs this instead (``fastairl.eval_scale``; ``--large-norm-config`` keeps its own lr
#: and takes only epochs, batch and eval_every). Measured 2026-12-03 on 2 shared CPU cores
#: (niced, beside another training run), on a 4-epoch demo pre-training (kNN 55.75): 5.3 min,
#: loss 3.0 -> 1.4-1.7 (noisy, finite), val top-1 40.25 at epoch 2 and 51.75 at epoch 4
#: (chance 10). lr 1.0 per 256 gave losses of 18-32 in the first 20 steps.
LINEAR_EVAL_DEMO_SCALE = {"epochs": 4, "batch_size": 64, "lr": 0.2, "milestones": (3,), "eval_every": 2}


def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXP_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_experiment(name: str) -> Config:
    path = EXP_DIR / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"unknown experiment {name!r} (no {path}); choose one of {available_experiments()}")
    spec = importlib.util.spec_from_file_location(f"fastairl_exp_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    values = dict(getattr(mod, "CONFIG"))
    cfg = Config(name=name)
    for k, v in values.items():
        if k not in _FIELDS:
            raise ConfigError(f"{path}: unknown config key {k!r}")
        setattr(cfg, k, v)
    return cfg


def _convert(key: str, raw: str):
    f = _FIELDS[key]
    typ = f.type if not isinstance(f.type, str) else f.type
    default = f.default
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            items = [s for s in raw.replace("(", "").replace(")", "").split(",") if s.strip()]
            conv = [float(s) if "." in s or "e" in s.lower() else int(s) for s in items]
            return tuple(conv)
        return raw
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"--set {key}={raw}: expected a value of type {kind}") from None


def demo_scale_overrides(pairs: list[str]) -> list[str]:
    """The DEMO_SCALE entries the user did not set in ``pairs`` (key=value strings)."""
    given = {p.split("=", 1)[0].strip() for p in pairs or [] if "=" in p}
    return [f"{k}={v}" for k, v in DEMO_SCALE.items() if k not in given]


#: LARS base lr (per 256 images) by schedule length, as the reference sets it. The reference
#: refuses any other length; fastairl keeps the experiment's lr there and says so once.
LARS_LR_BY_EPOCHS = {100: 0.45, 200: 0.3, 300: 0.3}
_warned_lars_epochs: set[int] = set()


def apply_overrides(cfg: Config, pairs: list[str]) -> Config:
    given = set()
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in _FIELDS or key == "name":
            raise ConfigError(f"--set {key}: unknown config key; known keys: {', '.join(sorted(k for k in _FIELDS if k != 'name'))}")
        setattr(cfg, key, _convert(key, raw))
        given.add(key)
    if cfg.optimizer == "lars" and "lr" not in given:
        _lars_lr_by_length(cfg)
    validate(cfg)
    return cfg


def _lars_lr_by_length(cfg: Config) -> None:
    """The reference's LARS lr for ``cfg.epochs`` (an explicit ``--set lr=`` wins)."""
    if cfg.epochs in LARS_LR_BY_EPOCHS:
        cfg.lr = LARS_LR_BY_EPOCHS[cfg.epochs]
        return
    if cfg.epochs not in _warned_lars_epochs and os.environ.get("RANK", "0") == "0":
        _warned_lars_epochs.add(cfg.epochs)
        logging.getLogger("fastairl").warning(
            "LARS with %d epochs: the reference defines its lr only for %s epochs; keeping lr %g per 256 "
            "(--set lr=... to choose)", cfg.epochs, "/".join(map(str, LARS_LR_BY_EPOCHS)), cfg.lr)


def reference_warnings(cfg: Config, world_size: int, local_batch: int) -> list[str]:
    """Settings under which the reference's published numbers cannot come out (logged at
    start); each method knows its own."""
    from .methods import method_class
    return method_class(cfg.method).reference_warnings(cfg, world_size, local_batch)


def validate(cfg: Config) -> None:
    from .data.recipes import RECIPES
    from .models.heads import HEADS
    from .models.norm import BN_KINDS
    from .methods import REGISTRY
    from .optim.schedules import PRETRAIN_SCHEDULES, PROBE_SCHEDULES
    from .models.resnet import ARCHS

    checks = [
        ("method", cfg.method in REGISTRY, ", ".join(REGISTRY)),
        ("arch", cfg.arch in ARCHS, ", ".join(ARCHS)),
        ("recipe", cfg.recipe in RECIPES, ", ".join(RECIPES)),
        ("head", cfg.head in HEADS, ", ".join(HEADS)),
        ("online_bn", cfg.online_bn in BN_KINDS, ", ".join(BN_KINDS)),
        ("target_bn", cfg.target_bn in BN_KINDS, ", ".join(BN_KINDS)),
        ("optimizer", cfg.optimizer in ("sgd", "lars"), "sgd, lars"),
        ("schedule", cfg.schedule in PRETRAIN_SCHEDULES, ", ".join(PRETRAIN_SCHEDULES)),
        ("momentum_schedule", cfg.momentum_schedule in ("cosine", "fixed"), "cosine, fixed"),
        ("probe_schedule", cfg.probe_schedule in PROBE_SCHEDULES, ", ".join(PROBE_SCHEDULES)),
        ("sample_order", cfg.sample_order in ("random", "quasi_random"), "random, quasi_random"),
        ("rank_check", cfg.rank_check in ("error", "warn", "off"), "error, warn, off"),
    ]
    for key, ok, choices in checks:
        if not ok:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not valid; choose one of: {choices}")
    positive = ["image_size", "batch_size", "epochs", "dim", "hidden_dim", "queue_size"]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be > 0")
    if cfg.image_size < 32:
        raise ConfigError(f"image_size={cfg.image_size} is too small for a ResNet (use >= 32)")
    if not 0.0 <= cfg.momentum_base <= 1.0:
        raise ConfigError(f"momentum_base={cfg.momentum_base} must be in [0, 1]")
