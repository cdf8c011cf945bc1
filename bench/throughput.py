"""Throughput of fastairl against the reference-style pipeline: loader by loader, then the
real training step, with the compute ceiling beside it.

    python bench/throughput.py --data demo --device cpu --quick          # minutes on a laptop
    python bench/throughput.py --device cuda                             # bare CUDA machine
    python bench/throughput.py --data /data/in1k --exp moco_v2p,byol --only train
    python bench/throughput.py --photos 8192 --only loaders --workers 16
    python bench/throughput.py --device cuda --nproc 8                   # scaling under torchrun

Why it is built this way:

* **Nothing is re-implemented.** Loaders come from :func:`fastairl.data.build_loader` with a
  :class:`~fastairl.data.base.LoaderSpec`, the augmentation is
  :class:`~fastairl.data.augment.GPUAugment`, and every training-step number is
  :meth:`fastairl.engine.Trainer.train_step` of a Trainer built by its own ``setup()``
  (method, optimizer, autocast, GradScaler for fp16, EMA + queue in ``after_step``, the
  online probe). A speed-up measured here is a speed-up of the product.
* **The reference-style configuration is always a row**: the ``folder`` loader (PIL +
  torchvision transforms in 6 DataLoader workers per process, the reference's setting),
  fp32, NCHW, no compile. Every training row carries its ratio to it, and every loader
  row the ratio of its full path to the ``folder`` loader's.
* **The compute ceiling** is the same step fed with synthetic uint8 views that already
  sit on the device (GPUAugment still runs): what the step costs with a free loader.
  End-to-end rows carry their fraction of the ceiling of the same precision/layout.
* **Robust statistics.** After ``--warmup`` batches, ``--repeats`` windows of a fixed
  number of batches are timed (device synchronised at both ends); tables show the median
  with the min and max over the windows, the JSON keeps every window.
* **Backends are discovered, not assumed.** Each backend row runs if this checkout
  registers it (``fastairl.data.LOADERS``), its package imports, its data exists (a
  packed ``train.beton`` is made once with ``write_ffcv`` when ffcv is installed), and
  otherwise appears as *skipped* with the reason. A row that breaks at run time is
  *failed* with the error, never hidden; the exit code is then 1.
* **Only torch, torchvision, numpy and Pillow are required** (issue 8): matplotlib only
  draws the PNG (skipped with a reason without it); peak RSS is read from
  ``/proc/<pid>/status`` (VmHWM) of this process and its loader workers, no psutil.

Outputs: a Markdown report on stdout and in ``<out>/<host>-<date>.md``, the raw numbers in
``.json`` beside it (schema :data:`SCHEMA`, see :func:`validate_result`) and a PNG bar chart.

This file is the command line; the parts it runs are the ``bench/_*.py`` modules beside it,
one concern each (``bench/README.md`` lists them).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file: make fastairl importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import _honesty as honesty
from bench._chart import plot
from bench._common import BenchError, _configure_logging, _host, log
from bench._data import _resolve_data, ensure_packed
from bench._loader_rows import bench_augment, bench_loader
from bench._result import SCHEMA, compute_ratios, validate_result
from bench._report import render_markdown
from bench._scaling import run_scaling, worker_main
from bench._settings import AMP_CHOICES, DEFAULT_MAX_PACK, LAYOUTS, RESULTS_DIR, make_settings
from bench._train_plan import _exp_config, default_amp, headline_config
from bench._train_rows import bench_train
from bench._variants import loader_variants

# The names below were defined in this file before it was split; they stay reachable as
# ``throughput.<name>`` for the tests and for code written against the single file.
from bench._backends import BACKENDS, backend_missing  # noqa: F401
from bench._common import _one_line  # noqa: F401
from bench._data import _count_train_images, _photo_set  # noqa: F401
from bench._loader_rows import _loader_window  # noqa: F401
from bench._report import _KIND_LABEL, _status_cell  # noqa: F401
from bench._result import STATUSES, _check_stats  # noqa: F401
from bench._rss import _status_kb, child_pids, loader_rss, reset_peak_rss  # noqa: F401
from bench._settings import (CUDA_DEFAULT_PHOTOS, DEFAULT_EXPS, PRESETS, REFERENCE_WORKERS,  # noqa: F401
                             Settings, _pick_list)
from bench._stats import _median, fmt_num, fmt_pct, fmt_ratio, fmt_stats, ratio, summarize  # noqa: F401
from bench._timing import EpochCycler, _batch_size_of, _fail, _skip, _sync  # noqa: F401
from bench._train_plan import TrainRowPlan, _amp_skip, _e2e_variants, config_label, plan_train_rows  # noqa: F401
from bench._train_rows import FIRST_ROW_EXTRA_WARMUP, bench_train_row  # noqa: F401
from bench._variants import Variant, _build_spec, _decode_where, _workers_for, variant_root  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    from fastairl.runtime.cli_util import ArgumentParser  # the one error line of every tool
    p = ArgumentParser(
        prog="bench/throughput.py",
        description="Loader and training-step throughput of fastairl next to the reference-style pipeline "
                    "and the compute ceiling. Writes <out>/<host>-<date>.md, .json and .png.")
    p.add_argument("--data", help="'demo', or an ImageNet-style folder (train/<class>/*) and/or a folder with "
                                  "train.beton (default: demo on CPU, a generated photo set on a GPU)")
    p.add_argument("--photos", type=int, metavar="N",
                   help="use N real photographs at ImageNet sizes (generated once into the cache) as --data")
    p.add_argument("--packed", help="a folder holding train.beton (+ classes.json) for the packed rows "
                                    "(default: --data's, else packed once from --data with write_ffcv)")
    p.add_argument("--max-pack", type=int, default=DEFAULT_MAX_PACK,
                   help=f"pack --data automatically only up to this many images (default {DEFAULT_MAX_PACK})")
    p.add_argument("--exp", help="experiment(s), comma-separated (default: moco_v2p; moco_v2p,byol,supervised "
                                 "on a GPU); the first one's recipe is used for the loader rows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny run: resnet18 at 64 px, a few batches")
    p.add_argument("--only", choices=["loaders", "train"], help="run one half of the benchmark")
    p.add_argument("--loaders", default=",".join(BACKENDS),
                   help=f"backends to try, comma-separated, from {','.join(BACKENDS)} (default: all)")
    p.add_argument("--workers", type=int, help="loader workers/threads per process for every backend (default: "
                                                "6 for the reference-style folder loader, all cores for the others)")
    p.add_argument("--batch-size", type=int,
                   help="batch per process (default 128 on a GPU, 32 on a CPU, 16 with --quick)")
    p.add_argument("--arch", help="backbone (default resnet50 on a GPU, resnet18 on a CPU)")
    p.add_argument("--image-size", type=int, help="crop size (default 224 on a GPU, 112 on a CPU, 64 --quick)")
    p.add_argument("--warmup", type=int, help="untimed batches before the windows")
    p.add_argument("--batches", type=int, help="training steps per timed window")
    p.add_argument("--loader-batches", type=int, help="loader batches per timed window")
    p.add_argument("--repeats", type=int, help="timed windows per row (median, min, max over them)")
    p.add_argument("--amp", default=",".join(AMP_CHOICES),
                   help="precisions of the ceiling matrix, comma-separated from bf16,fp16,off (default: all)")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help="memory layouts of the ceiling matrix, from channels_last,nchw (default: both)")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (CUDA)")
    p.add_argument("--nproc", type=int, default=1, help="also run the training rows in N processes under torchrun")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment field for every row, e.g. --set queue_size=4096")
    p.add_argument("--out", default=str(RESULTS_DIR), help="output folder (default outputs/bench)")
    p.add_argument("--name", help="output file name without suffix (default <host>-<date>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files of the same name")
    p.add_argument("--verbose", action="store_true", help="show fastairl's own INFO logs and tracebacks")
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    return p


def _output_paths(args: argparse.Namespace, created: datetime.datetime) -> dict[str, Path]:
    name = args.name or f"{_host()}-{created.strftime('%Y-%m-%d-%H%M')}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise BenchError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: is a file, expected a folder")
    paths = {k: out / f"{name}.{k}" for k in ("md", "json", "png")}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise BenchError(f"{existing[0]} already exists; pass --overwrite to replace it or --name to choose "
                         f"another name")
    return paths


def _machine() -> dict:
    import torchvision
    cuda = torch.cuda.is_available()
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": cuda,
            "cuda_version": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0}


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    s, device = make_settings(args)
    load_start = honesty.load_average()
    created = datetime.datetime.now()
    paths = _output_paths(args, created)
    root, kind = _resolve_data(args, s.device)
    s.data, s.data_kind = str(root), kind
    if args.packed is not None:
        pk = Path(args.packed).expanduser()
        if not (pk / "train.beton").is_file():
            raise BenchError(f"--packed {pk}: no train.beton there (pack with data_prep/write_ffcv.py)")
        s.packed = str(pk)
    else:
        wants_packed = any(b != "folder" for b in s.loaders)
        packed, why = ensure_packed(root, args.max_pack) if wants_packed else (None, "no packed backend selected")
        s.packed, s.packed_reason = (str(packed) if packed else None), why
    log.info("device %s; data %s (%s); packed: %s", device, s.data, kind, s.packed or s.packed_reason)

    res: dict = {"schema": SCHEMA, "created": created.isoformat(timespec="seconds"), "host": _host(),
                 "command": "python bench/throughput.py " + shlex.join(list(argv)), "machine": _machine(),
                 "settings": {**dataclasses.asdict(s), "default_amp": default_amp(device),
                              "headline": dict(zip(("amp", "channels_last"), headline_config(s, device)))},
                 "loaders": [], "augment": [], "train": [], "scaling": [], "outputs": {}}
    t_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="fastairl-bench-"))
    try:
        if s.only in (None, "loaders"):
            res["loaders"] = [bench_loader(v, s, device) for v in loader_variants(s.loaders)]
            recipes = []
            for e in s.exps:
                r = _exp_config(e, s, 1).recipe
                if r not in recipes:
                    recipes.append(r)
            res["augment"] = [bench_augment(r, s, device) for r in recipes]
        if s.only in (None, "train"):
            res["train"] = bench_train(s, device, workdir)
            if s.nproc > 1:
                res["scaling"] = run_scaling(s, res["train"], workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t_start
    res["load_average"] = {"start": load_start, "end": honesty.load_average()}
    compute_ratios(res)
    paths["md"].parent.mkdir(parents=True, exist_ok=True)
    ok, why = plot(res, paths["png"])
    res["outputs"] = {"markdown": str(paths["md"]), "json": str(paths["json"]),
                      "png": str(paths["png"]) if ok else None, "png_status": "ok" if ok else "skipped",
                      "png_reason": why}
    if not ok:
        log.warning("chart skipped: %s", why)
        paths["png"].unlink(missing_ok=True)  # with --overwrite: no stale chart beside the new report
    validate_result(res)
    res["wall_seconds"] = honesty.process_seconds()
    md = render_markdown(res)
    paths["md"].write_text(md + "\n")
    paths["json"].write_text(json.dumps(res, indent=1) + "\n")
    print(md, flush=True)
    log.info("wrote %s, %s%s in %.0f s", paths["md"], paths["json"], f", {paths['png']}" if ok else "",
             res["seconds"])
    failed = [r["name"] for sec in ("loaders", "augment", "train", "scaling") for r in res[sec]
              if r["status"] == "failed"]
    if failed:
        log.error("%d row(s) failed: %s", len(failed), "; ".join(failed))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.worker_spec:
        return worker_main(args.worker_spec)
    _configure_logging(0, args.verbose)
    from fastairl.config import ConfigError
    try:
        return run(args, argv)
    except (BenchError, ConfigError) as e:
        from fastairl.runtime.cli_util import error
        return error(e)
    except KeyboardInterrupt:
        print("bench/throughput.py: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
