"""The trainer's part of `.cog/openapi_schema.json`, as `cog build` merges it in when cog.yaml
has `train:` (cog's pkg/schema generator, GenerateCombined): `TrainingInput` from
train.py's `train()` parameters (read statically, as for predict.py), `TrainingOutput` from
its BaseModel, and the /trainings paths. coglet in train mode validates every training's
input against `TrainingInput`: without it, it validates nothing."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from sdxl.cog import openapi
from sdxl.cog.openapi import SchemaError, op, ref, text


def find_train(tree: ast.Module, name: str = "train") -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise SchemaError(f"no function {name} in train.py")


def output_schema(tree: ast.Module, function: ast.FunctionDef) -> dict[str, Any]:
    """The BaseModel `train()` returns: an object of its annotated fields."""
    returned = openapi.name_of(function.returns) if function.returns is not None else None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == returned:
            properties, required = {}, []
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    where = f"{returned}.{item.target.id}"
                    schema = openapi.json_type(item.annotation, where)
                    properties[item.target.id] = {
                        "title": openapi.title_of(item.target.id),
                        **schema,
                    }
                    if item.value is None:
                        required.append(item.target.id)
            return {
                "title": returned,
                "type": "object",
                "properties": properties,
                "required": required,
            }
    raise SchemaError("train() must return a BaseModel class defined in train.py")


def training_parts(train_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, paths) of the trainer."""
    tree = ast.parse(Path(train_path).read_text(), filename=str(train_path))
    function = find_train(tree)
    inputs, enums = openapi.input_schema(function, openapi.module_constants(tree))
    inputs["title"] = "TrainingInput"
    components = {
        "TrainingInput": inputs,
        "TrainingOutput": output_schema(tree, function),
        "TrainingRequest": openapi.job_request("TrainingRequest", "TrainingInput"),
        "TrainingResponse": openapi.job_response(
            "TrainingResponse", "TrainingInput", "TrainingOutput"
        ),
        **enums,
    }
    return components, _paths()


def _paths() -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": ref("TrainingRequest")}}}
    ok = ref("TrainingResponse")
    param = {"required": True, "schema": text("Training Id"), "name": "training_id"}
    path = [{**param, "in": "path"}]
    return {
        "/trainings": {"post": op("Train", "train_trainings_post", ok, True, requestBody=body)},
        "/trainings/{training_id}": {
            "put": op(
                "Train Idempotent",
                "train_idempotent_trainings__training_id__put",
                ok,
                True,
                parameters=path,
                requestBody=body,
            )
        },
        "/trainings/{training_id}/cancel": {
            "post": op(
                "Cancel Training",
                "cancel_training_trainings__training_id__cancel_post",
                {},
                True,
                parameters=path,
            )
        },
    }
