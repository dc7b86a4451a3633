"""`.cog/openapi_schema.json` for predict.py, as `cog build` (0.23) writes it.

coglet validates requests against that file only (without it, it accepts anything). Like
cog's Go static generator (pkg/schema/openapi.go), this reads predict.py without importing it:
the inputs are `Predictor.run`'s (or `predict`'s) parameters, read as `sdxl.cog.openapi` says;
the trainer's part comes from train.py (`sdxl.cog.train_schema`).

    python -m sdxl schema            rewrite .cog/openapi_schema.json
    python -m sdxl schema --check    exit 1 if it is out of date with predict.py
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from sdxl.cog import openapi
from sdxl.cog.openapi import SchemaError, json_type, obj, op, ref, text
from sdxl.cog.train_schema import training_parts

COG_VERSION = "0.23.1"  # info.version: cog build writes its own CLI version there
CLASS_NAME = "Predictor"
METHOD_NAMES = ("run", "predict")  # Cog >= 0.20 BaseRunner.run; BasePredictor.predict
SCHEMA_FILE = Path(".cog") / "openapi_schema.json"
DEFAULT_PREDICT = Path(__file__).resolve().parents[2] / "predict.py"


def find_method(tree: ast.Module, class_name: str = CLASS_NAME) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            kinds = ast.FunctionDef | ast.AsyncFunctionDef
            methods = {m.name: m for m in node.body if isinstance(m, kinds)}
            for name in METHOD_NAMES:
                if name in methods:
                    return methods[name]
            raise SchemaError(f"class {class_name} has no {' or '.join(METHOD_NAMES)} method")
    raise SchemaError(f"no class {class_name} in predict.py")


def output_schema(method: ast.FunctionDef) -> dict[str, Any]:
    if method.returns is None:
        raise SchemaError(f"{method.name}() has no return type annotation")
    if openapi.optional_inner(method.returns) is not None:
        raise SchemaError("an Optional output is not supported by cog")
    return {**json_type(method.returns, "output"), "title": "Output"}


def _paths() -> dict[str, Any]:
    request = {"content": {"application/json": {"schema": ref("PredictionRequest")}}}
    param = {"required": True, "schema": text("Prediction Id"), "name": "prediction_id"}
    predict = op(
        "Predict",
        "predict_predictions_post",
        ref("PredictionResponse"),
        True,
        description="Run a single prediction on the model",
        requestBody=request,
    )
    cancel = op(
        "Cancel",
        "cancel_predictions__prediction_id__cancel_post",
        {},
        True,
        parameters=[{**param, "in": "path"}],
    )
    return {
        "/": {"get": op("Root", "root__get", {}, False)},
        "/health-check": {"get": op("Healthcheck", "healthcheck_health_check_get", {}, False)},
        "/predictions": {"post": predict},
        "/predictions/{prediction_id}/cancel": {"post": cancel},
    }


def _fixed_components() -> dict[str, Any]:
    location = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    statuses = ["starting", "processing", "succeeded", "canceled", "failed"]
    detail = {"title": "Detail", "type": "array", "items": ref("ValidationError")}
    error = {"loc": {"title": "Location", "type": "array", "items": location}}
    error |= {"msg": text("Message"), "type": text("Error Type")}
    return {
        "PredictionRequest": openapi.job_request("PredictionRequest", "Input"),
        "PredictionResponse": openapi.job_response("PredictionResponse", "Input", "Output"),
        "Status": text("Status", description="An enumeration.", enum=statuses),
        "HTTPValidationError": obj("HTTPValidationError", {"detail": detail}),
        "ValidationError": obj("ValidationError", error, required=["loc", "msg", "type"]),
    }


def build_schema(predict_path: Path) -> dict[str, Any]:
    """The OpenAPI 3.0.2 document `cog build` writes for this predict.py, and for the
    train.py beside it when there is one (the trainer's part, sdxl.cog.train_schema)."""
    tree = ast.parse(Path(predict_path).read_text(), filename=str(predict_path))
    method = find_method(tree)
    inputs, enums = openapi.input_schema(method, openapi.module_constants(tree))
    fixed = _fixed_components()
    components = {"Input": inputs, "Output": output_schema(method), **fixed}
    paths = _paths()
    train = Path(predict_path).with_name("train.py")
    if train.exists():
        trainer, trainer_paths = training_parts(train)
        both = sorted(set(trainer) & set(enums))
        if both:
            raise SchemaError(f"inputs of predict.py and train.py with choices share {both}")
        components |= trainer
        paths |= trainer_paths
    clash = sorted(set(enums) & set(components))
    if clash:
        raise SchemaError(f"inputs with choices may not be named {', '.join(clash)}")
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": COG_VERSION},
        "paths": paths,
        "components": {"schemas": {**components, **enums}},
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(predict_path: Path, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(build_schema(predict_path)))
    return out


def _check(out: Path, wanted: str, predict: Path) -> int:
    current = out.read_text() if out.exists() else ""
    if current == wanted:
        print(f"{out} is up to date")
        return 0
    lines = current.splitlines(keepends=True), wanted.splitlines(keepends=True)
    sys.stdout.writelines(list(difflib.unified_diff(*lines, str(out), f"from {predict}"))[:80])
    print(f"\n{out} is out of date: run `python -m sdxl schema`", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl schema", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--predict", type=Path, default=DEFAULT_PREDICT, help="the predict.py")
    parser.add_argument("--out", type=Path, help="default: .cog/openapi_schema.json beside it")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    out = args.out or args.predict.parent / SCHEMA_FILE
    try:
        wanted = render(build_schema(args.predict))
    except (SchemaError, OSError, SyntaxError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        return _check(out, wanted, args.predict)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(wanted)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
