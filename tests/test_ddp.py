"""Two gloo processes give the same loss and gradients as one process with the same
global batch, for the plain (all-reduce) SyncBN configs. Compared in float64: the
semantics must agree exactly; fp32 rounding on a batch of 8 would blur a real bug."""
import pytest
import torch

from conftest import torchrun
from fastairl.config import apply_overrides, load_experiment
from fastairl.methods import build_method


@pytest.mark.parametrize("exp", ["moco_v2p_lars", "byol_lars"])
def test_two_process_ddp_equals_one_process(exp, tmp_path):
    out = tmp_path / "ddp.pt"
    res = torchrun(["tests/ddp_worker.py", exp, str(out), "8"], nproc=2, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = torch.load(out)

    cfg = apply_overrides(load_experiment(exp), ["arch=resnet18", "image_size=32", "hidden_dim=32", "dim=16",
                                                 "queue_size=32", "online_bn=plainsync", "target_bn=plainsync"])
    torch.set_default_dtype(torch.float64)  # fp32 BN backward on a batch of 8 is too noisy to compare
    try:
        torch.manual_seed(0)
        model = build_method(cfg, "cpu", 10)
        model.train()
        g = torch.Generator().manual_seed(123)
        views = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
        loss, _, _ = model(views)
        loss.backward()
    finally:
        torch.set_default_dtype(torch.float32)
    assert abs(loss.item() - ddp["loss"].item()) < 1e-9 * max(1.0, abs(loss.item()))
    grads = {n: p.grad for n, p in model.online_encoder.named_parameters() if p.grad is not None}
    assert set(grads) == set(ddp["grads"])
    # relative to each tensor's scale (biases right before a BN have ~zero gradient)
    worst = max(((grads[n] - ddp["grads"][n]).abs().max() / (grads[n].abs().max() + 1e-6)).item() for n in grads)
    assert worst < 1e-8, f"relative gradient difference {worst}"
