"""What predict.py's and train.py's parts of cog's OpenAPI document share: the inputs, read
statically from a function's parameters as cog's Go generator (pkg/schema) reads them, and the
FastAPI-style objects both parts are made of (`sdxl.cog.schema` writes the document,
`sdxl.cog.train_schema` adds the trainer's part).

A function's inputs are its parameters in order (`x-order`); `Input()` keywords must be
literals, or for default, description and choices a module-level literal constant;
`Optional[T]` is `nullable` and not required; `choices` is an `allOf` reference to an enum
component named after the input. Anything cog could not read is a SchemaError.
"""

from __future__ import annotations

import ast
from typing import Any

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
    """predict.py or train.py declares something `cog build` cannot read statically."""


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


def name_of(node: ast.expr) -> str | None:
    """`X` or `module.X` -> "X"."""
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)


def optional_inner(node: ast.expr) -> ast.expr | None:
    """T for `Optional[T]`, `Union[T, None]`, `T | None`; else None."""
    if isinstance(node, ast.Subscript) and name_of(node.value) == "Optional":
        return node.slice
    if isinstance(node, ast.Subscript) and name_of(node.value) == "Union":
        members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        members = [node.left, node.right]
    else:
        return None
    rest = [m for m in members if not (isinstance(m, ast.Constant) and m.value is None)]
    return rest[0] if len(members) == 2 and len(rest) == 1 else None


def json_type(node: ast.expr, where: str) -> dict[str, Any]:
    """JSON schema of a non-Optional annotation: a primitive or a list of one."""
    name = name_of(node)
    if name in PRIMITIVES:
        return dict(PRIMITIVES[name])
    if isinstance(node, ast.Subscript) and name_of(node.value) in LIST_NAMES:
        return {"type": "array", "items": json_type(node.slice, where)}
    raise SchemaError(f"{where}: type `{ast.unparse(node)}` is not supported")


def _input_keywords(call: ast.expr, constants: dict, where: str) -> dict[str, Any] | None:
    """The keywords of an `Input(...)` call; None when the default is not an Input call."""
    if not (isinstance(call, ast.Call) and name_of(call.func) == "Input"):
        return None
    if call.args:
        raise SchemaError(f"{where}: pass Input() options as keywords")
    found = {}
    for kw in call.keywords:
        if kw.arg not in KEYWORDS:
            raise SchemaError(f"{where}: Input({kw.arg}=...) is not supported by cog build")
        found[kw.arg] = _literal(kw.value, constants, KEYWORDS[kw.arg], f"{where} {kw.arg}")
    return found


def title_of(name: str) -> str:
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _input_property(
    name: str, order: int, annotation: ast.expr, options: dict[str, Any], enums: dict
) -> tuple[dict[str, Any], bool]:
    """One Input property, and whether the input is required."""
    inner = optional_inner(annotation)
    nullable = inner is not None
    schema = json_type(inner if nullable else annotation, f"input '{name}'")
    prop: dict[str, Any] = {"x-order": order}
    if "choices" in options:
        enum_type = schema.get("items", schema)["type"]  # cog: the primitive's JSON type
        enum = {"title": name, "description": "An enumeration.", "type": enum_type}
        enums[name] = {**enum, "enum": _json_value(options["choices"])}
        prop["allOf"] = [{"$ref": REF + name}]
    else:
        prop.update(title=title_of(name), **schema)
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


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def obj(title: str, properties: dict, **extra: Any) -> dict[str, Any]:
    return {"title": title, "type": "object", "properties": properties, **extra}


def text(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": title, "type": "string", **extra}


def op(summary: str, operation_id: str, ok: dict, invalid: bool, **extra: Any) -> dict:
    """One FastAPI-style operation, as cog's generator spells them."""

    def body(schema: dict, description: str) -> dict:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    responses = {"200": body(ok, "Successful Response")}
    if invalid:
        responses["422"] = body(ref("HTTPValidationError"), "Validation Error")
    return {"summary": summary, "operationId": operation_id, **extra, "responses": responses}


def job_request(title: str, inputs: str) -> dict[str, Any]:
    """The body that starts a prediction or a training: its id and its input."""
    return obj(title, {"id": text("Id"), "input": ref(inputs)})


def job_response(title: str, inputs: str, output: str) -> dict[str, Any]:
    """A prediction or a training as the API answers it."""
    response = {"input": ref(inputs), "output": ref(output)}
    response |= {"id": text("Id"), "version": text("Version")}
    for key in ("created_at", "started_at", "completed_at"):
        response[key] = text(title_of(key), format="date-time")
    response |= {"status": text("Status"), "error": text("Error"), "logs": text("Logs")}
    response |= {"metrics": {"title": "Metrics", "type": "object"}}
    return obj(title, response)
