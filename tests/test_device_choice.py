"""How fastairl picks the GPU and the AMP dtype, checked on any machine.

These decisions only matter on CUDA machines, which CI does not have; the functions
read torch.cuda's answers, so the tests give them the answers of particular GPUs.
"""
import pytest
import torch

from fastairl.runtime import distributed as fdist
from fastairl.engine import cuda_bf16_native, resolve_amp

CUDA = torch.device("cuda", 0)


def _gpu(monkeypatch, capability, emulated_bf16=True, keyword=True):
    """Pretend to be a machine with one GPU of this compute capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    def is_bf16_supported(including_emulation=True):
        return capability[0] >= 8 or (including_emulation and emulated_bf16)

    if keyword:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    else:  # an older torch whose is_bf16_supported() takes no keyword
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: is_bf16_supported())


@pytest.mark.parametrize("keyword", [True, False])
def test_amp_auto_is_fp16_on_gpus_that_only_emulate_bf16(monkeypatch, keyword):
    _gpu(monkeypatch, (7, 5), keyword=keyword)  # T4: torch says bf16 is "supported" (emulated)
    assert torch.cuda.is_bf16_supported() is True
    assert not cuda_bf16_native()
    assert resolve_amp("auto", CUDA) == torch.float16


@pytest.mark.parametrize("keyword", [True, False])
def test_amp_auto_is_bf16_from_ampere_on(monkeypatch, keyword):
    _gpu(monkeypatch, (8, 0), keyword=keyword)
    assert cuda_bf16_native()
    assert resolve_amp("auto", CUDA) == torch.bfloat16
    assert resolve_amp("fp16", CUDA) == torch.float16 and resolve_amp("off", CUDA) is None


def test_amp_auto_is_off_on_cpu_and_no_gpu_means_no_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert not cuda_bf16_native()


@pytest.mark.parametrize("visible,local_rank,want", [(8, 5, 5), (1, 5, 0), (4, 6, 2), (0, 3, 0)])
def test_local_rank_maps_onto_the_visible_gpus(monkeypatch, visible, local_rank, want):
    """torchrun on one node sees every GPU (index = LOCAL_RANK); a launcher that binds one
    GPU per task shows each process a single device, index 0."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert fdist.cuda_index(local_rank) == want
