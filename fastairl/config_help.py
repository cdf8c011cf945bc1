"""Making the configuration discoverable: one-line experiment descriptions (the first
comment line of ``exp/<name>.py``, the one place they are written) and the resolved
configuration as ``--print-config`` shows it, every key with its type, its default and
where its value came from, so a user can see what ``--set`` accepts before a run.
"""
from __future__ import annotations

import dataclasses
import runpy

from .config import EXP_DIR, Config, available_experiments


def experiment_description(name: str) -> str:
    """The first sentence of ``exp/<name>.py``'s leading comment, or an empty string."""
    path = EXP_DIR / f"{name}.py"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    block = []
    for ln in lines:  # the leading comment block, up to the end of its first sentence
        if not ln.strip().startswith("#"):
            break
        block.append(ln.strip().lstrip("#").strip())
    text = " ".join(block)
    end = text.find(". ")
    text = text[:end + 1] if end >= 0 else text
    if len(text) > 110:  # one line of --help: cut at a word
        text = text[:107].rsplit(" ", 1)[0].rstrip(",;") + " ..."
    return text


def experiments_help() -> str:
    """``name  description`` for every experiment, for ``--help``."""
    names = available_experiments()
    width = max(map(len, names), default=0)
    return "\n".join(f"  {n:<{width}}  {experiment_description(n)}" for n in names)


def set_form(value) -> str:
    """A value written as ``--set key=VALUE`` accepts it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def format_config(cfg: Config, user_keys: set[str], demo_keys: set[str]) -> str:
    """The resolved config, one ``key = value`` line each, with type, default and source.

    ``user_keys`` came from ``--set`` or a flag (``--epochs`` ...), ``demo_keys`` from the
    demo scale; the rest from the experiment file or the neutral default."""
    exp_keys = set(runpy.run_path(str(EXP_DIR / f"{cfg.name}.py")).get("CONFIG", {}))
    fields = [f for f in dataclasses.fields(Config) if f.name != "name"]
    width = max(len(f.name) for f in fields)
    vwidth = max(len(set_form(getattr(cfg, f.name))) for f in fields)
    out = [f"# experiment {cfg.name} (exp/{cfg.name}.py): {experiment_description(cfg.name)}",
           "# every key is a --set KEY=VALUE; after '#': type, default, where the value comes from"]
    for f in fields:
        if f.name in user_keys:
            src = "--set / flag"
        elif f.name in demo_keys:
            src = "demo scale (--data demo)"
        elif f.name in exp_keys:
            src = f"exp/{cfg.name}.py"
        else:
            src = "default"
        out.append(f"{f.name:<{width}} = {set_form(getattr(cfg, f.name)):<{vwidth}}  "
                   f"# {type(f.default).__name__}, default {set_form(f.default)}, from {src}")
    return "\n".join(out)
