"""`python -m sdxl ...`: weights management (and, later, serving)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from sdxl.config import DEFAULT_WEIGHTS_DIR


def _default_weights_dir() -> str:
    return os.environ.get("SDXL_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR)


def _weights_tiny(args: argparse.Namespace) -> int:
    from sdxl.tiny import build_tiny_weights

    started = time.perf_counter()
    root = build_tiny_weights(Path(args.dir))
    print(f"tiny random-weight SDXL written to {root} in {time.perf_counter() - started:.1f} s")
    return 0


def _weights_download(args: argparse.Namespace) -> int:
    from sdxl.download import main as download_main

    return download_main(args.dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="download or build model weights")
    what = weights.add_subparsers(dest="what", required=True)
    download = what.add_parser("download", help="fetch the real SDXL 1.0 weights (about 13 GB)")
    download.add_argument("dir", nargs="?", default=None, help="weights root (SDXL_WEIGHTS_DIR)")
    download.set_defaults(func=_weights_download)
    tiny = what.add_parser("tiny", help="build a tiny random-weight SDXL for tests, offline")
    tiny.add_argument("dir", help="weights root to write base/ and refiner/ into")
    tiny.set_defaults(func=_weights_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
