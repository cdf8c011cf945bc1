"""Unreadable images in a folder dataset (issue 16 item 5): the same one clean line with
DataLoader workers as without, naming the files and their share, exit 2, no traceback."""
import shutil
import subprocess

import pytest

from conftest import REPO
from test_reliability import _cmd, _env, small_data  # noqa: F401 (fixture)


def _errors(data, out, workers: int) -> tuple[int, list[str], str]:
    res = subprocess.run(_cmd("byol", data, out, "--loader", "folder", "--until-step", "4", "--workers",
                              str(workers)), cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
    return res.returncode, [l for l in res.stderr.splitlines() if l.startswith("fastairl: error:")], res.stderr


@pytest.mark.parametrize("kind", ["one_truncated", "all_unreadable"])
def test_bad_images_give_the_same_line_with_and_without_workers(kind, small_data, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    files = sorted(p for p in (data / "train").rglob("*") if p.is_file())
    if kind == "one_truncated":  # a real JPEG cut short, as an interrupted copy leaves it
        victims = files[:1]
        victims[0].write_bytes(victims[0].read_bytes()[: victims[0].stat().st_size // 3])
    else:  # every train image is some other file with a .JPEG name
        victims = files
        for f in files:
            f.write_text("not a jpeg\n")
    lines = {}
    for workers in (0, 2):
        code, errs, err = _errors(data, tmp_path / f"o{workers}", workers)
        assert code == 2, err[-3000:]
        assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
        assert len(errs) == 1, err[-3000:]
        lines[workers] = errs[0]
    assert lines[0] == lines[2]
    line = lines[0]
    # the first words blame the images, with their number, share and names
    assert line.startswith(f"fastairl: error: {len(victims)} unreadable images in {data / 'train'} "), line
    assert f"{len(victims) / len(files):.2%} of {len(files)}" in line, line
    assert str(victims[0]) in line and "batch" not in line, line
