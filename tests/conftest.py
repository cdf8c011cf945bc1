"""Shared test setup: one demo dataset per machine (repo-local cache), small helpers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("FASTAIRL_CACHE", str(REPO / ".cache" / "fastairl"))
# keep the 2-core CI machine responsive: each test process uses few threads
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_cli(args: list[str], timeout: int = 600, env: dict | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """Run a fastairl command line in a fresh process, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [sys.executable] + args
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def torchrun(args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] + args,
                   timeout=timeout)


def hidden_packages_env(tmp_path: Path, packages: list[str], by: str) -> dict:
    """An environment in which ``import <package>`` fails as if it were not installed:
    a folder of packages whose ``__init__`` raises, first on PYTHONPATH. A dotted name
    written with ``/`` (``nvidia/dali``) gets empty parent packages, so only it fails."""
    hide = tmp_path / "hide"
    for pkg in packages:
        (hide / pkg).mkdir(parents=True)
        (hide / pkg / "__init__.py").write_text(f'raise ImportError("{pkg} hidden by {by}")\n')
        parent = Path(pkg).parent
        while str(parent) != ".":
            (hide / parent / "__init__.py").write_text("")
            parent = parent.parent
    return {"PYTHONPATH": os.pathsep.join([str(hide), str(REPO)])}


@pytest.fixture(scope="session")
def demo_root() -> Path:
    from fastairl.data.demo import ensure_demo_data
    return ensure_demo_data()
