"""``python -m fastairl.linear_eval``: the command line of linear evaluation (flags, exit
codes, the one-line result). ``fastairl.linear_eval`` is this module, so it also re-exports
the task's public names."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from fastairl.runtime import distributed as fdist
from fastairl.eval.frozen import BackboneChangedError, changed_tensors, check_frozen, tensor_fingerprint  # noqa: F401
from fastairl.eval.knn import add_device_flags, add_encoder_flags
from fastairl.eval.linear import CKPT_KIND, EXIT_BACKBONE_CHANGED, EXIT_USER, LinearEval  # noqa: F401
from fastairl.eval.linear_protocol import (EVAL_EVERY, HEAD_LAYOUT, PRESETS, LinearClassifier,  # noqa: F401
                                           Settings, check_head_layout, default_run_name, lr_for,
                                           resolve_settings)

log = logging.getLogger("fastairl")


def build_parser() -> argparse.ArgumentParser:
    from fastairl.runtime.cli_util import ArgumentParser
    p = ArgumentParser(prog="python -m fastairl.linear_eval",
                                description="Linear evaluation of a frozen backbone (the reference protocol); "
                                            "single process or torchrun.")
    add_encoder_flags(p, "which encoder (auto: online if present, else supervised, else target)")
    p.add_argument("--bn", action="store_true", help="BatchNorm1d(classes) after the linear layer (the reference's)")
    p.add_argument("--large-norm-config", action="store_true",
                   help="lr 0.2, batch 256, 80 epochs, Nesterov, cosine (for LARS-trained models; what the "
                        "reference runs); with --batch-size B the lr is 0.2 x B/256")
    p.add_argument("--lr", type=float, help="lr per 256 images (default 30, or 0.2 with --large-norm-config)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 256; the lr scales with it)")
    p.add_argument("--epochs", type=int, help="epochs (default 100, or 80 with --large-norm-config)")
    p.add_argument("--milestones", help="epochs of the x0.1 steps, comma-separated (default 60,80)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    p.add_argument("--eval-every", type=int, help=f"validate every N epochs (and at the end; default {EVAL_EVERY})")
    p.add_argument("--image-size", type=int, help="crop size (default: the checkpoint's, demo 64, else 224)")
    p.add_argument("--output-dir", default="outputs/linear", help="runs go to <output-dir>/<name>/")
    p.add_argument("--name", help="run name (default: <ckpt-stem>-<encoder>)")
    add_device_flags(p, "the backbone", workers=6)
    p.add_argument("--max-steps", type=int, help="stop after N steps in this invocation (checkpoint + validation)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue: no value = <output-dir>/<name>/last.pth; or a path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip up to N steps with a non-finite loss/gradient instead of stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20, help="log training metrics every N steps")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastairl.backbone_io import CheckpointError
    from fastairl.runtime.cli_util import EXIT_INTERRUPTED, error, report_stop, stopped
    from fastairl.runtime.errors import UserError
    from fastairl.runtime.logging_utils import setup_console
    from fastairl.runtime.stop_signals import interrupted

    setup_console(int(os.environ.get("RANK", "0")))
    run = None
    ok = False
    try:
        if args.log_every <= 0:
            raise UserError(f"--log-every {args.log_every}: must be > 0")
        run = LinearEval(args)
        run.setup()
        res = run.fit()
        if run.is_main:
            print(f"linear eval {res['arch']} {res['encoder']}: top-1 {res['last_acc1']:.2f} top-5 "
                  f"{res['last_acc5']:.2f} (epoch {round(res['last_epoch'], 2):g}); best top-1 {res['best_acc1']:.2f} "
                  f"top-5 {res['best_acc5']:.2f} (epoch {round(res['best_epoch'], 2):g})", flush=True)
        ok = True
        code = 0
        if run.is_main:
            code = report_stop(log, run.run_dir, run.global_step, complete=run.global_step >= run.total_steps,
                               interrupted=interrupted(run),
                               files=("args.json", "log.jsonl", "tb", "last.pth", "best.pth", "result.json"))
        return EXIT_INTERRUPTED if interrupted(run) else code
    except BackboneChangedError as e:
        return error(e, EXIT_BACKBONE_CHANGED)
    except (CheckpointError, UserError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        return error(e, EXIT_USER)
    except FloatingPointError as e:
        return stopped(e)
    except KeyboardInterrupt:
        return error("interrupted at once (a second Ctrl-C, or while starting); the run folder keeps its last "
                     "checkpoint, if any", EXIT_INTERRUPTED)
    finally:
        if run is not None:
            if not ok:
                run.discard_failed_start()
            run.close()
        else:
            fdist.teardown()


if __name__ == "__main__":
    sys.exit(main())
