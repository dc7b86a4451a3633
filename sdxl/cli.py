"""`python -m sdxl ...`: weights, the Cog server and a `cog predict` stand-in, the REST API."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from sdxl import logs
from sdxl.weights.control_files import CONTROL_CHOICES, DEFAULT_CONTROL
from sdxl.weights.ip_adapter_files import DEFAULT_IP_ADAPTER, IP_ADAPTER_CHOICES


def _default_weights_dir() -> str:
    from sdxl.settings.specs import read_one
    from sdxl.settings.tree import RuntimeGroup

    return str(read_one(RuntimeGroup, "weights_dir"))


def _weights_tiny(args: argparse.Namespace) -> int:
    from sdxl.builders.tiny import build_tiny_weights

    logs.quiet_libraries()
    started = time.perf_counter()
    root = build_tiny_weights(Path(args.dir), flag_everything=args.flag_everything)
    print(f"tiny random-weight SDXL written to {root} in {time.perf_counter() - started:.1f} s")
    return 0


def _weights_random_full(args: argparse.Namespace) -> int:
    from sdxl.builders.random_full import build_random_full

    logs.quiet_libraries()
    started = time.perf_counter()
    try:
        root = build_random_full(
            Path(args.dir), control=not args.no_control, ip_adapter=not args.no_ip_adapter
        )
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    took = time.perf_counter() - started
    print(f"full-size random-weight SDXL written to {root} in {took:.0f} s")
    return 0


def _weights_download(args: argparse.Namespace) -> int:
    from sdxl.weights.download import main as download_main

    root = args.dir if args.dir is not None else _default_weights_dir()
    return download_main(root, control=args.control, ip_adapter=args.ip_adapter)


def _warmup(args: argparse.Namespace) -> int:
    import dataclasses

    from sdxl.engine import Engine
    from sdxl.model.compiled import use_cache_dir
    from sdxl.settings.tree import RuntimeGroup

    runtime = dataclasses.replace(RuntimeGroup.read().build(), compile=True, warmup="1")
    engine = Engine(runtime)  # compiled and warmed on its GPU thread, as a server does
    engine.load()
    engine.close()
    cache = use_cache_dir(runtime.weights_dir, runtime.compile_cache)
    took = engine.load_seconds
    print(f"compiled and warmed up for {runtime.compile_shapes} in {took:.0f} s; cache in {cache}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sdxl.cog.serve import StaleSchema, serve

    try:
        return serve(args.host, args.port, upload_url=args.upload_url, train=args.train)
    except StaleSchema as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    from sdxl.cog.client import ClientError, predict

    try:
        return predict(args.input, Path(args.output))
    except ClientError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from sdxl.train.command import run

    return run(args.input, Path(args.output))


def _schema(args: argparse.Namespace) -> int:
    from sdxl.cog.schema import main as schema_main

    return schema_main(["--check"] if args.check else [])


def _settings(args: argparse.Namespace) -> int:
    from sdxl.settings import SettingsError
    from sdxl.settings.show import effective, markdown
    from sdxl.settings.tree import load_settings

    if args.markdown:
        print(markdown(), end="")
        return 0
    try:
        print(effective(load_settings()), end="")
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="download or build model weights")
    what = weights.add_subparsers(dest="what", required=True)
    download = what.add_parser(
        "download",
        help="fetch the real SDXL 1.0 weights, the trainer's helpers, upscalers (about 14.9 GB), "
        "the control models (--control) and the IP-Adapters (--ip-adapter)",
    )
    download.add_argument("dir", nargs="?", default=None, help="weights root (SDXL_WEIGHTS_DIR)")
    download.add_argument(
        "--control",
        choices=tuple(CONTROL_CHOICES),
        default=DEFAULT_CONTROL,
        help="ControlNets to fetch: full (canny, depth, union and the depth annotator, about "
        "7.6 GB), small (the small canny and depth and the annotator, about 0.74 GB) or none",
    )
    download.add_argument(
        "--ip-adapter",
        choices=tuple(IP_ADAPTER_CHOICES),
        default=DEFAULT_IP_ADAPTER,
        help="IP-Adapters to fetch: all (h94's vit-h, plus and plus-face SDXL adapters and their "
        "ViT-H image encoder, about 4.9 GB) or none",
    )
    download.set_defaults(func=_weights_download)
    tiny = what.add_parser("tiny", help="build a tiny random-weight SDXL for tests, offline")
    tiny.add_argument("dir", help="weights root to write base/ and refiner/ into")
    tiny.add_argument(
        "--flag-everything", action="store_true", help="a safety checker that flags every image"
    )
    tiny.set_defaults(func=_weights_tiny)
    full = what.add_parser(
        "random-full", help="build a full-size SDXL with random weights (benchmarks), offline"
    )
    full.add_argument("dir", help="weights root to write base/, refiner/ and the rest into")
    full.add_argument(
        "--no-control",
        action="store_true",
        help="skip the full-size ControlNets (canny, depth, union: 7.5 GB) and the depth annotator",
    )
    full.add_argument(
        "--no-ip-adapter",
        action="store_true",
        help="skip the full-size IP-Adapters (vit-h, plus, plus-face) and their ViT-H image "
        "encoder (3.7 GB in fp16)",
    )
    full.set_defaults(func=_weights_random_full)

    warmup = commands.add_parser(
        "warmup",
        help="torch.compile for SDXL_COMPILE_SHAPES on this GPU and fill the Inductor cache "
        "(SDXL_COMPILE_CACHE) that a Cog image can ship",
    )
    warmup.set_defaults(func=_warmup)

    serve = commands.add_parser("serve", help="run Cog's prediction server for predict.py")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--upload-url", default=None, help="PUT outputs here (as on Replicate)")
    serve.add_argument(
        "--train", action="store_true", help="serve train.py's trainer (PUT /trainings/<id>)"
    )
    serve.set_defaults(func=_serve)

    predict = commands.add_parser("predict", help="one prediction through the server")
    predict.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE")
    predict.add_argument("-o", "--output", default="outputs", help="folder for the outputs")
    predict.set_defaults(func=_predict)

    train = commands.add_parser("train", help="a training on this machine, like Cog's trainer")
    train.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE")
    train.add_argument("-o", "--output", default="training", help="folder for the tar")
    train.set_defaults(func=_train)

    schema = commands.add_parser("schema", help="write .cog/openapi_schema.json")
    schema.add_argument("--check", action="store_true", help="fail if the file is stale")
    schema.set_defaults(func=_schema)

    settings = commands.add_parser(
        "settings", help="print the settings this environment gives (secrets masked)"
    )
    settings.add_argument(
        "--markdown", action="store_true", help="the docs' table of every variable instead"
    )
    settings.set_defaults(func=_settings)

    # `api` takes its own options (see sdxl.http.server); main() hands them over untouched.
    commands.add_parser("api", help="the REST API: POST /v1/images/stable-diffusion-xl/generate")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["api"]:
        from sdxl.http.server import main as api_main

        return api_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
