"""`make demo`: the main job end to end on the built-in demo dataset, on any machine.

1. generates the demo dataset (10 classes of shapes on photographic backgrounds) once;
2. packs it into FFCV files (the fast path) when ffcv is installed, else uses the folder;
3. pre-trains MoCo v2+ with demo-sized overrides (ResNet-18, 64 px, a few epochs);
4. reports the kNN top-1 on the demo val split of the pre-trained backbone next to a
   randomly initialised one, and where the checkpoint and TensorBoard logs are.

Runs in well under 15 minutes on a 2-core CPU. Re-running continues nothing: it starts
a fresh run in outputs/demo/ (pass --keep to refuse instead of replacing it).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEMO_OVERRIDES = [
    "arch=resnet18", "image_size=64", "hidden_dim=512", "dim=128", "queue_size=512",
    "warmup_epochs=1", "momentum_base=0.99", "probe_lr=1.0", "probe_milestones=(1000,)",
]
# The self-supervised experiments' lr (0.03 per 256) is set for hundreds of epochs; the
# demo's dozen need more. The supervised experiment keeps its own 0.1: at 0.5 its loss
# blows up in the first epoch and it ends at chance.
SSL_DEMO_LR = "lr=0.5"


def demo_overrides(exp: str) -> list[str]:
    """The demo's experiment overrides for ``exp`` (before the user's own --set)."""
    from fastairl.config import load_experiment
    supervised = load_experiment(exp).method == "supervised"
    return DEMO_OVERRIDES + ([] if supervised else [SSL_DEMO_LR])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="moco_v2p")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output-dir", default=str(REPO / "outputs" / "demo"))
    p.add_argument("--device", default="auto")
    p.add_argument("--loader", default="auto", help="auto: ffcv when installed, else folder")
    p.add_argument("--keep", action="store_true", help="refuse to replace an existing demo run")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours (the demo has 100 train images per class)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra experiment overrides after the demo's own")
    args = p.parse_args(argv)
    from fastairl.config import ConfigError
    try:
        overrides = demo_overrides(args.exp) + args.overrides
    except ConfigError as e:
        print(f"[demo] --exp {args.exp}: {e}", file=sys.stderr)
        return 2

    from fastairl.data import resolve_data
    from fastairl.logging_utils import setup_console

    setup_console(0)
    t0 = time.time()
    data = resolve_data("demo")
    loader = args.loader
    if loader in ("auto", "ffcv"):
        try:
            import ffcv  # noqa: F401
            from fastairl.data.demo_packed import ensure_demo_packed
            data, loader = ensure_demo_packed(data), "ffcv"
        except ImportError as e:
            if loader == "ffcv":
                print(f"[demo] --loader ffcv needs ffcv: {e}", file=sys.stderr)
                return 2
            print(f"[demo] ffcv is not installed ({e}); using the reference-style folder loader", flush=True)
            loader = "folder"

    cmd = [sys.executable, str(REPO / "fastairl" / "train.py"), "--exp", args.exp, "--data", str(data),
           "--loader", loader, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--output-dir", args.output_dir, "--device", args.device, "--workers", "2"]
    if not args.keep:
        cmd.append("--overwrite")
    for s in overrides:
        cmd += ["--set", s]
    print("[demo] pre-training:", " ".join(cmd[1:]), flush=True)
    res = subprocess.run(cmd, cwd=REPO)
    if res.returncode != 0:
        print(f"[demo] pre-training failed (exit {res.returncode})", file=sys.stderr)
        return res.returncode
    ckpt = Path(args.output_dir) / args.exp / "last.pth"

    import torch
    from fastairl.engine import resolve_device
    from fastairl.knn import knn_eval_encoder, load_encoder

    device = resolve_device(args.device)
    results = {}
    for name, kw in (("pre-trained", dict(ckpt=str(ckpt), encoder="auto")),
                     ("random init", dict(ckpt=None, arch="resnet18", random_init=True))):
        enc, _ = load_encoder(kw.pop("ckpt"), **kw)
        enc = enc.to(device)
        r = knn_eval_encoder(enc, data, 64, 100, device, workers=2, k=args.knn_k, loader=loader)
        results[name] = r
    print()
    print(f"demo: {args.exp} (ResNet-18, 64 px, {args.epochs} epochs) on the demo dataset, "
          f"kNN (k={args.knn_k}, T=0.07) on the val split")
    print(f"  {'backbone':<12} {'top-1':>7} {'top-5':>7}")
    for name, r in results.items():
        print(f"  {name:<12} {r['acc1']:7.2f} {r['acc5']:7.2f}")
    print(f"checkpoint:  {ckpt.resolve()}")
    print(f"TensorBoard: tensorboard --logdir {(Path(args.output_dir) / args.exp / 'tb').resolve()}")
    print(f"total time:  {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
