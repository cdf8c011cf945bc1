"""fastairl pre-training entry point.

    python fastairl/train.py --exp byol --data demo --device cpu --max-steps 20
    torchrun --nproc_per_node 8 fastairl/train.py --exp moco_v2p --data /data/in1k
"""
from __future__ import annotations

import logging
import os
import sys

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXAMPLES = """examples:
  python fastairl/train.py --exp moco_v2p --data demo --device cpu --max-steps 20
  python fastairl/train.py --exp byol --data demo --print-config          # what would run; creates nothing
  python fastairl/train.py --exp byol --data demo --set image_size=32 --max-steps 20
  python fastairl/train.py --exp byol --data demo --max-steps 20 --resume   # continue that run
  torchrun --nproc_per_node 8 fastairl/train.py --exp moco_v2p --data /data/in1k
Ctrl-C (or SIGTERM) finishes the step, writes last.pth and prints the command that continues."""


def build_parser():
    from fastairl.runtime.cli_util import ArgumentParser, HelpFormatter
    from fastairl.config_help import experiments_help
    from fastairl.data import loader_names

    p = ArgumentParser(prog="fastairl/train.py", formatter_class=HelpFormatter,
                       description="Pre-train with fastairl (single process or torchrun).\n\nexperiments (--exp):\n"
                                   + experiments_help(),
                       epilog=EXAMPLES)
    p.add_argument("--exp", required=True, help="experiment, one of the list above (exp/<name>.py)")
    p.add_argument("--data", default="demo", help="ImageNet-style folder (train/, val/), folder with train.beton, or 'demo'")
    p.add_argument("--output-dir", default="outputs", help="runs go to <output-dir>/<exp>/")
    p.add_argument("--epochs", type=int, help="override the experiment's epochs")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision (auto: bf16 on GPUs that support it, off on CPU)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=True,
                   help="channels_last memory format")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="NCHW memory format")
    p.add_argument("--loader", help=f"data backend: {', '.join(loader_names())} (default: the experiment's, auto)")
    p.add_argument("--workers", type=int, help="loader worker processes per process (default: the experiment's "
                                                "workers, capped at the CPU count)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps in this invocation (checkpoint written)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue: no value = <output-dir>/<exp>/last.pth; or a fastairl/reference checkpoint path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--seed", type=int, help="random seed (default: the experiment's, 0)")
    p.add_argument("--knn-every", type=int, metavar="N", help="kNN top-1 on the val split every N epochs")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    p.add_argument("--save-every-steps", type=int, default=0, metavar="N",
                   help="also write last.pth every N steps (exact mid-epoch resume; 0: epoch ends only)")
    p.add_argument("--until-step", type=int, metavar="N", help="stop when the run's global step reaches N")
    p.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip up to N steps with a non-finite loss/gradient instead of stopping")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment field, e.g. --set arch=resnet18 --set image_size=64 "
                        "(--print-config lists every key with its type and default)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (experiment, demo scale, --set and flags) and exit; creates nothing")
    return p


def resolve_config(args):
    """The experiment with demo scale, flags and ``--set`` applied; also which keys the user
    set and which the demo scale set (for ``--print-config``)."""
    from fastairl.config import apply_overrides, demo_scale_overrides, load_experiment
    from fastairl.data.demo import is_demo_dataset

    cfg = load_experiment(args.exp)
    overrides = list(args.overrides)
    for flag, key in ((args.epochs, "epochs"), (args.batch_size, "batch_size"), (args.seed, "seed"),
                      (args.knn_every, "knn_every")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    user_keys = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    scale = []
    if args.data == "demo" or is_demo_dataset(args.data):
        scale = demo_scale_overrides(overrides)
        if scale and not args.print_config:
            logging.getLogger("fastairl").warning(
                "--data %s is the demo dataset: demo-scale %s (set them with --set/--batch-size to change)",
                args.data, ", ".join(scale))
    cfg = apply_overrides(cfg, scale + overrides)
    return cfg, user_keys, {s.split("=", 1)[0] for s in scale}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl.runtime import distributed as fdist
    from fastairl.runtime.cli_util import EXIT_INTERRUPTED, error, report_stop, stopped
    from fastairl.config import ConfigError
    from fastairl.data.folder import BadDataError
    from fastairl.engine import RunOptions, Trainer, UserError
    from fastairl.runtime.logging_utils import setup_console
    from fastairl.rank_check import RankDivergenceError
    from fastairl.runtime.stop_signals import interrupted

    setup_console(int(os.environ.get("RANK", "0")))
    log = logging.getLogger("fastairl")
    trainer = None
    ok = False
    try:
        cfg, user_keys, demo_keys = resolve_config(args)
        if args.print_config:
            from fastairl.config_help import format_config
            print(format_config(cfg, user_keys, demo_keys))
            print(f"# run folder: {os.path.join(args.output_dir, cfg.name)} (nothing was created)")
            ok = True
            return 0
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
        ok = True
        code = 0
        if trainer.is_main:
            code = report_stop(log, trainer.run_dir, trainer.global_step,
                               complete=trainer.global_step >= trainer.total_steps,
                               interrupted=interrupted(trainer),
                               files=("config.json", "log.jsonl", "tb", "last.pth"),
                               complete_hint=f"evaluate it with: python -m fastairl.linear_eval --ckpt "
                                             f"{trainer.run_dir / 'last.pth'}")
        return EXIT_INTERRUPTED if interrupted(trainer) else code
    except (ConfigError, UserError, FileNotFoundError, NotADirectoryError, ValueError, BadDataError) as e:
        return error(e)
    except FloatingPointError as e:
        return stopped(e)
    except RankDivergenceError as e:  # every rank sees the same comparison: all stop here
        last = trainer.run_dir / "last.pth" if trainer is not None else None
        return stopped(f"{e}; " + (f"{last} (the last checkpoint that passed) is intact" if last and last.is_file()
                                   else "no checkpoint was written"))
    except KeyboardInterrupt:
        return error(_interrupt_message(trainer), EXIT_INTERRUPTED)
    finally:
        if trainer is not None:
            if not ok:
                trainer.discard_failed_start()
            trainer.close()
        else:
            fdist.teardown()


def _interrupt_message(trainer) -> str:
    """Ctrl-C outside the loop's handler: while starting, or a second Ctrl-C."""
    from fastairl.runtime.cli_util import resume_command
    last = trainer.run_dir / "last.pth" if trainer is not None and hasattr(trainer, "run_dir") else None
    have = last is not None and last.is_file()
    if trainer is not None and trainer.stop_requested:
        return ("interrupted again: stopped at once, " + (f"{last} holds the last checkpoint; continue with: "
                f"{resume_command()}" if have else "no checkpoint was written; rerun the same command"))
    if have:
        return f"interrupted while starting; {last} is unchanged; continue with: {resume_command()}"
    return "interrupted before the first checkpoint: nothing to continue; rerun the same command"


if __name__ == "__main__":
    sys.exit(main())
