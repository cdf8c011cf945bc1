"""The method protocol: one registry, explicit defaults, and a trainer that asks the method
what it is instead of checking its name. A method registered under a new name must train
exactly as the class it derives from."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastairl import methods
from fastairl.config import ConfigError, apply_overrides, load_experiment, validate
from fastairl.methods import REGISTRY, Method, MoCo, Supervised, build_method, method_class

SMALL = ["arch=resnet18", "image_size=32", "hidden_dim=32", "dim=16", "queue_size=32"]


def _folder(root: Path, classes: int = 2, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                px = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(px).save(d / f"{i}.jpg", quality=90)
    return root


def test_registry_is_the_one_list():
    assert methods.METHODS == tuple(REGISTRY)
    assert set(REGISTRY) == {"moco", "byol", "supervised"}
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Method) and cls.name == name
        assert method_class(name) is cls
    with pytest.raises(ValueError, match="unknown method 'simclr'.*moco"):
        method_class("simclr")
    cfg = load_experiment("moco_v2p")
    cfg.method = "simclr"
    with pytest.raises(ConfigError, match="simclr"):
        validate(cfg)


def test_base_class_needs_build_and_forward():
    class Half(Method):
        name = "half"

        def forward(self, views, labels=None):
            return views[0].sum(), {}, None

    with pytest.raises(TypeError, match="build"):
        Half()


@pytest.mark.parametrize("exp,target,parts,classifies", [
    ("moco_v1", True, 1, False), ("moco_v2p", True, 2, False), ("byol", True, 2, False),
    ("supervised", False, 1, True)])
def test_what_the_trainer_reads_of_each_method(exp, target, parts, classifies):
    m = build_method(apply_overrides(load_experiment(exp), SMALL), "cpu", 10)
    assert (m.uses_target, m.loss_parts, m.classifies) == (target, parts, classifies)
    state = m.extra_state()
    assert (state is not None) == exp.startswith("moco")
    m.restore_extra_state(state)  # every method accepts its own state (None included)
    assert (m.class_head_key is not None) == classifies
    if classifies:
        assert m.layout_state_dict()[m.class_head_key].shape == (10, 512)


def test_reference_warnings_belong_to_the_method():
    v1 = load_experiment("moco_v1")
    assert len(MoCo.reference_warnings(v1, 1, 256)) == 2
    assert Supervised.reference_warnings(load_experiment("supervised"), 1, 256) == []


class RenamedSupervised(Supervised):
    name = "renamed_supervised"


class RenamedMoCo(MoCo):
    name = "renamed_moco"


@pytest.mark.parametrize("cls,base", [(RenamedSupervised, "supervised"), (RenamedMoCo, "moco_v2")])
def test_a_method_under_a_new_name_trains_like_its_base(cls, base, tmp_path, monkeypatch):
    from fastairl.engine import RunOptions, Trainer

    monkeypatch.setitem(REGISTRY, cls.name, cls)
    data = _folder(tmp_path / "data")
    cfg = apply_overrides(load_experiment(base), SMALL + [f"method={cls.name}", "batch_size=8", "epochs=1",
                                                          "eval_every=1", "knn_every=0", "num_classes=3"])
    validate(cfg)
    opts = RunOptions(data=str(data), output_dir=str(tmp_path / "o"), device="cpu", amp="off", loader="folder",
                      workers=1, progress=False, channels_last=False)
    t = Trainer(cfg, opts)
    try:
        t.setup()
        assert isinstance(t.model, cls)
        assert (t.probe is None) == cls.classifies
        t.fit()
    finally:
        t.close()
    run = tmp_path / "o" / cfg.name
    ck = torch.load(run / "last.pth", weights_only=True)
    assert ("classifier" in ck) == (not cls.classifies)
    recs = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    if cls.classifies:  # the val accuracy at the epoch end (eval_every=1), only a classifier has it
        assert any("val_acc1" in r for r in recs), recs
        # resuming sizes the head from the checkpoint's class head: 3 classes, the data has 2
        t2 = Trainer(apply_overrides(cfg, ["num_classes=0"]), opts)
        t2._resume_ckpt = ck
        t2.loader = t.loader
        assert t2._choose_num_classes() == 3
    else:
        assert "momentum" in recs[-1] and "probe_acc1" in recs[-1]
