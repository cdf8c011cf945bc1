"""The backend registry is what every part reads: each entry builds what it declares, the
reasons name the fix, and a new entry is a choice of ``--loader`` without further edits."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

import fastairl.data as data
from fastairl.data import registry
from fastairl.data.base import LoaderSpec
from conftest import run_cli

#: What the bench printed in its "decode" column for each backend before the registry.
BENCH_DECODE = {
    ("folder", "cpu"): "CPU (PIL)", ("folder", "cuda"): "CPU (PIL)",
    ("ffcv", "cpu"): "CPU (ffcv)", ("ffcv", "cuda"): "CPU (ffcv)",
    ("nvjpeg", "cpu"): "CPU (torchvision)", ("nvjpeg", "cuda"): "GPU (nvJPEG)",
    ("dali", "cpu"): "CPU (DALI)", ("dali", "cuda"): "GPU (DALI)",
}


def _spec(root, **kw) -> LoaderSpec:
    base = dict(root=str(root), split="train", recipe="moco_plus", image_size=32, batch_size=4, device="cpu",
                workers=1, seed=3, train=True)
    base.update(kw)
    return LoaderSpec(**base)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test are gone after it."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    return registry


class _TinyLoader:
    """The smallest loader of the batch contract: one uint8 view of zeros, two batches."""

    output = "uint8"
    flipped = True
    num_classes = 2
    classes = ["a", "b"]

    def __init__(self, spec: LoaderSpec) -> None:
        self.spec = spec
        self.epoch = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        s = self.spec
        for _ in range(2):
            yield [torch.zeros(s.batch_size, 3, s.image_size, s.image_size, dtype=torch.uint8)], \
                torch.zeros(s.batch_size, dtype=torch.int64)


def _tiny(name="tiny", **kw) -> registry.Backend:
    fields = dict(output="uint8", decode_cpu="CPU (tiny)", decode_cuda="GPU (tiny)", packed=False,
                  module=__name__, factory=_TinyLoader, check=registry.base_check)
    fields.update(kw)
    return registry.Backend(name, **fields)


@pytest.mark.parametrize("name", registry.names())
def test_every_backend_builds_a_loader_of_its_declared_output(name, demo_root):
    ok, why = registry.available(name, "cpu")
    if not ok:
        pytest.skip(why)
    root = demo_root
    if registry.needs_packed(name):
        from fastairl.data.demo_packed import ensure_demo_packed
        root = ensure_demo_packed(demo_root)
    loader = data.build_loader(name, _spec(root))
    try:
        assert loader.output == registry.get(name).output
        loader.set_epoch(0)
        it = iter(loader)
        try:
            views, labels = next(it)
        finally:
            # end the pass now: a suspended ffcv pass keeps its loading thread running, and
            # numba then compiles the next test's ffcv pipeline beside it and can fail
            if callable(getattr(it, "close", None)):
                it.close()
        want = torch.uint8 if loader.output == "uint8" else torch.float32
        assert len(views) == 2 and all(v.dtype == want and v.shape[:2] == (4, 3) for v in views)
        assert labels.dtype == torch.int64 and labels.shape == (4,)
    finally:
        if callable(getattr(loader, "close", None)):
            loader.close()


@pytest.mark.parametrize("name", [n for n in registry.names() if registry.get(n).package])
def test_a_missing_package_names_the_package_and_the_install_command(name, monkeypatch):
    b = registry.get(name)
    monkeypatch.setitem(sys.modules, b.package, None)  # `import <package>` now fails
    for device in ("cpu", "cuda"):
        ok, why = registry.available(name, device)
        assert not ok
        assert b.pip in why and b.install in why and f"--loader {name}" in why, why
        assert "ModuleNotFoundError" in why  # the import error itself, not a guess
    assert registry.missing_message(name, "cpu") == registry.available(name, "cpu")[1]


def test_the_backends_raise_the_registrys_message(monkeypatch):
    """The dali and ffcv modules do not word the message themselves."""
    err = ImportError("No module named 'x' (simulated)")
    from fastairl.data import dali_loader, ffcv_decoder
    monkeypatch.setattr(dali_loader, "_DALI_IMPORT_ERROR", err)
    with pytest.raises(dali_loader.DaliUnavailableError) as e:
        dali_loader.require_dali("cpu")
    assert str(e.value) == registry.missing_message("dali", torch.device("cpu"), err)
    assert dali_loader.INSTALL_HINT == registry.get("dali").install
    monkeypatch.setattr(ffcv_decoder, "_FFCV_IMPORT_ERROR", err)
    with pytest.raises(ImportError) as e:
        ffcv_decoder.require_ffcv()
    assert str(e.value) == registry.missing_message("ffcv", error=err)
    assert "ffcv is not importable" in str(e.value) and "make venv" in str(e.value)


def test_backends_without_an_optional_package_have_no_missing_message():
    for name in registry.names():
        if not registry.get(name).package:
            assert registry.missing_message(name, "cpu") is None
            assert registry.missing_message(name, "cpu", ImportError("ignored")) is None


def test_an_unknown_name_lists_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown loader backend 'nope'; registered: folder, ffcv, nvjpeg, dali"):
        registry.get("nope")
    for call in (lambda: registry.available("nope", "cpu"), lambda: registry.decode_label("nope", "cpu"),
                 lambda: registry.needs_packed("nope"), lambda: registry.build("nope", _spec(tmp_path))):
        with pytest.raises(ValueError, match="'nope'.*folder, ffcv, nvjpeg, dali"):
            call()
    for call in (lambda: data.build_loader("nope", _spec(tmp_path)),
                 lambda: data.choose_loader("nope", tmp_path, "cpu")):
        with pytest.raises(ValueError, match=r"--loader nope: unknown; choose one of \('auto', 'folder'"):
            call()


def test_decode_labels_are_the_ones_the_bench_reported():
    assert {(n, d): registry.decode_label(n, d) for n in registry.names() for d in ("cpu", "cuda")} == BENCH_DECODE
    assert registry.decode_label("nvjpeg", torch.device("cuda", 1)) == "GPU (nvJPEG)"
    assert registry.decode_label("nvjpeg", "cuda:0") == "GPU (nvJPEG)"


def test_decode_labels_agree_with_the_bench():
    from bench import throughput as tp
    assert set(tp.BACKENDS) == set(registry.names())
    for v in tp.loader_variants(tp.BACKENDS):
        for device in ("cpu", "cuda"):
            assert tp._decode_where(v, device) == registry.decode_label(v.backend, device), (v.name, device)


def test_data_package_agrees_with_the_registry(demo_root):
    assert data.LOADERS == ("auto",) + registry.names() == ("auto", "folder", "ffcv", "nvjpeg", "dali")
    for name in registry.names():
        assert data.choose_loader(name, demo_root, "cpu") == name
    assert registry.needs_packed("ffcv") and not any(registry.needs_packed(n) for n in ("folder", "nvjpeg", "dali"))
    assert {n: registry.get(n).output for n in registry.names()} == {
        "folder": "normalized", "ffcv": "uint8", "nvjpeg": "uint8", "dali": "uint8"}


def test_a_registered_backend_is_selectable_and_built_through_build_loader(scratch_registry, tmp_path):
    registry.register(_tiny())
    assert "tiny" in data.LOADERS and registry.names()[-1] == "tiny"
    assert data.choose_loader("tiny", tmp_path, "cpu") == "tiny"
    assert registry.available("tiny", "cpu") == (True, None)
    assert registry.decode_label("tiny", "cuda") == "GPU (tiny)" and not registry.needs_packed("tiny")
    loader = data.build_loader("tiny", _spec(tmp_path, image_size=8))
    assert isinstance(loader, _TinyLoader) and loader.output == registry.get("tiny").output
    loader.set_epoch(0)
    views, labels = next(iter(loader))
    assert views[0].shape == (4, 3, 8, 8) and views[0].dtype == torch.uint8 and labels.shape == (4,)
    import argparse

    from fastairl.eval_flags import add_device_flags
    from fastairl.train import build_parser
    p = argparse.ArgumentParser()
    add_device_flags(p, "the probe", workers=1)
    assert p.parse_args(["--loader", "tiny"]).loader == "tiny"  # knn and linear_eval offer it
    assert "tiny" in build_parser().format_help()                # and train.py's --loader help names it


def test_a_registered_backend_with_a_missing_package_says_how_to_install_it(scratch_registry):
    registry.register(_tiny("needy", package="fastairl_test_no_such_package", pip="no-such-package",
                            install="pip install no-such-package"))
    ok, why = registry.available("needy", "cuda")
    assert not ok and "pip install no-such-package" in why and "fastairl_test_no_such_package" in why
    assert "--loader needy --device cuda" in why and "ModuleNotFoundError" in why
    assert "or choose --loader folder/ffcv/nvjpeg/dali" in why


def test_entries_are_checked_when_declared(scratch_registry):
    with pytest.raises(ValueError, match="output 'float'"):
        _tiny(output="float")
    with pytest.raises(ValueError, match="reserved"):
        _tiny("auto")
    with pytest.raises(ValueError, match="install command"):
        _tiny(package="somepkg")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_tiny("folder"))
    with pytest.raises(dataclasses.FrozenInstanceError):  # changed by registering anew, never in place
        registry.get("folder").output = "uint8"


def test_reading_the_registry_imports_no_optional_package():
    code = ("import sys; from fastairl.data import registry as r; import fastairl.data as d; "
            "[(r.decode_label(n, 'cuda'), r.needs_packed(n), r.get(n).install) for n in d.LOADERS[1:]]; "
            "print(sorted(m for m in ('ffcv', 'nvidia.dali', 'fastairl.data.dali_loader', "
            "'fastairl.data.ffcv_loader') if m in sys.modules))")
    r = run_cli(["-c", code], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_the_page_aware_order_is_refused_by_a_backend_that_cannot_draw_it(tmp_path):
    """sample_order is checked against the backends' declared orders, naming the one that has it."""
    assert "quasi_random" in registry.get("ffcv").orders
    assert registry.get("folder").orders == ("random",)
    res = run_cli(["fastairl/train.py", "--exp", "byol", "--data", "demo", "--loader", "folder", "--device", "cpu",
                   "--output-dir", str(tmp_path), "--set", "sample_order=quasi_random", "--max-steps", "1"])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "sample_order=quasi_random is ffcv's page-aware order" in res.stderr and "--loader ffcv" in res.stderr
    assert "Traceback" not in res.stderr
