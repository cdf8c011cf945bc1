"""Tool outputs stay out of the source tree and get the file mode of training outputs
(issue 16 item 7): bench/throughput.py writes under outputs/bench by default, preview puts
bare names under outputs/, a dump over 100 MB says its size first, and every file a tool
writes through a temp file is 0644 under umask 022 (mkstemp alone gives 0600)."""
import os
import pickle
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from test_reliability import _cmd, _env, small_data  # noqa: F401 (fixture)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_every_atomic_writer_honours_the_umask(tmp_path):
    from fastairl.runtime.atomic_io import atomic_write
    from fastairl.backbone_io import atomic_pickle, atomic_save
    from fastairl.checkpoint import atomic_torch_save

    writers = {
        "checkpoint.pth": lambda p: atomic_torch_save({"model": {"w": torch.ones(3)}}, p, verify=True),
        "backbone.pth": lambda p: atomic_save({"w": torch.ones(3)}, p),
        "d2.pkl": lambda p: atomic_pickle({"model": {"w": np.ones(3)}}, p),
        "raw.bin": lambda p: atomic_write(p, lambda f: f.write(b"x")),
    }
    old = os.umask(0)
    try:
        for mask, want in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
            os.umask(mask)
            for name, write in writers.items():
                p = tmp_path / f"{mask:o}" / name
                write(p)
                assert _mode(p) == want, (name, oct(mask), oct(_mode(p)))
            assert not [q for q in (tmp_path / f"{mask:o}").iterdir() if q.name.startswith(".")]  # no temp left
    finally:
        os.umask(old)
    back = torch.load(tmp_path / "22" / "checkpoint.pth", weights_only=True)
    assert torch.equal(back["model"]["w"], torch.ones(3))
    assert pickle.loads((tmp_path / "22" / "d2.pkl").read_bytes())["model"]["w"].sum() == 3


def _run(args, cwd=REPO, timeout=600):
    env = dict(_env(), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_each_tools_files_have_the_mode_of_training_outputs(small_data, tmp_path, umask022):  # noqa: F811
    res = subprocess.run(_cmd("byol", small_data, tmp_path / "runs", "--max-steps", "1"), cwd=REPO,
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ck = tmp_path / "runs" / "byol" / "last.pth"
    assert _mode(ck) == _mode(tmp_path / "runs" / "byol" / "config.json") == 0o644
    out = tmp_path / "tools"
    out.mkdir()
    for args in (["-m", "fastairl.export_backbone", str(ck), str(out / "tv.pth")],
                 ["-m", "fastairl.convert_detectron2", str(ck), str(out / "d2.pkl")],
                 ["-m", "fastairl.norm_rescale", "--norm-from", str(ck), "--weights-from", str(ck),
                  "--out", str(out / "nr.pth")],
                 ["-m", "fastairl.preview", "--exp", "byol", "--data", str(small_data), "--loader", "folder",
                  "--pairs", "4", "--batch-size", "4", "--workers", "0", "--image-size", "32", "--device", "cpu",
                  "--out", str(out / "grid.png"), "--dump", str(out / "views.pt")]):
        res = _run(args)
        assert res.returncode == 0, (args[1], res.stderr[-2000:])
    files = sorted(out.iterdir())
    assert [p.name for p in files] == ["d2.pkl", "grid.png", "nr.pth", "tv.pth", "views.pt"]
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o644) for p in files}


def test_bench_writes_under_outputs_bench_by_default(tmp_path, demo_root, umask022):
    res = _run([str(REPO / "bench" / "throughput.py"), "--data", "demo", "--device", "cpu", "--quick",
                "--image-size", "32", "--batch-size", "8", "--loader-batches", "2", "--repeats", "2",
                "--workers", "1", "--only", "loaders", "--loaders", "folder", "--max-pack", "0", "--name", "t"],
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    written = sorted((tmp_path / "outputs" / "bench").iterdir())
    assert [p.name for p in written] == ["t.json", "t.md"]
    assert all(_mode(p) == 0o644 for p in written)
    assert not list((REPO / "bench" / "results").glob("t.*"))
    import bench.throughput as tp
    assert Path(tp.build_parser().parse_args([]).out) == Path("outputs") / "bench"


def test_preview_puts_bare_names_under_outputs_and_says_a_big_dumps_size(small_data, tmp_path, monkeypatch,  # noqa: F811
                                                                        capfd, umask022):
    from fastairl.preview import cli as preview  # main and the DUMP_NOTE_BYTES it reads
    monkeypatch.chdir(tmp_path)
    base = ["--exp", "byol", "--data", str(small_data), "--loader", "folder", "--pairs", "4", "--batch-size", "4",
            "--workers", "0", "--image-size", "32", "--device", "cpu"]
    assert preview.main(base + ["--out", "grid.png", "--dump", "views.pt"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["grid.png", "views.pt"]
    assert "dump: writing" not in capfd.readouterr().err  # small: no size note
    # a name with a folder part is used as given
    assert preview.main(base + ["--out", "./here.png"]) == 0
    assert (tmp_path / "here.png").is_file() and _mode(tmp_path / "here.png") == 0o644
    # the size note comes before the file is written, and says its size (threshold lowered to see it)
    monkeypatch.setattr(preview, "DUMP_NOTE_BYTES", 0)
    capfd.readouterr()
    assert preview.main(base + ["--dump", "big.pt"]) == 0
    err = capfd.readouterr().err
    m = re.search(r"dump: writing ([0-9.]+) MB to (\S+)", err)
    assert m and Path(m.group(2)) == Path("outputs") / "big.pt", err[-2000:]
    size = (tmp_path / "outputs" / "big.pt").stat().st_size / 1e6
    assert abs(float(m.group(1)) - size) <= 0.05 + 0.05 * size, (m.group(1), size)
    assert err.index("dump: writing") < err.index("dump: outputs")


def test_packed_files_and_a_cut_log_get_the_usual_mode(small_data, tmp_path):  # noqa: F811
    """write_ffcv's .beton (written by ffcv under a temp name), classes.json and skipped.txt,
    and log.jsonl cut on resume: all through the one writer, so 0640 under umask 027 too,
    and no temp file left beside them."""
    pytest.importorskip("ffcv", reason="ffcv 1.0.2 (make venv) is needed to pack")
    from fastairl.data.ffcv_writer import write_ffcv
    from fastairl.runtime.logging_utils import drop_after_step

    log = tmp_path / "log.jsonl"
    log.write_text("".join(f'{{"step": {i}}}\n' for i in range(1, 6)))
    old = os.umask(0o027)
    try:
        write_ffcv(small_data, tmp_path / "packed", workers=1, progress=False, splits=("train",))
        os.chmod(log, 0o600)  # the cut writes a new file: it gets the umask's mode, not the old one's
        assert drop_after_step(log, 2) == 3
    finally:
        os.umask(old)
    files = sorted((tmp_path / "packed").iterdir())
    assert [p.name for p in files] == ["classes.json", "skipped.txt", "train.beton"]
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o640) for p in files}
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n' and _mode(log) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

