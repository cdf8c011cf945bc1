"""LARS against its formula (with exclusions) and the lr schedules."""
import math

import pytest

import torch
import torch.nn as nn

from fastairl.optim import LARS, lars_param_groups
from fastairl.optim.schedules import lr_at, multistep_factor, warmcos_lr


def test_lars_matches_formula_with_exclusions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    wd, eta, lr, mom = 1e-2, 0.001, 0.5, 0.9
    opt = LARS(lars_param_groups(model.named_parameters(), wd), lr=lr, momentum=mom, weight_decay=wd, eta=eta)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    bufs = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for it in range(2):
        model.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            g = grads[n]
            if n == "0.weight":  # adapted: trust ratio + weight decay
                w = w0[n]
                trust = eta * w.norm() / (g.norm() + wd * w.norm())
                d = trust * (g + wd * w)
            else:  # linear bias, BN weight/bias: plain momentum SGD, no decay
                d = g
            bufs[n] = d if it == 0 else mom * bufs[n] + d
            expected = w0[n] - lr * bufs[n]
            assert torch.allclose(p.detach(), expected, atol=1e-7), n
            w0[n] = expected


def test_lars_groups_exclude_bn_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    groups = lars_param_groups(model.named_parameters(), 1e-6)
    adapted = {id(p) for p in groups[0]["params"]}
    assert adapted == {id(model[0].weight), id(model[2].weight)}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"]
    assert len(groups[1]["params"]) == 4  # conv bias, bn weight, bn bias, linear bias


def test_warmcos_at_key_points():
    base, total, warm = 0.3, 1000, 100
    assert warmcos_lr(0, total, warm, base) == 1e-6
    assert abs(warmcos_lr(50, total, warm, base) - (1e-6 + (base - 1e-6) * 0.5)) < 1e-12
    assert abs(warmcos_lr(100, total, warm, base) - base) < 1e-12  # warm-up end
    assert abs(warmcos_lr(550, total, warm, base) - base / 2) < 1e-9  # cosine midway
    assert warmcos_lr(1000, total, warm, base) < 1e-12  # end
    assert abs(lr_at("warmcos", 325, total, base, warmup_iters=warm) - base * 0.5 * (1 + math.cos(math.pi / 4))) < 1e-9


def test_multistep_at_60_and_80_percent():
    assert multistep_factor(599, 1000, (0.6, 0.8)) == 1.0
    assert abs(multistep_factor(600, 1000, (0.6, 0.8)) - 0.1) < 1e-12
    assert abs(multistep_factor(800, 1000, (0.6, 0.8)) - 0.01) < 1e-12
    assert abs(lr_at("multistep", 999, 1000, 0.03) - 0.0003) < 1e-12


def test_one_schedule_table_for_pretraining_probe_and_linear_eval():
    """The probe's and linear evaluation's per-epoch steps are the same rule as lr_at's
    ``multistep_epochs``, and the config accepts every pre-training schedule lr_at knows."""
    from fastairl.config import Config, validate
    from fastairl.linear_eval import lr_for
    from fastairl.optim.schedules import PRETRAIN_SCHEDULES
    base, ms = 30.0, (60, 80)
    for epoch, want in ((0, 30.0), (59, 30.0), (60, 3.0), (79, 3.0), (80, 0.3), (99, 0.3)):
        assert lr_at("multistep_epochs", 0, 100, base, milestones=ms, epoch=epoch) == pytest.approx(want)
        assert lr_for("multistep", base, epoch, 0, 100, ms) == pytest.approx(want)
    assert lr_for("cosine", base, 3, 50, 100, ms) == pytest.approx(lr_at("cosine", 50, 100, base))
    with pytest.raises(ValueError, match="needs the epoch"):
        lr_at("multistep_epochs", 0, 100, base, milestones=ms)
    for kind in PRETRAIN_SCHEDULES:
        validate(Config(name="t", schedule=kind))
        lr_at(kind, 10, 100, 0.1, warmup_iters=5)
