#!/usr/bin/env python
"""Planning numbers for packing: disk size of the FFCV files per 1,000 images and packing
time per CPU core, measured with the real packer on the photo set, extrapolated to ImageNet-1k.

    python bench/pack_size.py                              # 2,000 photos, --max-side 512 --quality 90, 1 worker, 3 repeats
    python bench/pack_size.py --n-images 1000 --workers 2 --repeats 1 --out outputs/bench/pack.json

Each repeat packs train and val of the photo set (``fastairl.data.photos.ensure_photo_set``,
generated on first use: crops of real photographs at ImageNet-like sizes, long side
420-560 px, JPEG q75-95) into a temporary folder with :func:`fastairl.data.ffcv_writer.write_ffcv`,
the function behind ``data_prep/write_ffcv.py`` (its check pass and its write pass both
count). Sizes: the stored JPEG payload (what grows with the image count) and the
``.beton`` files' bytes (plus page padding, noticeable only for small sets). Time: the CPU
seconds of the packer and its worker processes per image (core-seconds, meaningful even
on a busy machine) and the wall time (the load at start and end is recorded). Medians
over the repeats.

The ImageNet-1k figures scale the measured bytes and seconds per image by 1,281,167 train
+ 50,000 val images. That assumes ImageNet's images store like these after the 512-px cap;
the report also gives bytes per stored megapixel and the mean stored size, so the estimate
can be rescaled to another assumption about ImageNet's image sizes. ImageNet's source
JPEGs are larger on average than these crops and some are several megapixels, so reading
them costs more than here: treat the time as a lower bound for ImageNet.

Prints a summary and writes JSON (default ``outputs/bench/pack_size-<host>-<date>.json``;
an existing file is kept unless ``--overwrite``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IMAGENET = {"train": 1_281_167, "val": 50_000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fastairl.runtime.cli_util import ArgumentParser, HelpFormatter
    p = ArgumentParser(prog="bench/pack_size.py", formatter_class=HelpFormatter,
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=2000, help="photo-set size (about 1/8 of it val)")
    p.add_argument("--photos", type=Path, help="an existing ImageNet-style folder to pack instead of the photo set")
    p.add_argument("--max-side", type=int, default=512, help="as write_ffcv.py --max-side")
    p.add_argument("--quality", type=int, default=90, help="as write_ffcv.py --quality")
    p.add_argument("--workers", type=int, default=1, help="packing processes (1: time per core)")
    p.add_argument("--repeats", type=int, default=3, help="packings to take the median of")
    p.add_argument("--out", type=Path, help="JSON report (default outputs/bench/pack_size-<host>-<date>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    for flag, value, low in (("--n-images", args.n_images, 16), ("--workers", args.workers, 1),
                             ("--repeats", args.repeats, 1)):
        if value < low:
            p.error(f"{flag} {value}: must be >= {low}")
    return args


def _folder_stats(root: Path) -> dict:
    files = [f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return {"images": len(files), "bytes": sum(f.stat().st_size for f in files)}


def _stored_pixels(out: Path, splits) -> dict:
    from fastairl.data.beton import BetonReader
    n, px, w, h, payload = 0, 0, 0, 0, 0
    for s in splits:
        r = BetonReader(out / f"{s}.beton")
        n += len(r)
        px += int((r.widths * r.heights).sum())
        w += int(r.widths.sum())
        h += int(r.heights.sum())
        payload += int(r.sizes.sum())
    return {"mean_width": w / n, "mean_height": h / n, "mean_megapixels": px / n / 1e6, "megapixels": px / 1e6,
            "payload_bytes": payload}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the packer's
    worker processes): the work done, whatever else the machine was running."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _reap_children(timeout: float = 60.0) -> None:
    """Wait for the packer's worker processes: ffcv's writer never joins its workers, and a
    child's CPU time only counts in RUSAGE_CHILDREN once it has been waited for."""
    import multiprocessing
    t0 = time.monotonic()
    while multiprocessing.active_children() and time.monotonic() - t0 < timeout:  # joins finished ones
        time.sleep(0.05)


