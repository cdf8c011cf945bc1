"""The last differences to the reference (issue 14): probe view, momentum step, LARS rule
and lr, fp32 losses under autocast, start-up warnings. Expected values are written from
REFERENCE.md's formulas, not taken from fastairl's code."""
import logging
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastairl.config import apply_overrides, load_experiment, reference_warnings
from fastairl.methods import build_method
from fastairl.methods.byol import byol_loss
from fastairl.methods.moco import info_nce
from fastairl.methods.supervised import supervised_loss
from fastairl.models.resnet import build_encoder
from fastairl.optim import LARS, lars_param_groups

SIAMESE = ["moco_v1", "moco_v2", "moco_v2p", "smoco_v2p", "moco_v2p_lars", "byol", "byol_lars"]
#: REFERENCE.md: the probe reads the last online forward, view 2 for the symmetric methods
PROBE_VIEW = {"moco_v1": 1, "moco_v2": 1, "moco_v2p": 2, "smoco_v2p": 2, "moco_v2p_lars": 2, "byol": 2,
              "byol_lars": 2}


def _small(exp, *extra):
    return apply_overrides(load_experiment(exp), ["arch=resnet18", "image_size=32", "hidden_dim=32", "dim=16",
                                                  "queue_size=24", *extra])


# ------------------------------------------------------------------ 1. probe view
@pytest.mark.parametrize("exp", SIAMESE)
def test_probe_features_come_from_the_reference_view(exp):
    torch.manual_seed(0)
    m = build_method(_small(exp), "cpu", 10)
    m.train()
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    with torch.no_grad():
        want = {v: m.online_encoder(views[v - 1], return_features=True)[1] for v in (1, 2)}
    feats = m(views)[2]
    assert torch.allclose(feats, want[PROBE_VIEW[exp]], atol=1e-5)
    assert not torch.allclose(feats, want[3 - PROBE_VIEW[exp]], atol=1e-3)
    if getattr(m, "loss_parts", 1) == 2:  # split forward (what the trainer runs): the same features
        got = [out[2] for out in (m(views, part=0), m(views, part=1))]
        last = [f for f in got if f is not None]
        assert len(last) == 1 and torch.allclose(last[0], want[PROBE_VIEW[exp]], atol=1e-5)


# ------------------------------------------------------------------ 2. momentum step
def test_cosine_momentum_uses_step_plus_one():
    m = build_method(_small("byol"), "cpu", 10)
    total, base = 8, 0.99
    for step in range(total):
        m.after_step(step, total)
        k = step + 1
        assert m.current_momentum == pytest.approx(1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2,
                                                   abs=1e-15)
    assert m.current_momentum == 1.0  # the last step leaves the target where it is
    before = {k: v.clone() for k, v in m.target_encoder.state_dict().items()}
    with torch.no_grad():
        for p in m.online_encoder.parameters():
            p.add_(1.0)
    m.after_step(total - 1, total)
    assert all(torch.equal(v, before[k]) for k, v in m.target_encoder.state_dict().items())


# ------------------------------------------------------------------ 3. LARS rule
def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_lars_keeps_the_lr_inside_the_momentum_buffer():
    """buf = mu buf + lr d; w -= buf, with an lr that changes every step."""
    model = _model()
    wd, eta, mom = 1e-2, 0.001, 0.9
    lrs = [0.1, 0.5, 2.0, 0.05]
    opt = LARS(lars_param_groups(model.named_parameters(), wd), lr=lrs[0], momentum=mom, weight_decay=wd, eta=eta)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    buf = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    g_in = torch.Generator().manual_seed(1)
    for lr in lrs:
        for grp in opt.param_groups:
            grp["lr"] = lr
        model.zero_grad()
        model(torch.randn(8, 4, generator=g_in)).pow(2).sum().backward()
        for n, p in model.named_parameters():
            g = p.grad
            if n == "0.weight":
                d = eta * w[n].norm() / (g.norm() + wd * w[n].norm()) * (g + wd * w[n])
            else:
                d = g
            buf[n] = mom * buf[n] + lr * d
            w[n] = w[n] - buf[n]
        opt.step()
        for n, p in model.named_parameters():
            assert torch.allclose(p.detach(), w[n], atol=1e-6), (n, lr)


