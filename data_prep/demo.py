"""`make demo`: the main job end to end on the built-in demo dataset, on any machine.

1. generates the demo dataset once (10 classes, each one photograph shipped with
   scikit-image or matplotlib; every image a small random crop of it with its own hue);
2. pre-trains MoCo v2+ with demo-sized overrides (ResNet-18, small images, a dozen
   epochs; printed before the run), with the kNN monitor every few epochs;
3. reports the kNN top-1 on the val split of the pre-trained backbone next to a randomly
   initialised one, writes ``result.json`` and ``summary.png`` and says where they are.

    python data_prep/demo.py                    # moco_v2p, seed 0 (FASTAIRL_DEMO_SEED)
    python data_prep/demo.py --seed 1           # another dataset draw and training seed
    python data_prep/demo.py --exp byol         # the same demo for BYOL / supervised

Re-running continues nothing: it starts a fresh run in outputs/demo/<exp>/ (pass --keep
to refuse instead of replacing it). Two runs with the same seed on one machine print the
same numbers: the loader is the folder one (deterministic per sample), the thread count
is fixed, and every draw is seeded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: Demo scale for every experiment: sizes, queue and head widths, the probe, the monitor.
DEMO_OVERRIDES = [
    "arch=resnet18", "image_size=64", "hidden_dim=512", "dim=128", "queue_size=512",
    "warmup_epochs=1", "probe_lr=0.01", "probe_milestones=(1000,)",
]
#: The self-supervised experiments' lr (0.03 per 256) and target momentum (0.99 -> 1) are
#: set for hundreds of epochs; a dozen need a faster start and a faster-moving target.
#: The moco_plus recipe (blur, stronger jitter) learns too slowly for a few hundred steps
#: at 64 px, so the demo uses the basic MoCo recipe; BYOL keeps its own. The supervised
#: experiment keeps its lr 0.1 and recipe (at 0.5 its loss blows up in the first epoch).
SSL_OVERRIDES = ["lr=1.5", "momentum_base=0.96"]
RECIPE_OVERRIDES = {"moco_v2p": ["recipe=moco_basic"]}
DEFAULT_EPOCHS = 12
KNN_EVERY = 2
SEED_ENV = "FASTAIRL_DEMO_SEED"


def demo_overrides(exp: str) -> list[str]:
    """The demo's experiment overrides for ``exp`` (before the user's own --set)."""
    from fastairl.config import load_experiment
    supervised = load_experiment(exp).method == "supervised"
    return DEMO_OVERRIDES + ([] if supervised else SSL_OVERRIDES) + RECIPE_OVERRIDES.get(exp, [])


def describe_changes(exp: str, overrides: list[str]) -> str:
    """``key exp -> demo`` for every override that changes the experiment's value."""
    from fastairl.config import apply_overrides, load_experiment
    base = load_experiment(exp)
    demo = apply_overrides(load_experiment(exp), overrides)
    changed = [f"{k} {getattr(base, k)} -> {getattr(demo, k)}" for k in base.to_dict()
               if getattr(base, k) != getattr(demo, k)]
    return ", ".join(changed)


