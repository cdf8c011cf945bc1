"""The loader rows: one per backend and source it reads, where each row finds its data (or
why it cannot run), and the loader spec it is built from. Backend traits come from
``bench/_backends.py``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench._backends import BACKENDS, backend_missing, decode_where, sources
from bench._settings import Settings


@dataclass
class Variant:
    """One loader row: a backend reading one kind of source."""

    backend: str
    source: str  # "folder" or "packed"

    @property
    def name(self) -> str:
        if len(sources(self.backend)) == 1:
            return self.backend
        return f"{self.backend} ({self.source})"


def loader_variants(selected: Sequence[str]) -> list[Variant]:
    return [Variant(b, src) for b in BACKENDS if b in selected for src in sources(b)]


def variant_root(v: Variant, s: Settings) -> tuple[str | None, str | None]:
    """(dataset root for this variant, None) or (None, why it cannot run)."""
    missing = backend_missing(v.backend, s.device)
    if missing:
        return None, missing
    if v.source == "packed":
        if s.packed is None:
            return None, f"no packed file: {s.packed_reason}"
        return s.packed, None
    if not (Path(s.data) / "train").is_dir():
        return None, f"{s.data} has no train/ folder"
    return s.data, None


def _decode_where(v: Variant, device: str) -> str:
    return decode_where(v.backend, device)


def _workers_for(v: Variant, s: Settings) -> int:
    return s.folder_workers if v.backend == "folder" else s.fast_workers


def _build_spec(v: Variant, root: str, s: Settings, device: str):
    from fastairl.config import apply_overrides, load_experiment
    from fastairl.data.base import LoaderSpec
    cfg = apply_overrides(load_experiment(s.exps[0]), list(s.overrides))
    # a backend that reads either source is told the one this row measures
    extra = {"source": "beton" if v.source == "packed" else "folder"} if len(sources(v.backend)) > 1 else None
    return LoaderSpec(root=root, split="train", recipe=cfg.recipe, image_size=s.image_size,
                      batch_size=s.batch_size, rank=0, world_size=1, device=device,
                      workers=_workers_for(v, s), seed=0, train=True, extra=extra), cfg.recipe
