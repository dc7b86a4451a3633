"""`.cog/openapi_schema.json` for predict.py, as `cog build` (0.23) writes it.

coglet validates requests against that file only (without it, it accepts anything). Like
cog's Go static generator (pkg/schema/openapi.go), this reads predict.py without importing it:
the inputs are `Predictor.run`'s (or `predict`'s) parameters in order (`x-order`); `Input()`
keywords must be literals, or for default, description and choices a module-level literal
constant; `Optional[T]` is `nullable` and not required; `choices` is an `allOf` reference to
an enum component named after the input. Anything cog could not read is a SchemaError.

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

COG_VERSION = "0.23.1"  # info.version: cog build writes its own CLI version there
CLASS_NAME = "Predictor"
METHOD_NAMES = ("run", "predict")  # Cog >= 0.20 BaseRunner.run; BasePredictor.predict
SCHEMA_FILE = Path(".cog") / "openapi_schema.json"
DEFAULT_PREDICT = Path(__file__).resolve().parents[2] / "predict.py"
REF = "#/components/schemas/"

URI = {"type": "string", "format": "uri"}
PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"}}
PRIMITIVES |= {"float": {"type": "number"}, "Path": URI, "File": URI}
LIST_NAMES = ("List", "list")
# Input() keyword -> its OpenAPI name, for those copied as they are.
RENAMED = {"description": "description", "ge": "minimum", "le": "maximum", "regex": "pattern"}
RENAMED |= {"min_length": "minLength", "max_length": "maxLength"}
# Input() keywords cog reads, and whether a module-level constant may stand for the value.
KEYWORDS = dict.fromkeys(("default", "description", "choices"), True)
KEYWORDS |= dict.fromkeys(("ge", "le", "min_length", "max_length", "regex", "deprecated"), False)


class SchemaError(ValueError):
    """predict.py declares something `cog build` cannot read statically."""


# --- reading predict.py ---------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """A Python literal as cog's Go generator marshals it (floats as shortest numbers)."""
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)  # Go's encoding/json writes 50.0 as 50
    if not isinstance(value, str | int | float | type(None)):
        raise SchemaError(f"{value!r} has no JSON form")
    return value


NOT_LITERAL = object()  # what _eval gives for an expression cog cannot read


