"""Checkpoints match the reference layout (../shared/reference/checkpoint_layout.json)."""
import json
from pathlib import Path

import pytest
import torch

from fastairl.checkpoint import add_prefix
from fastairl.config import apply_overrides, available_experiments, load_experiment
from fastairl.methods import build_method

LAYOUT_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / "reference" / "checkpoint_layout.json",
                     Path(__file__).resolve().parents[1] / "shared" / "reference" / "checkpoint_layout.json"]
LAYOUT_FILE = next((p for p in LAYOUT_CANDIDATES if p.is_file()), None)
# the LARS variants share their base experiment's networks (REFERENCE.md)
LAYOUT_OF = {"moco_v2p_lars": "moco_v2p", "byol_lars": "byol"}


def layout(exp: str) -> dict:
    data = json.loads(LAYOUT_FILE.read_text())
    entry = data[LAYOUT_OF.get(exp, exp)]
    return {"model": {k: tuple(s) for k, s, _ in entry["model"]},
            "classifier": {k: tuple(s) for k, s, _ in entry["classifier"]} if entry.get("classifier") else None}


def test_every_experiment_exists():
    assert set(available_experiments()) == {"moco_v1", "moco_v2", "moco_v2p", "smoco_v2p", "moco_v2p_lars",
                                            "byol", "byol_lars", "supervised"}


@pytest.mark.skipif(LAYOUT_FILE is None, reason="needs shared/reference/checkpoint_layout.json beside the repo")
@pytest.mark.parametrize("exp", ["moco_v1", "moco_v2", "moco_v2p", "smoco_v2p", "moco_v2p_lars", "byol",
                                 "byol_lars", "supervised"])
def test_resnet50_state_matches_reference_layout(exp):
    cfg = load_experiment(exp)  # resnet50, full queue and heads
    torch.manual_seed(0)
    model = build_method(cfg, "cpu", 1000)
    got = {k: tuple(v.shape) for k, v in add_prefix(model.layout_state_dict()).items()}
    want = layout(exp)["model"]
    assert sorted(got) == sorted(want)
    assert got == want
    if layout(exp)["classifier"]:
        probe = torch.nn.Linear(model.online_encoder.feat_dim, 1000)
        assert {k: tuple(v.shape) for k, v in add_prefix(probe.state_dict()).items()} == layout(exp)["classifier"]
