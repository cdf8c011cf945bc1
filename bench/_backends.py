"""What the bench asks about fastairl's loader backends. The facts (names, the sources each
reads, the package each needs, where each decodes, why one cannot run here) are the package's
backend registry (``fastairl.data.registry``); this module only adds the bench's own choice of
the ceiling rows' loader, and names a backend this checkout does not register."""
from __future__ import annotations

from fastairl.data import registry

#: The order of the bench's tables, kept from its first results so that rows line up across
#: bench/RESULTS.md; any backend registered later follows in the registry's order.
_TABLE_ORDER = ("folder", "ffcv", "dali", "nvjpeg")
#: Loader backends the bench knows how to ask for, in table order.
BACKENDS = tuple(sorted(registry.names(), key=lambda n: (_TABLE_ORDER + (n,)).index(n)))
#: The backend of the ceiling rows' Trainer: it hands over uint8 views (so the Trainer builds
#: GPUAugment), needs nothing beyond torch and reads either source. It is never iterated.
CEILING_LOADER = "nvjpeg"


def sources(backend: str) -> tuple[str, ...]:
    """The sources ``backend`` reads (empty for a name this checkout does not register)."""
    return registry.sources(backend) if backend in registry.names() else ()


def backend_missing(name: str, device_type: str) -> str | None:
    """Why backend ``name`` cannot run in this environment, or None if it can be tried."""
    if name not in registry.names():
        return f"this checkout's fastairl.data has no '{name}' backend (registered: {', '.join(registry.names())})"
    ok, why = registry.available(name, device_type)
    return None if ok else why


def decode_where(backend: str, device: str) -> str:
    """Where ``backend`` decodes on ``device`` ("cpu" or "cuda"), as the loader table says it."""
    return registry.decode_label(backend, device)