def _eval(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return NOT_LITERAL


def module_constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level `NAME = <literal>` assignments: the names cog build can resolve."""
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            found[target.id] = _eval(value)  # a later non-literal assignment hides it
    return {name: value for name, value in found.items() if value is not NOT_LITERAL}


def _literal(node: ast.expr, constants: dict[str, Any], by_name: bool, where: str) -> Any:
    if by_name and isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    value = _eval(node)
    if value is NOT_LITERAL:
        allowed = "a literal or a module-level literal constant" if by_name else "a literal"
        raise SchemaError(
            f"{where} is `{ast.unparse(node)}`: cog build reads predict.py without running it, "
            f"so it must be {allowed}"
        )
    return value


def _name(node: ast.expr) -> str | None:
    """`X` or `module.X` -> "X"."""
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)


def _optional_inner(node: ast.expr) -> ast.expr | None:
    """T for `Optional[T]`, `Union[T, None]`, `T | None`; else None."""
    if isinstance(node, ast.Subscript) and _name(node.value) == "Optional":
        return node.slice
    if isinstance(node, ast.Subscript) and _name(node.value) == "Union":
        members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        members = [node.left, node.right]
    else:
        return None
    rest = [m for m in members if not (isinstance(m, ast.Constant) and m.value is None)]
    return rest[0] if len(members) == 2 and len(rest) == 1 else None


def json_type(node: ast.expr, where: str) -> dict[str, Any]:
    """JSON schema of a non-Optional annotation: a primitive or a list of one."""
    name = _name(node)
    if name in PRIMITIVES:
        return dict(PRIMITIVES[name])
    if isinstance(node, ast.Subscript) and _name(node.value) in LIST_NAMES:
        return {"type": "array", "items": json_type(node.slice, where)}
    raise SchemaError(f"{where}: type `{ast.unparse(node)}` is not supported")


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


def _input_keywords(call: ast.expr, constants: dict, where: str) -> dict[str, Any] | None:
    """The keywords of an `Input(...)` call; None when the default is not an Input call."""
    if not (isinstance(call, ast.Call) and _name(call.func) == "Input"):
        return None
    if call.args:
        raise SchemaError(f"{where}: pass Input() options as keywords")
    found = {}
    for kw in call.keywords:
        if kw.arg not in KEYWORDS:
            raise SchemaError(f"{where}: Input({kw.arg}=...) is not supported by cog build")
        found[kw.arg] = _literal(kw.value, constants, KEYWORDS[kw.arg], f"{where} {kw.arg}")
    return found


# --- building the document ------------------------------------------------------------


def _title(name: str) -> str:
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _input_property(
    name: str, order: int, annotation: ast.expr, options: dict[str, Any], enums: dict
) -> tuple[dict[str, Any], bool]:
    """One Input property, and whether the input is required."""
    inner = _optional_inner(annotation)
    nullable = inner is not None
    schema = json_type(inner if nullable else annotation, f"input '{name}'")
    prop: dict[str, Any] = {"x-order": order}
    if "choices" in options:
        enum_type = schema.get("items", schema)["type"]  # cog: the primitive's JSON type
        enum = {"title": name, "description": "An enumeration.", "type": enum_type}
        enums[name] = {**enum, "enum": _json_value(options["choices"])}
        prop["allOf"] = [{"$ref": REF + name}]
    else:
        prop.update(title=_title(name), **schema)
    has_default = "default" in options and (options["default"] is not None or nullable)
    if has_default:
        prop["default"] = _json_value(options["default"])
    if nullable:
        prop["nullable"] = True
    for key, out in RENAMED.items():
        if key in options:
            prop[out] = _json_value(options[key])
    if options.get("deprecated"):
        prop["deprecated"] = True
    return prop, not has_default and not nullable


def input_schema(method: ast.FunctionDef, constants: dict) -> tuple[dict, dict]:
    """components.schemas.Input and the enum components its choices refer to."""
    args = method.args
    if args.posonlyargs or args.vararg or args.kwarg or args.kwonlyargs:
        raise SchemaError(f"{method.name}(): use plain named parameters only")
    params = args.args[1:] if args.args and args.args[0].arg == "self" else args.args
    defaults = [None] * (len(params) - len(args.defaults)) + list(args.defaults)
    properties, required, enums = {}, [], {}
    for order, (param, default) in enumerate(zip(params, defaults, strict=True)):
        where = f"input '{param.arg}'"
        if param.annotation is None:
            raise SchemaError(f"{where} has no type annotation")
        options = {} if default is None else _input_keywords(default, constants, where)
        if options is None:  # a bare default: `x: int = 3`
            options = {"default": _literal(default, constants, True, f"{where} default")}
        prop, needed = _input_property(param.arg, order, param.annotation, options, enums)
        properties[param.arg] = prop
        if needed:
            required.append(param.arg)
    schema = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def output_schema(method: ast.FunctionDef) -> dict[str, Any]:
    if method.returns is None:
        raise SchemaError(f"{method.name}() has no return type annotation")
    if _optional_inner(method.returns) is not None:
        raise SchemaError("an Optional output is not supported by cog")
    return {**json_type(method.returns, "output"), "title": "Output"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _obj(title: str, properties: dict, **extra: Any) -> dict[str, Any]:
    return {"title": title, "type": "object", "properties": properties, **extra}


def _text(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": title, "type": "string", **extra}


def _op(summary: str, operation_id: str, ok: dict, invalid: bool, **extra: Any) -> dict:
    """One FastAPI-style operation, as cog's generator spells them."""

    def body(schema: dict, description: str) -> dict:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    responses = {"200": body(ok, "Successful Response")}
    if invalid:
        responses["422"] = body(_ref("HTTPValidationError"), "Validation Error")
    return {"summary": summary, "operationId": operation_id, **extra, "responses": responses}


def _paths() -> dict[str, Any]:
    request = {"content": {"application/json": {"schema": _ref("PredictionRequest")}}}
    param = {"required": True, "schema": _text("Prediction Id"), "name": "prediction_id"}
    predict = _op(
        "Predict",
        "predict_predictions_post",
        _ref("PredictionResponse"),
        True,
        description="Run a single prediction on the model",
        requestBody=request,
    )
    cancel = _op(
        "Cancel",
        "cancel_predictions__prediction_id__cancel_post",
        {},
        True,
        parameters=[{**param, "in": "path"}],
    )
    return {
        "/": {"get": _op("Root", "root__get", {}, False)},
        "/health-check": {"get": _op("Healthcheck", "healthcheck_health_check_get", {}, False)},
        "/predictions": {"post": predict},
        "/predictions/{prediction_id}/cancel": {"post": cancel},
    }


def _fixed_components() -> dict[str, Any]:
    when = {"format": "date-time"}
    response = {"input": _ref("Input"), "output": _ref("Output")}
    response |= {"id": _text("Id"), "version": _text("Version")}
    for key in ("created_at", "started_at", "completed_at"):
        response[key] = _text(_title(key), **when)
    response |= {"status": _text("Status"), "error": _text("Error"), "logs": _text("Logs")}
    response |= {"metrics": {"title": "Metrics", "type": "object"}}
    location = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    statuses = ["starting", "processing", "succeeded", "canceled", "failed"]
    detail = {"title": "Detail", "type": "array", "items": _ref("ValidationError")}
    error = {"loc": {"title": "Location", "type": "array", "items": location}}
    error |= {"msg": _text("Message"), "type": _text("Error Type")}
    return {
        "PredictionRequest": _obj("PredictionRequest", {"id": _text("Id"), "input": _ref("Input")}),
        "PredictionResponse": _obj("PredictionResponse", response),
        "Status": _text("Status", description="An enumeration.", enum=statuses),
        "HTTPValidationError": _obj("HTTPValidationError", {"detail": detail}),
        "ValidationError": _obj("ValidationError", error, required=["loc", "msg", "type"]),
    }


def build_schema(predict_path: Path) -> dict[str, Any]:
    """The OpenAPI 3.0.2 document `cog build` writes for this predict.py, and for the
    train.py beside it when there is one (the trainer's part, sdxl.cog.train_schema)."""
    tree = ast.parse(Path(predict_path).read_text(), filename=str(predict_path))
    method = find_method(tree)
    inputs, enums = input_schema(method, module_constants(tree))
    fixed = _fixed_components()
    components = {"Input": inputs, "Output": output_schema(method), **fixed}
    paths = _paths()
    train = Path(predict_path).with_name("train.py")
    if train.exists():
        from sdxl.cog.train_schema import training_parts

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