def measure(root: Path, max_side: int, quality: int, workers: int, repeats: int) -> dict:
    import ffcv.fields  # noqa: F401 -- imported (and numba-compiled) once, outside the timings
    import ffcv.writer  # noqa: F401

    from fastairl.data.ffcv_writer import write_ffcv
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="fastairl-pack-") as tmp:
            cpu0 = _cpu_seconds()
            s = write_ffcv(root, Path(tmp) / "packed", max_side=max_side, quality=quality, workers=workers,
                           progress=False, shuffle_seed=0)
            _reap_children()
            cpu = _cpu_seconds() - cpu0
            pixels = _stored_pixels(Path(tmp) / "packed", s["splits"])
        runs.append({"images": s["images"], "bytes": s["bytes"], "seconds": s["seconds"], "cpu_seconds": cpu,
                     "splits": {k: {"images": v["images"], "bytes": v["bytes"], "seconds": v["seconds"]}
                                for k, v in s["splits"].items()}, **pixels})
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    images = runs[0]["images"]
    # The files' bytes include each writer process's last, partly filled page (up to 2 MB
    # per split and worker for a small set): the payload (the JPEGs as stored) is what
    # scales with the image count, so the extrapolation uses it.
    bytes_per_image = med("payload_bytes") / images
    cpu_per_image = med("cpu_seconds") / images
    n_in = sum(IMAGENET.values())
    return {
        "runs": runs, "images": images,
        "bytes_per_1000_images": med("bytes") / images * 1000,
        "payload_bytes_per_1000_images": bytes_per_image * 1000,
        "bytes_per_stored_megapixel": med("payload_bytes") / runs[0]["megapixels"],
        "mean_stored_size": [runs[0]["mean_width"], runs[0]["mean_height"]],
        "mean_stored_megapixels": runs[0]["mean_megapixels"],
        "seconds": [r["seconds"] for r in runs], "median_seconds": med("seconds"),
        "images_per_s": images / med("seconds"),
        "cpu_seconds": [r["cpu_seconds"] for r in runs], "cpu_ms_per_image": cpu_per_image * 1e3,
        "images_per_cpu_second": 1 / cpu_per_image,
        "imagenet_1k": {
            "images": IMAGENET,
            "gb_train": bytes_per_image * IMAGENET["train"] / 1e9,
            "gb_val": bytes_per_image * IMAGENET["val"] / 1e9,
            "gb_total": bytes_per_image * n_in / 1e9,
            "core_hours": cpu_per_image * n_in / 3600,
            "hours_on_16_cores": cpu_per_image * n_in / 3600 / 16,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fastairl.runtime.cli_util import error
    host = socket.gethostname().split(".")[0] or "host"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    out = args.out or Path("outputs") / "bench" / f"pack_size-{host}-{stamp}.json"
    if out.exists() and not args.overwrite:
        return error(f"--out {out} already exists; pass --overwrite to replace it or choose another --out")
    if args.photos is not None:
        if not (args.photos / "train").is_dir():
            return error(f"--photos {args.photos}: no train/ folder (expected an ImageNet-style folder)")
        root = args.photos
    else:
        from fastairl.data.photos import ensure_photo_set
        root = ensure_photo_set(n_images=args.n_images)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        res = measure(root, args.max_side, args.quality, args.workers, args.repeats)
    except (FileNotFoundError, ValueError) as e:
        return error(e)
    report = {
        "command": " ".join(["python", "bench/pack_size.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": host,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "nice": os.nice(0), "load_start": load0, "load_end": os.getloadavg(),
        "wall_s": time.perf_counter() - t0,
        "data": str(root), "source": _folder_stats(root),
        "max_side": args.max_side, "quality": args.quality, "workers": args.workers, "repeats": args.repeats,
        **res,
    }
    src = report["source"]
    report["source_bytes_per_1000_images"] = src["bytes"] / max(src["images"], 1) * 1000
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    inn = res["imagenet_1k"]
    w, h = res["mean_stored_size"]
    print(f"packed {res['images']} images of {root} at --max-side {args.max_side} --quality {args.quality}, "
          f"{args.workers} worker(s), {args.repeats} repeat(s); load {load0[0]:.2f} -> {report['load_end'][0]:.2f}")
    print(f"  size: {res['payload_bytes_per_1000_images'] / 1e6:.1f} MB of JPEG payload per 1,000 images "
          f"({res['bytes_per_1000_images'] / 1e6:.1f} MB of .beton file, page padding included; source JPEGs "
          f"{report['source_bytes_per_1000_images'] / 1e6:.1f} MB); mean stored {w:.0f}x{h:.0f} "
          f"({res['mean_stored_megapixels']:.3f} MP), {res['bytes_per_stored_megapixel'] / 1e3:.0f} kB per megapixel")
    print(f"  time: {res['cpu_ms_per_image']:.1f} CPU-ms per image ({res['images_per_cpu_second']:.0f} images per "
          f"core-second); wall median {res['median_seconds']:.1f} s [{min(res['seconds']):.1f}-"
          f"{max(res['seconds']):.1f}] with {args.workers} worker(s)")
    print(f"  ImageNet-1k at these rates: {inn['gb_train']:.0f} GB train + {inn['gb_val']:.1f} GB val = "
          f"{inn['gb_total']:.0f} GB; {inn['core_hours']:.1f} core-hours to pack "
          f"({inn['hours_on_16_cores']:.1f} h with --workers 16)")
    print(f"  report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
