"""Scaling under torchrun: the training rows rerun in ``--nproc`` processes of this script
(``--worker-spec``), each rank's share compared with the one-process row."""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from bench._common import _configure_logging, log
from bench._settings import Settings
from bench._stats import ratio, summarize
from bench._train_rows import bench_train

#: The script torchrun starts once per rank (it hands ``--worker-spec`` to :func:`worker_main`).
SCRIPT = Path(__file__).resolve().parent / "throughput.py"


def run_scaling(s: Settings, single: list[dict], workdir: Path) -> list[dict]:
    """Run the training rows in ``s.nproc`` processes under torchrun; compare with one process."""
    spec_path = workdir / "worker-spec.json"
    out_path = workdir / "worker-result.json"
    spec_path.write_text(json.dumps({"settings": dataclasses.asdict(s), "out": str(out_path),
                                     "workdir": str(workdir / "scaling")}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(s.nproc),
           str(SCRIPT), "--worker-spec", str(spec_path)]
    # The N processes share this machine's cores: give each its share of threads (an
    # inherited OMP_NUM_THREADS meant for one process would oversubscribe the CPU).
    threads = max(1, (os.cpu_count() or 1) // s.nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log.info("scaling: OMP_NUM_THREADS=%d %s", threads, shlex.join(cmd))
    proc = subprocess.run(cmd, cwd=str(SCRIPT.parent.parent), env=env)
    if proc.returncode != 0 or not out_path.is_file():
        why = f"torchrun with {s.nproc} processes exited with code {proc.returncode} (see its output above)"
        log.error("scaling FAILED: %s", why)
        return [{"name": f"scaling x{s.nproc}", "exp": None, "status": "failed", "reason": why, "nproc": s.nproc}]
    multi = json.loads(out_path.read_text())["train"]
    rows = []
    for m in multi:
        one = next((x for x in single if (x["exp"], x["kind"], x["loader"], x["config"]) ==
                    (m["exp"], m["kind"], m["loader"], m["config"])), None)
        row = {"name": m["name"], "exp": m["exp"], "kind": m["kind"], "loader": m["loader"], "config": m["config"],
               "nproc": s.nproc, "status": m["status"], "reason": m["reason"], "total_images_per_s": None,
               "per_process_images_per_s": None, "single_process_images_per_s": None, "efficiency": None}
        if m["status"] == "ok":
            tot = m["images_per_s"]
            row["total_images_per_s"] = tot
            row["per_process_images_per_s"] = summarize([v / s.nproc for v in tot["values"]])
            if one is not None and one["status"] == "ok":
                row["single_process_images_per_s"] = one["images_per_s"]
                row["efficiency"] = ratio(row["per_process_images_per_s"]["median"], one["images_per_s"]["median"])
        rows.append(row)
    return rows


def worker_main(spec_path: str) -> int:
    """One torchrun rank: the training rows of the scaling subset; rank 0 writes the result."""
    from fastairl.runtime import distributed as fdist
    rank = int(os.environ.get("RANK", "0"))
    _configure_logging(rank)
    spec = json.loads(Path(spec_path).read_text())
    s = Settings(**spec["settings"])
    device = torch.device(s.device)
    if device.type == "cuda":  # one GPU per rank, chosen before anything touches CUDA
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    workdir = Path(spec["workdir"])
    try:
        rows = bench_train(s, device, workdir, subset="scaling")
        if rank == 0:
            Path(spec["out"]).write_text(json.dumps({"train": rows}))
    finally:
        fdist.teardown()
    return 0