def cpu_bf16_native() -> bool:
    """True on x86 CPUs with bf16 instructions (AVX512-BF16 or AMX): there bf16 autocast
    runs the demo's convolutions about 1.5x faster; elsewhere it would be emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_seed() -> int:
    raw = os.environ.get(SEED_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"[demo] {SEED_ENV}={raw!r} is not an integer; unset it or give e.g. 1") from None


def output_names(exp: str) -> tuple[str, str]:
    """``result.json`` / ``summary.png`` for the demo's own experiment, ``-<exp>`` for others."""
    tag = "" if exp == "moco_v2p" else f"-{exp}"
    return f"result{tag}.json", f"summary{tag}.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="moco_v2p", help="experiment (default moco_v2p; byol and supervised too)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"dataset draw and training seed (default ${SEED_ENV} or 0)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output-dir", default=str(REPO / "outputs" / "demo"))
    p.add_argument("--device", default="auto")
    p.add_argument("--loader", default="folder",
                   help="folder (default: deterministic per sample, and the demo's small JPEGs "
                        "decode fast) or any backend train.py takes, e.g. ffcv (packs the demo once)")
    p.add_argument("--keep", action="store_true", help="refuse to replace an existing demo run")
    p.add_argument("--images-per-class", type=int, nargs=2, metavar=("TRAIN", "VAL"), default=None,
                   help="a smaller (or larger) demo dataset for a quick try (default 200 40)")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours (the demo has 200 train images per class)")
    p.add_argument("--knn-every", type=int, default=KNN_EVERY, help="kNN monitor every N epochs (0: at the end only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra experiment overrides after the demo's own")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = default_seed()
    if args.images_per_class is not None and (args.images_per_class[0] < 1 or args.images_per_class[1] < 1):
        p.error(f"--images-per-class {args.images_per_class[0]} {args.images_per_class[1]}: both must be at least 1")
    for flag, value, lo in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                            ("--knn-k", args.knn_k, 1), ("--knn-every", args.knn_every, 0)):
        if value < lo:
            p.error(f"{flag} {value}: must be at least {lo}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from fastairl.config import ConfigError
    try:
        overrides = demo_overrides(args.exp) + [f"knn_k={args.knn_k}"] + args.overrides
    except ConfigError as e:
        print(f"[demo] --exp {args.exp}: {e}", file=sys.stderr)
        return 2

    import torch
    from fastairl.data.demo import ensure_demo_data
    from fastairl.runtime.logging_utils import setup_console

    setup_console(0)
    t0 = time.time()
    threads = torch.get_num_threads()  # fixed for the run and its workers: same sums, same numbers
    sizes = {} if args.images_per_class is None else dict(train_per_class=args.images_per_class[0],
                                                           val_per_class=args.images_per_class[1])
    data = ensure_demo_data(seed=args.seed, **sizes)
    loader = args.loader
    from fastairl.data.registry import missing_message, names, needs_packed
    if loader in names() and needs_packed(loader):  # an unknown name: train.py says so
        why = missing_message(loader)
        if why:
            print(f"[demo] {why}; drop the flag to use the folder loader", file=sys.stderr)
            return 2
        from fastairl.data.demo_packed import ensure_demo_packed
        data = ensure_demo_packed(data)

    out = Path(args.output_dir)
    run_dir = out / args.exp
    from fastairl.engine import UserError, resolve_device
    try:
        device = resolve_device(args.device)
    except UserError as e:
        print(f"[demo] {e}", file=sys.stderr)
        return 2
    amp = "auto"
    if device.type == "cpu":
        if cpu_bf16_native():
            amp = "bf16"
        else:
            print("[demo] this CPU has no bf16 instructions: training in fp32, about 1.5x slower "
                  "than on one with them", flush=True)
    knn_every = args.knn_every if args.knn_every else args.epochs
    cmd = [sys.executable, str(REPO / "fastairl" / "train.py"), "--exp", args.exp, "--data", str(data),
           "--loader", loader, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--output-dir", str(out), "--device", args.device, "--workers", "2",
           "--seed", str(args.seed), "--knn-every", str(knn_every), "--amp", amp]
    if not args.keep:
        cmd.append("--overwrite")
    for s in overrides:
        cmd += ["--set", s]
    print(f"[demo] {args.exp} at demo scale, seed {args.seed}, {threads} threads, amp {amp}; changed from "
          f"the experiment: {describe_changes(args.exp, overrides)}", flush=True)
    print("[demo] pre-training:", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, cwd=REPO, env=env)
    if res.returncode != 0:
        print(f"[demo] pre-training failed (exit {res.returncode})", file=sys.stderr)
        return res.returncode
    train_s = time.time() - t0
    return report(args, data, loader, run_dir, overrides, threads, amp, t0, train_s)


def report(args: argparse.Namespace, data: Path, loader: str, run_dir: Path, overrides: list[str],
           threads: int, amp: str, t0: float, train_s: float) -> int:
    import torch
    from fastairl.demo_report import draw_summary, per_epoch, read_log, write_json_atomic
    from fastairl.engine import resolve_device
    from fastairl.eval.knn import knn_eval_encoder, load_encoder

    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    amp_dtype = torch.bfloat16 if amp == "bf16" else None  # as the trainer's kNN monitor
    ckpt = run_dir / "last.pth"
    rows = per_epoch(read_log(run_dir / "log.jsonl"))
    last = rows[-1] if rows else {}
    arch = next(s.split("=", 1)[1] for s in reversed(overrides) if s.startswith("arch="))
    size = int(next(s.split("=", 1)[1] for s in reversed(overrides) if s.startswith("image_size=")))
    results = {}
    if last.get("epoch") == args.epochs and last.get("knn_acc1") is not None:
        results["pre-trained"] = {"acc1": round(last["knn_acc1"], 4), "acc5": round(last["knn_acc5"], 4)}
    pending = [("random init", dict(ckpt=None, arch=arch, random_init=True, seed=args.seed))]
    if "pre-trained" not in results:
        pending.insert(0, ("pre-trained", dict(ckpt=str(ckpt), encoder="auto")))
    for name, kw in pending:
        enc, _ = load_encoder(kw.pop("ckpt"), **kw)
        r = knn_eval_encoder(enc.to(device), data, size, 64, device, workers=2, amp_dtype=amp_dtype,
                             k=args.knn_k, loader=loader)
        results[name] = {"acc1": round(r["acc1"], 4), "acc5": round(r["acc5"], 4)}
    classes = json.loads((data / "DONE").read_text()).get("num_classes", 10)
    minutes = (time.time() - t0) / 60
    result = {
        "exp": args.exp, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
        "loader": loader, "threads": threads, "amp": amp, "knn_k": args.knn_k, "chance": 100.0 / classes,
        "pretrained": results["pre-trained"], "random_init": results["random init"],
        "gain": round(results["pre-trained"]["acc1"] - results["random init"]["acc1"], 4),
        "per_epoch": rows, "overrides": overrides, "data": str(data), "checkpoint": str(ckpt.resolve()),
        "minutes": round(minutes, 2), "train_minutes": round(train_s / 60, 2),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "device": str(device)},
    }
    json_name, png_name = output_names(args.exp)
    out = Path(args.output_dir)
    result_path = write_json_atomic(result, out / json_name)
    png_path = draw_summary(result, out / png_name)

    print()
    print(f"demo: {args.exp} ({arch}, {size} px, {args.epochs} epochs, seed {args.seed}) on the demo "
          f"dataset, kNN (k={args.knn_k}, T=0.07) on the val split (chance {result['chance']:.0f})")
    print(f"  {'backbone':<12} {'top-1':>7} {'top-5':>7}")
    for name, r in results.items():
        print(f"  {name:<12} {r['acc1']:7.2f} {r['acc5']:7.2f}")
    print(f"  gain         {result['gain']:+7.2f}")
    print(f"result:      {result_path.resolve()}")
    print(f"summary:     {png_path.resolve()}")
    print(f"checkpoint:  {ckpt.resolve()}")
    print(f"TensorBoard: tensorboard --logdir {(run_dir / 'tb').resolve()}")
    print(f"total time:  {minutes * 60:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
