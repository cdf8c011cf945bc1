"""Losses, momentum, queue and ShuffleBN against direct computations."""
import math

import pytest

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastairl.config import apply_overrides, load_experiment
from fastairl.methods import build_method
from fastairl.methods.base import cosine_momentum, momentum_update
from fastairl.methods.byol import byol_loss
from fastairl.methods.moco import info_nce, shuffle_batch, topk_positive_acc, unshuffle_batch


def test_info_nce_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    k = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(11, 8, generator=g), dim=1)
    t = 0.2
    loss, logits = info_nce(q, k, queue, t)
    # direct: -log( exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t)) ), averaged
    total = 0.0
    for i in range(5):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(11))
        total += -math.log(pos / (pos + neg))
    assert abs(loss.item() - total / 5) < 1e-5
    assert logits.shape == (5, 12)


def test_instance_accuracy_counts_positive_rank():
    logits = torch.tensor([[5.0, 1, 2, 3, 4, 0, 0],    # positive is top-1
                           [2.0, 1, 3, 0, 0, 0, 0],    # rank 2 -> top-5 only
                           [0.0, 1, 2, 3, 4, 5, 6]])   # rank 7 -> neither
    a1, a5 = topk_positive_acc(logits)
    assert abs(a1 - 100 / 3) < 1e-4 and abs(a5 - 200 / 3) < 1e-4


def test_byol_loss_is_two_minus_two_cos():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(6, 4, generator=g)
    z = torch.randn(6, 4, generator=g)
    direct = sum(2 - 2 * float(p[i] @ z[i]) / (float(p[i].norm()) * float(z[i].norm())) for i in range(6)) / 6
    assert abs(byol_loss(p, z).item() - direct) < 1e-5
    assert byol_loss(p, p * 3.0).item() < 1e-6  # scale-invariant, zero for aligned vectors


def _small(exp, **kw):
    sets = ["arch=resnet18", "image_size=32", "hidden_dim=32", "queue_size=24"] + [f"{k}={v}" for k, v in kw.items()]
    return apply_overrides(load_experiment(exp), sets)


def test_momentum_update_touches_parameters_only():
    cfg = _small("byol")
    m = build_method(cfg, "cpu", 10)
    m.train()
    with torch.no_grad():  # make online and target differ, and give the target's BN stats values
        for p in m.online_encoder.parameters():
            p.add_(0.5)
        m.target_encoder(torch.randn(4, 3, 32, 32))
    t_params = {k: v.clone() for k, v in m.target_encoder.named_parameters()}
    o_params = dict(m.online_encoder.named_parameters())
    t_bufs = {k: v.clone() for k, v in m.target_encoder.named_buffers()}
    momentum_update(m.target_encoder, m.online_encoder, 0.9)
    for k, v in m.target_encoder.named_parameters():
        assert torch.allclose(v, 0.9 * t_params[k] + 0.1 * o_params[k], atol=1e-6), k
    for k, v in m.target_encoder.named_buffers():
        assert torch.equal(v, t_bufs[k]), f"buffer {k} changed"
    assert all(not p.requires_grad for p in m.target_encoder.parameters())


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 0, 100) == 0.99
    assert abs(cosine_momentum(0.99, 50, 100) - 0.995) < 1e-12
    assert cosine_momentum(0.99, 100, 100) == 1.0


def test_target_starts_as_copy_and_bn_train_mode():
    cfg = _small("moco_v2p")
    m = build_method(cfg, "cpu", 10)
    on, tg = m.online_encoder.state_dict(), m.target_encoder.state_dict()
    for k, v in tg.items():
        assert torch.equal(v, on[k]), k
    assert set(tg) < set(on)  # target lacks the predictor
    m.train()
    bns = [mod for mod in m.target_encoder.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(b.training for b in bns)
    assert not m.target_encoder.training  # other layers in eval mode


def test_queue_enqueue_wraps_around():
    cfg = _small("moco_v2p")  # queue 24, dim 256
    m = build_method(cfg, "cpu", 10)
    kq = m.queue.shape[0]
    keys = [F.normalize(torch.randn(10, m.queue.shape[1]), dim=1) for _ in range(3)]
    m.enqueue(keys[0])
    assert int(m.queue_ptr) == 10 and torch.equal(m.queue[:10], keys[0])
    m.enqueue(keys[1])
    assert int(m.queue_ptr) == 20
    m.enqueue(keys[2])  # 20..23 then wraps to 0..5
    assert int(m.queue_ptr) == (30 % kq) == 6
    assert torch.equal(m.queue[20:24], keys[2][:4])
    assert torch.equal(m.queue[0:6], keys[2][4:])
    assert torch.equal(m.queue[10:20], keys[1])


def test_shufflebn_shuffle_unshuffle_is_exact_inverse():
    x = torch.randn(16, 3)
    g = torch.Generator().manual_seed(3)
    xs, perm = shuffle_batch(x, g)
    assert not torch.equal(xs, x) and torch.equal(xs.sort(0).values, x.sort(0).values)
    back = unshuffle_batch(xs * 2.0, perm)  # an "encoder" applied to the shuffled batch
    assert torch.equal(back, x * 2.0)


def test_moco_symmetric_step_enqueues_one_view():
    cfg = _small("moco_v2p")
    m = build_method(cfg, "cpu", 10)
    m.train()
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    loss, metrics, feats = m(views)
    assert torch.isfinite(loss) and feats.shape == (4, 512)
    assert set(metrics) == {"inst_acc1", "inst_acc5"}
    pending = m._pending_keys.clone()
    loss.backward()
    m.after_step(0, 10)
    assert torch.allclose(m.queue[:4], pending)
    assert torch.allclose(pending.norm(dim=1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("exp", ["moco_v2p", "byol", "smoco_v2p"])
def test_per_term_backward_equals_whole_loss(exp):
    """The trainer runs a symmetric loss as two forward+backward parts (half the memory):
    the summed loss, the gradients, the queue and the BN statistics must equal the
    one-pass computation."""
    torch.set_default_dtype(torch.float64)
    try:
        results = []
        for split in (False, True):
            cfg = _small(exp)
            torch.manual_seed(0)
            m = build_method(cfg, "cpu", 10)
            m.train()
            g = torch.Generator().manual_seed(5)
            views = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
            if split:
                assert m.loss_parts == 2
                l0 = m(views, part=0)[0]
                l0.backward()
                l1 = m(views, part=1)[0]
                l1.backward()
                loss = l0 + l1
            else:
                loss = m(views)[0]
                loss.backward()
            m.after_step(0, 10)
            grads = {n: p.grad.clone() for n, p in m.online_encoder.named_parameters() if p.grad is not None}
            results.append((loss.item(), grads, {k: v.clone() for k, v in m.state_dict().items()}))
    finally:
        torch.set_default_dtype(torch.float32)
    (la, ga, sa), (lb, gb, sb) = results
    assert abs(la - lb) < 1e-10
    assert set(ga) == set(gb) and all(torch.allclose(ga[n], gb[n], atol=1e-12, rtol=1e-9) for n in ga)
    assert all(torch.allclose(sa[k].double(), sb[k].double(), atol=1e-12) for k in sa)