def test_lars_loads_a_state_without_fastairl_keys():
    """A reference checkpoint's optimizer groups have no ``lars_exclude``: rebuilt, no KeyError,
    and the continued run equals one that never stopped."""
    runs = []
    for reload in (False, True):
        model = _model()
        opt = LARS(lars_param_groups(model.named_parameters(), 1e-2), lr=0.3, weight_decay=1e-2)
        g_in = torch.Generator().manual_seed(2)
        for step in range(3):
            if reload and step == 1:
                sd = opt.state_dict()
                for grp in sd["param_groups"]:
                    grp.pop("lars_exclude")
                    grp.pop("lr_in_buffer", None)
                opt = LARS(lars_param_groups(model.named_parameters(), 1e-2), lr=0.3, weight_decay=1e-2)
                opt.load_state_dict(sd)
                assert [grp["lars_exclude"] for grp in opt.param_groups] == [False, True]
            model.zero_grad()
            model(torch.randn(8, 4, generator=g_in)).pow(2).sum().backward()
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_lars_state_with_one_mixed_group_decides_per_tensor():
    model = _model()
    opt = LARS(list(model.parameters()), lr=0.1, weight_decay=1e-2)
    sd = opt.state_dict()
    sd["param_groups"][0].pop("lars_exclude")
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lars_exclude"] is None
    model(torch.randn(8, 4)).pow(2).sum().backward()
    bias_before, g = model[0].bias.detach().clone(), model[0].bias.grad.clone()
    opt.step()  # the bias: plain momentum SGD without decay
    assert torch.allclose(model[0].bias.detach(), bias_before - 0.1 * g, atol=1e-7)


# ------------------------------------------------------------------ 4. LARS lr by length
@pytest.mark.parametrize("exp", ["moco_v2p_lars", "byol_lars"])
def test_lars_lr_follows_the_schedule_length(exp, caplog, monkeypatch):
    import fastairl.config as config
    monkeypatch.setattr(config, "_warned_lars_epochs", set())
    want = {100: 0.45, 200: 0.3, 300: 0.3}
    for epochs, lr in want.items():
        assert apply_overrides(load_experiment(exp), [f"epochs={epochs}"]).lr == lr
    assert apply_overrides(load_experiment(exp), ["epochs=100", "lr=0.2"]).lr == 0.2  # explicit wins
    with caplog.at_level(logging.WARNING, logger="fastairl"):
        assert apply_overrides(load_experiment(exp), ["epochs=37"]).lr == 0.3
        apply_overrides(load_experiment(exp), ["epochs=37"])
    said = [r for r in caplog.records if "37 epochs" in r.getMessage()]
    assert len(said) == 1  # logged once per process
    assert apply_overrides(load_experiment("moco_v2p"), ["epochs=100"]).lr == 0.03  # SGD: untouched


# ------------------------------------------------------------------ 6. fp32 losses
def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_losses_under_bf16_autocast_equal_fp32():
    q, k = F.normalize(_rand(64, 128, seed=0), dim=1), F.normalize(_rand(64, 128, seed=1), dim=1)
    queue = F.normalize(_rand(4096, 128, seed=2), dim=1)
    logits, labels = _rand(64, 1000, seed=3) * 3, torch.randint(1000, (64,), generator=torch.Generator().manual_seed(4))
    ref = (info_nce(q, k, queue, 0.2), byol_loss(q, k), supervised_loss(logits, labels))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (info_nce(q, k, queue, 0.2), byol_loss(q, k), supervised_loss(logits, labels))
    assert got[0][1].dtype == torch.float32
    assert torch.allclose(got[0][1], ref[0][1], rtol=1e-6, atol=1e-6)  # every logit, queue matmul included
    assert abs(got[0][0].item() - ref[0][0].item()) < 1e-6
    assert abs(got[1].item() - ref[1].item()) < 1e-6 and abs(got[2].item() - ref[2].item()) < 1e-6


def test_pooled_features_are_fp32_under_autocast():
    enc = build_encoder("resnet18").eval()
    x = _rand(2, 3, 64, 64, seed=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        f = enc.features(x)
        fmap = enc.layer4(enc.layer3(enc.layer2(enc.layer1(enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))))))
    assert f.dtype == torch.float32
    assert torch.allclose(f, fmap.float().mean((2, 3)), atol=1e-6)  # averaged in fp32, not in bf16


# ------------------------------------------------------------------ 9. warnings
def test_reference_warnings():
    v2 = load_experiment("moco_v2")
    msgs = reference_warnings(v2, world_size=1, local_batch=256)
    assert len(msgs) == 2 and "ShuffleBN" in msgs[0] and "32 per process" in msgs[1]
    assert reference_warnings(v2, world_size=8, local_batch=32) == []
    assert len(reference_warnings(load_experiment("moco_v1"), world_size=4, local_batch=64)) == 1
    assert reference_warnings(load_experiment("moco_v2p"), world_size=1, local_batch=256) == []
