"""The package's imports point down the layers only, and no two modules import each other.

Why: a cycle (even through an import inside a function) means neither module can be
understood or changed alone, and it is how copies of shared code start to drift. The graph
is read from the source with ``ast``, so imports inside functions count as much as those at
the top of a file. A new module must be given a layer below; that is the moment to decide
where it belongs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Layers, bottom first. A module may import its own layer or a lower one (cycles aside).
#: A package name covers all of its modules unless a module is named itself.
LAYERS = {
    "runtime": ["fastairl", "fastairl.runtime", "fastairl.backbone_io", "fastairl.checkpoint"],
    "components": ["fastairl.data", "fastairl.eval.flags", "fastairl.eval.encoders", "fastairl.eval_flags",
                   "fastairl.encoders", "fastairl.models", "fastairl.methods", "fastairl.optim", "fastairl.config",
                   "fastairl.config_help", "fastairl.rank_check"],
    "tasks": ["fastairl.engine", "fastairl.trainer_eval", "fastairl.trainer_state", "fastairl.eval",
              "fastairl.knn", "fastairl.linear_eval", "fastairl.eval_scale"],
    "tools": ["fastairl.train", "fastairl.preview", "fastairl.transfer", "fastairl.export_backbone", "fastairl.convert_detectron2",
              "fastairl.norm_rescale", "fastairl.demo_report"],
}
ORDER = list(LAYERS)


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file for every module under ``package_dir`` (its parent is the root)."""
    root = package_dir.parent
    out = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules ``tree`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> modules it imports, within the package. An import of one's own enclosing
    package (``from . import sibling`` resolves to the sibling too) is not an edge."""
    mods = module_names(package_dir)
    known = set(mods)
    graph = {}
    for name, f in mods.items():
        deps = imported_modules(ast.parse(f.read_text(), str(f)), name, f.name == "__init__.py", known)
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def layer_of(module: str) -> str | None:
    """The layer of ``module``: the longest name in LAYERS that is it or a package above it."""
    best, where = -1, None
    for layer, names in LAYERS.items():
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, where = len(n), layer
    return where


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for d in sorted(deps):
            if ORDER.index(layer_of(d)) > ORDER.index(layer_of(mod)):
                bad.append(f"{mod} ({layer_of(mod)}) imports {d} ({layer_of(d)})")
    return bad


GRAPH = import_graph(ROOT / "fastairl")


def test_every_module_has_a_layer():
    missing = sorted(m for m in GRAPH if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/test_layering.py LAYERS: {missing}"


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    bad = upward_imports(GRAPH)
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_the_package_never_imports_scripts_or_tests():
    """bench/, data_prep/ and tests/ sit above the package; it must run without them."""
    bad = []
    for name, f in module_names(ROOT / "fastairl").items():
        for node in ast.walk(ast.parse(f.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{name} imports {m}" for m in mods if m.split(".")[0] in ("bench", "data_prep", "tests")]
    assert not bad, bad


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("how", ["top", "function", "relative"])
def test_the_checker_finds_a_cycle_however_it_is_written(tmp_path, how):
    """The checks above can fail: a two-module cycle in a scratch package is found, whether
    the import back sits at the top, inside a function or is relative."""
    back = {"top": "import pkg.a\n", "function": "def f():\n    from pkg.a import x\n    return x\n",
            "relative": "from . import a\n"}[how]
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.sub import b\nx = 1\n",
                            "pkg/sub/__init__.py": "", "pkg/sub/b.py": back.replace("from . import a",
                                                                                    "from .. import a")})
    graph = import_graph(pkg)
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    _write(tmp_path, {"pkg/sub/b.py": "import os\n"})
    assert cycles(import_graph(pkg)) == []


def test_the_checker_finds_an_upward_import(monkeypatch):
    """A runtime helper that imports a task is reported, naming both modules and layers."""
    graph = {m: set(d) for m, d in GRAPH.items()}
    graph["fastairl.runtime.distributed"].add("fastairl.engine")
    bad = upward_imports(graph)
    assert "fastairl.runtime.distributed (runtime) imports fastairl.engine (tasks)" in bad
