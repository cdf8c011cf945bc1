"""fastairl pre-training entry point.

    python fastairl/train.py --exp byol --data demo --device cpu --max-steps 20
    torchrun --nproc_per_node 8 fastairl/train.py --exp moco_v2p --data /data/in1k
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    from fastairl.config import available_experiments

    p = argparse.ArgumentParser(prog="fastairl/train.py", description="Pre-train with fastairl (single process or torchrun).")
    p.add_argument("--exp", required=True, help=f"experiment: one of {', '.join(available_experiments())}")
    p.add_argument("--data", default="demo", help="ImageNet-style folder (train/, val/), folder with train.beton, or 'demo'")
    p.add_argument("--output-dir", default="outputs", help="runs go to <output-dir>/<exp>/ (default: outputs)")
    p.add_argument("--epochs", type=int, help="override the experiment's epochs")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision (default: bf16 on GPUs that support it, off on CPU)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=True)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--loader", help="data backend: auto, folder, ffcv, nvjpeg, dali (default: the experiment's, auto)")
    p.add_argument("--workers", type=int, help="loader worker processes per process")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps in this invocation (checkpoint written)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue: no value = <output-dir>/<exp>/last.pth; or a fastairl/reference checkpoint path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--seed", type=int, help="random seed (default: the experiment's, 0)")
    p.add_argument("--knn-every", type=int, metavar="N", help="kNN top-1 on the val split every N epochs")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    p.add_argument("--save-every-steps", type=int, default=0, metavar="N",
                   help="also write last.pth every N steps (exact mid-epoch resume; default: epoch ends only)")
    p.add_argument("--until-step", type=int, metavar="N", help="stop when the run's global step reaches N")
    p.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip up to N steps with a non-finite loss/gradient instead of stopping")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment field, e.g. --set arch=resnet18 --set image_size=64")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl import distributed as fdist
    from fastairl.config import ConfigError, apply_overrides, demo_scale_overrides, load_experiment
    from fastairl.data.folder import BadDataError
    from fastairl.engine import RunOptions, Trainer, UserError
    from fastairl.logging_utils import setup_console

    setup_console(int(os.environ.get("RANK", "0")))
    trainer = None
    try:
        cfg = load_experiment(args.exp)
        overrides = list(args.overrides)
        for flag, key in ((args.epochs, "epochs"), (args.batch_size, "batch_size"), (args.seed, "seed"),
                          (args.knn_every, "knn_every")):
            if flag is not None:
                overrides.append(f"{key}={flag}")
        from fastairl.data.demo import is_demo_dataset
        if args.data == "demo" or is_demo_dataset(args.data):
            scale = demo_scale_overrides(overrides)
            if scale:
                logging.getLogger("fastairl").warning(
                    "--data %s is the demo dataset: demo-scale %s (set them with --set/--batch-size to change)",
                    args.data, ", ".join(scale))
            overrides = scale + overrides
        cfg = apply_overrides(cfg, overrides)
        if args.max_steps is not None and args.max_steps <= 0:
            raise ConfigError(f"--max-steps {args.max_steps}: must be > 0")
        opts = RunOptions(data=args.data, output_dir=args.output_dir, device=args.device, amp=args.amp,
                          channels_last=args.channels_last, loader=args.loader, max_steps=args.max_steps,
                          resume=args.resume, overwrite=args.overwrite, compile=args.compile,
                          workers=args.workers, progress=args.progress, save_every_steps=args.save_every_steps,
                          until_step=args.until_step, skip_nonfinite=args.skip_nonfinite)
        trainer = Trainer(cfg, opts)
        trainer.setup()
        trainer.fit()
        return 0
    except (ConfigError, UserError, FileNotFoundError, NotADirectoryError, ValueError, BadDataError) as e:
        print(f"fastairl: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"fastairl: stopped: {e}", file=sys.stderr)
        return 3
    finally:
        if trainer is not None:
            trainer.close()
        else:
            fdist.teardown()


if __name__ == "__main__":
    sys.exit(main())
