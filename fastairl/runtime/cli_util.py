"""What every fastairl command line shares: one error prefix, argparse errors in the same
form, and the "how to continue" lines printed when a run stops.

One prefix (``fastairl: error:``) lets a user, a wrapper script or a test recognise a
fastairl complaint whichever tool printed it; argparse's own errors use it too.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

PREFIX = "fastairl"
EXIT_USER, EXIT_STOPPED, EXIT_INTERRUPTED = 2, 3, 130


def error(msg: object, code: int = EXIT_USER) -> int:
    """Print ``fastairl: error: <msg>`` (first line only, so no traceback leaks) and return ``code``."""
    text = str(msg).strip().splitlines()
    print(f"{PREFIX}: error: {text[0] if text else type(msg).__name__}", file=sys.stderr, flush=True)
    return code


def stopped(msg: object, code: int = EXIT_STOPPED) -> int:
    """A run that ended on a numeric problem: ``fastairl: stopped: <msg>``."""
    print(f"{PREFIX}: stopped: {msg}", file=sys.stderr, flush=True)
    return code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with fastairl's error line (usage first, then ``fastairl: error: ...``, exit 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        error(f"{self.prog}: {message}")
        sys.exit(EXIT_USER)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's lines as written and appends each flag's
    default where it has one (not None, not a switch, not already in the help text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if d is None or d == [] or d is argparse.SUPPRESS or action.nargs == 0 or "default" in text:
            return text
        return f"{text} (default: {d})"


def resume_command(argv: list[str] | None = None) -> str:
    """The command that continues this run: the same flags, ``--resume`` (the run folder's
    own ``last.pth``) instead of any earlier ``--resume PATH``, and no ``--overwrite``
    (which would replace the run that is to be continued). Under torchrun the launcher is
    named with this node's process count (add your rendezvous flags on a cluster)."""
    args = list(sys.argv[1:] if argv is None else argv)
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--overwrite" or a.startswith("--resume="):
            i += 1
        elif a == "--resume":
            i += 2 if i + 1 < len(args) and not args[i + 1].startswith("-") else 1
        else:
            out.append(a)
            i += 1
    out.append("--resume")
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(spec, "name", None):  # python -m fastairl.linear_eval
        target = ["-m", spec.name]
    else:
        script = sys.argv[0] if sys.argv and sys.argv[0] else "fastairl/train.py"
        target = [os.path.relpath(script) if os.path.isabs(script) else script]
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        launcher = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "1")]
    else:
        launcher = ["python"]
    return shlex.join(launcher + target + out)


def report_stop(log, run_dir, step: int, *, complete: bool, interrupted: bool, files: tuple[str, ...],
                complete_hint: str = "") -> int:
    """Say where the run's files are and how to continue; return the exit code.

    Every stop ends the same way (normal end, ``--max-steps``/``--until-step``, a signal),
    so a user never has to guess which folder a run wrote or which command continues it.
    Ctrl-C gives one ``interrupted at step N; continue with: ...`` line and exit 130.
    """
    from pathlib import Path
    rd = Path(run_dir).resolve()
    present = [n + ("/" if (rd / n).is_dir() else "") for n in files if (rd / n).exists()]
    log.info("run folder %s: %s", rd, ", ".join(present) or "empty")
    if (rd / "tb").is_dir():
        log.info("TensorBoard: tensorboard --logdir %s", rd / "tb")
    cmd = resume_command()
    if interrupted:
        print(f"{PREFIX}: interrupted at step {step}; continue with: {cmd}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if complete:
        log.info("the run is complete (step %d)%s", step, f"; {complete_hint}" if complete_hint else "")
    else:
        log.info("stopped at step %d; continue with: %s", step, cmd)
    return 0
