"""The command line that export_backbone and convert_detectron2 share: one checkpoint in,
one file out, which encoder, and no overwrite without ``--overwrite``."""
from __future__ import annotations

import argparse

from fastairl.backbone_io import ENCODERS


def encoder_tool_parser(prog: str, description: str, output_help: str, verb: str) -> argparse.ArgumentParser:
    from fastairl.runtime.cli_util import ArgumentParser
    ap = ArgumentParser(prog=prog, description=description)
    ap.add_argument("input", help="checkpoint (.pth / .pth.tar): pre-training, supervised or torchvision")
    ap.add_argument("output", help=output_help)
    ap.add_argument("--encoder", default="online", choices=ENCODERS,
                    help=f"which network of the checkpoint to {verb} (default: online)")
    ap.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return ap
