"""Run by test_ddp.py under torchrun: one training forward/backward of a plain-SyncBN
config on this rank's slice of a fixed global batch; rank 0 saves loss and gradients."""
import sys

import torch
import torch.distributed as dist

from fastairl.config import apply_overrides, load_experiment
from fastairl.methods import build_method


def main(exp: str, out: str, global_batch: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = apply_overrides(load_experiment(exp), ["arch=resnet18", "image_size=32", "hidden_dim=32", "dim=16",
                                                 "queue_size=32", "online_bn=plainsync", "target_bn=plainsync"])
    torch.set_default_dtype(torch.float64)  # fp32 BN backward on a batch of 8 is too noisy to compare
    torch.manual_seed(0)
    model = build_method(cfg, "cpu", 10)
    model.train()
    g = torch.Generator().manual_seed(123)
    views = [torch.randn(global_batch, 3, 32, 32, generator=g) for _ in range(2)]
    per = global_batch // world
    mine = [v[rank * per:(rank + 1) * per] for v in views]
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss, _, _ = ddp(mine)
    loss.backward()
    l = loss.detach().clone()
    dist.all_reduce(l)
    l /= world
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.online_encoder.named_parameters() if p.grad is not None}
        torch.save({"loss": l, "grads": grads}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
