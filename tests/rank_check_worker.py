"""Run by test_multinode.py in 2 gloo processes (torch.multiprocessing): the rank check on
a real method model, identical on both ranks, then with rank 1 perturbed in ways that must
be caught (one ulp of a conv weight, one queue entry, SyncBN statistics) and in the way
that must not be (per-process BN statistics). Each rank writes what it saw to a JSON file."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _case(model, probe, mode="error") -> dict:
    from fastairl.rank_check import RankDivergenceError, check_ranks_agree
    try:
        res = check_ranks_agree(model, probe, step=7, mode=mode)
        return {"ok": True, "fingerprints": res["fingerprints"], "skipped": res["skipped"],
                "tensors": res["tensors"]}
    except RankDivergenceError as e:
        return {"ok": False, "error": str(e)}


@torch.no_grad()
def worker(rank: int, world: int, port: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from fastairl.config import apply_overrides, load_experiment
    from fastairl.methods import build_method
    from fastairl.rank_check import fingerprint_of_state

    small = ["arch=resnet18", "image_size=32", "hidden_dim=32", "dim=16", "queue_size=32"]
    seen = {}
    for exp in ("moco_v1", "byol"):
        torch.manual_seed(0)
        model = build_method(apply_overrides(load_experiment(exp), small), "cpu", 10)
        probe = torch.nn.Linear(512, 10)
        seen[f"{exp}/same"] = _case(model, probe)
        sd = model.layout_state_dict()
        seen[f"{exp}/recomputed"] = fingerprint_of_state(sd, probe.state_dict(), seen[f"{exp}/same"]["skipped"])

        # per-process BN statistics: differ by design with plain BN (moco_v1), must agree with SyncBN
        stat = "online_encoder.layer2.0.bn1.running_mean"
        saved = sd[stat].clone()
        if rank == 1:
            sd[stat][3] += 0.5
        seen[f"{exp}/bn_stats"] = _case(model, probe)
        sd[stat].copy_(saved)

        # one ulp of one conv weight deep in the network
        w = sd["online_encoder.layer3.1.conv2.weight"]
        saved = w.clone()
        if rank == 1:
            w.view(-1)[1234] = torch.nextafter(w.view(-1)[1234], torch.tensor(float("inf")))
        seen[f"{exp}/ulp"] = _case(model, probe)
        seen[f"{exp}/ulp_warn"] = _case(model, probe, mode="warn")
        w.copy_(saved)
        seen[f"{exp}/restored"] = _case(model, probe)

        if exp == "moco_v1":  # a queue entry (a buffer the method keeps in step itself)
            if rank == 1:
                model.queue[5, 2] += 1e-3
            seen[f"{exp}/queue"] = _case(model, probe)
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen, indent=1))
    dist.destroy_process_group()
