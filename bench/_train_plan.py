"""Which training-step rows a run measures, in table order: the ceiling matrix, the
end-to-end rows between the two brackets of the ceiling that bounds them, and the
reference-style row; plus the precision fastairl would pick by default."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from bench._settings import Settings
from bench._variants import Variant, loader_variants
from fastairl.engine import cuda_bf16_native


@dataclass
class TrainRowPlan:
    exp: str
    kind: str            # "ceiling" | "end_to_end" | "reference"
    amp: str             # "bf16" | "fp16" | "off"
    channels_last: bool
    compile: bool
    variant: Variant | None = None  # None for the synthetic ceiling
    skip_reason: str | None = None
    bracket: str | None = None      # "before"/"after" its end-to-end rows: the bounding ceiling (bench/_honesty.py)

    @property
    def loader_name(self) -> str:
        return "synthetic (on device)" if self.variant is None else self.variant.name

    @property
    def config(self) -> str:
        return config_label(self.amp, self.channels_last, self.compile)


def config_label(amp: str, channels_last: bool, compile_: bool) -> str:
    parts = ["fp32" if amp == "off" else amp, "channels_last" if channels_last else "NCHW"]
    if compile_:
        parts.append("compile")
    return " ".join(parts)


def default_amp(device: torch.device) -> str:
    """fastairl's own default: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        return "off"
    return "bf16" if cuda_bf16_native() else "fp16"


def headline_config(s: Settings, device: torch.device) -> tuple[str, bool]:
    """(amp, channels_last) of the end-to-end rows: fastairl's default where ``--amp`` and
    ``--layouts`` allow it, else the first of each that was asked for."""
    d_amp = default_amp(device)
    amp = d_amp if d_amp in s.amps else s.amps[0]
    return amp, "channels_last" in s.layouts


def _amp_skip(amp: str, compile_: bool, device: torch.device, quick: bool) -> str | None:
    if device.type != "cuda":
        if amp == "fp16":
            return "fp16 needs CUDA: fastairl's fp16 path is autocast + GradScaler on a GPU"
        if compile_:
            return "torch.compile rows run on CUDA only (compiling the encoders on a CPU takes minutes)"
        if amp == "bf16" and quick:
            return "bf16 on the CPU is left out of --quick (run without --quick to measure it)"
    elif amp == "bf16" and not cuda_bf16_native():
        return "this GPU has no native bf16 (compute capability below 8.0)"
    return None


def plan_train_rows(s: Settings, device: torch.device, subset: str = "all") -> list[TrainRowPlan]:
    """The rows of the training-step benchmark, in table order.

    Per experiment: the ceiling (synthetic views) over the matrix AMP x channels_last x
    compile for the first experiment, and at fastairl's default plus fp32 NCHW for the
    others (keeps the default GPU run inside its time budget); then every loader end to
    end at the headline setting (fewer with ``--quick``, see :func:`_e2e_variants`); then
    the reference-style row, whatever ``--amp``/``--layouts`` say. The ceiling that bounds the
    end-to-end rows is planned twice, right before and right after them (``bracket``).
    ``subset="scaling"`` (the torchrun workers) keeps the headline ceiling, the end-to-end
    rows and the reference.
    """
    h_amp, h_cl = headline_config(s, device)
    compiles = [False, True] if s.compile else [False]
    cls = [x == "channels_last" for x in s.layouts]
    rows: list[TrainRowPlan] = []
    for i, exp in enumerate(s.exps):
        if subset == "scaling":
            combos = [(h_amp, h_cl, c) for c in compiles]
        elif i == 0:
            combos = [(a, cl, c) for c in compiles for a in s.amps for cl in cls]
        else:
            combos = [(h_amp, h_cl, c) for c in compiles]
            if "off" in s.amps and False in cls and (h_amp, h_cl) != ("off", False):
                combos.append(("off", False, False))
        e2e = [TrainRowPlan(exp, "end_to_end", h_amp, h_cl, s.compile and device.type == "cuda", v)
               for v in _e2e_variants(s)]
        bound = (h_amp, h_cl, e2e[0].compile) if e2e else None
        rows += [TrainRowPlan(exp, "ceiling", amp, cl, c, None, _amp_skip(amp, c, device, s.quick))
                 for amp, cl, c in combos if (amp, cl, c) != bound]
        if bound:  # right before and after the rows it bounds; measured even where --quick leaves bf16 out
            ceil = TrainRowPlan(exp, "ceiling", *bound, None, _amp_skip(bound[0], bound[2], device, False),
                                "before")
            rows += [ceil, *e2e, dataclasses.replace(ceil, bracket="after")]
        rows.append(TrainRowPlan(exp, "reference", "off", False, False, Variant("folder", "folder")))
    return rows


def _e2e_variants(s: Settings) -> list[Variant]:
    """Loaders of the end-to-end rows. ``--quick`` keeps one row per backend (the packed
    source where one exists, since that is how a user trains with it) and leaves the
    folder loader to the reference-style row."""
    vs = loader_variants(s.loaders)
    if not s.quick:
        return vs
    out = []
    for b in dict.fromkeys(v.backend for v in vs if v.backend != "folder"):
        mine = [v for v in vs if v.backend == b]
        packed = next((v for v in mine if v.source == "packed"), None)
        out.append(packed if packed is not None and s.packed is not None else mine[0])
    return out


def _exp_config(exp: str, s: Settings, world: int):
    from fastairl.config import apply_overrides, load_experiment
    cfg = load_experiment(exp)
    cfg = apply_overrides(cfg, list(s.overrides) + [f"arch={s.arch}", f"image_size={s.image_size}",
                                                     f"batch_size={s.batch_size * world}"])
    return cfg
