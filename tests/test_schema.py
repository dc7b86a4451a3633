"""sdxl.cog.schema: the `.cog/openapi_schema.json` coglet validates requests against."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sdxl.cog.schema import SchemaError, build_schema, main, render, write_schema
from sdxl.config import COG_INPUTS

REPO = Path(__file__).resolve().parent.parent
PREDICT = REPO / "predict.py"
GOLDEN = REPO / ".cog" / "openapi_schema.json"
REGENERATE = "the golden schema is stale: run `python -m sdxl schema` and commit .cog/"


@pytest.fixture(scope="module")
def schema() -> dict:
    return build_schema(PREDICT)


@pytest.fixture(scope="module")
def inputs(schema) -> dict:
    return schema["components"]["schemas"]["Input"]


def synthetic(tmp_path: Path, params: str, head: str = "", ret: str = "Path") -> Path:
    """A predict.py with these run() parameters, written to tmp_path."""
    source = textwrap.dedent(
        """\
        from typing import List, Optional
        from cog import BaseRunner, Input, Path
        {head}

        class Predictor(BaseRunner):
            def run(self, {params}) -> {ret}:
                return Path("out.png")
        """
    ).format(head=head, params=params, ret=ret)
    path = tmp_path / "predict.py"
    path.write_text(source)
    return path


# --- the golden file ------------------------------------------------------------------


def test_golden_file_is_current(schema):
    assert GOLDEN.exists(), REGENERATE
    assert json.loads(GOLDEN.read_text()) == schema, REGENERATE
    assert GOLDEN.read_text() == render(schema), REGENERATE  # sorted keys, trailing newline


def test_check_passes_on_the_committed_file(capsys):
    assert main(["--predict", str(PREDICT), "--check"]) == 0


def test_document_shape(schema):
    assert schema["openapi"] == "3.0.2"
    assert schema["info"]["title"] == "Cog"
    assert set(schema["paths"]) == {
        "/",
        "/health-check",
        "/predictions",
        "/predictions/{prediction_id}/cancel",
        # train.py beside predict.py: cog build merges the trainer's in
        "/trainings",
        "/trainings/{training_id}",
        "/trainings/{training_id}/cancel",
    }
    post = schema["paths"]["/predictions"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictionRequest"
    }
    assert set(post["responses"]) == {"200", "422"}
    components = schema["components"]["schemas"]
    fixed = {"Input", "Output", "PredictionRequest", "PredictionResponse", "Status"}
    assert fixed | {"HTTPValidationError", "ValidationError"} <= set(components)
    assert components["Output"] == {
        "title": "Output",
        "type": "array",
        "items": {"type": "string", "format": "uri"},
    }
    assert components["Input"]["title"] == "Input"
    assert components["Input"]["type"] == "object"


# --- every input, against the table sdxl.config.COG_INPUTS ----------------------------


def test_inputs_are_the_table_in_order(inputs):
    props = inputs["properties"]
    assert set(props) == set(COG_INPUTS)
    by_order = sorted(props, key=lambda name: props[name]["x-order"])
    assert by_order == list(COG_INPUTS)
    assert [props[name]["x-order"] for name in by_order] == list(range(len(COG_INPUTS)))


@pytest.mark.parametrize("name", list(COG_INPUTS))
def test_input_matches_table(schema, inputs, name):
    spec = COG_INPUTS[name]
    prop = inputs["properties"][name]
    assert prop["default"] == spec.default
    assert prop.get("minimum") == spec.ge
    assert prop.get("maximum") == spec.le
    assert prop.get("description"), f"{name} has no description"
    if spec.choices is None:
        assert "allOf" not in prop
        assert prop["title"] == name.replace("_", " ").title()
        assert prop["type"] in {"string", "integer", "number", "boolean"}
    else:
        assert prop["allOf"] == [{"$ref": f"#/components/schemas/{name}"}]
        enum = schema["components"]["schemas"][name]
        assert enum == {
            "title": name,
            "type": "string",
            "enum": list(spec.choices),
            "description": "An enumeration.",
        }
    assert name not in inputs.get("required", [])  # every input has a default


@pytest.mark.parametrize("name", [n for n, s in COG_INPUTS.items() if s.default is None])
def test_optional_inputs_are_nullable(inputs, name):
    prop = inputs["properties"][name]
    assert prop["nullable"] is True
    assert prop["default"] is None


def test_types(inputs):
    props = inputs["properties"]
    assert (props["image"]["type"], props["image"]["format"]) == ("string", "uri")
    assert props["guidance_scale"]["type"] == "number"
    assert props["num_outputs"]["type"] == "integer"
    assert props["apply_watermark"]["type"] == "boolean"
    assert "nullable" not in props["width"]


# --- synthetic predict.py files ------------------------------------------------------


def test_required_nullable_and_defaults(tmp_path):
    params = (
        "prompt: str, "
        "seed: int = Input(default=None), "
        "steps: Optional[int] = Input(default=None, ge=1), "
        "strength: float = Input(default=1.0, le=2.5), "
        "n: int = 3"
    )
    schema = build_schema(synthetic(tmp_path, params))
    inputs = schema["components"]["schemas"]["Input"]
    props = inputs["properties"]
    # No default, or None on a non-Optional type (cog: no real default): required.
    assert inputs["required"] == ["prompt", "seed"]
    assert "default" not in props["seed"] and "nullable" not in props["seed"]
    assert props["steps"] == {
        "title": "Steps",
        "type": "integer",
        "x-order": 2,
        "default": None,
        "nullable": True,
        "minimum": 1,
    }
    assert json.dumps(props["strength"]["default"]) == "1"  # as Go writes float64(1)
    assert props["strength"]["maximum"] == 2.5
    assert props["n"]["default"] == 3
    assert [prop["x-order"] for prop in props.values()] == list(range(5))
    assert list(props) == ["prompt", "seed", "steps", "strength", "n"]


def test_choices_from_a_module_constant(tmp_path):
    head = 'COLORS = ("red", "green")\nDEFAULT = "red"'
    params = (
        "color: str = Input(default=DEFAULT, choices=COLORS), size: int = Input(choices=[1, 2])"
    )
    schema = build_schema(synthetic(tmp_path, params, head))["components"]["schemas"]
    assert schema["color"]["enum"] == ["red", "green"]
    assert schema["Input"]["properties"]["color"]["default"] == "red"
    assert schema["size"]["type"] == "integer"
    assert schema["Input"]["required"] == ["size"]


@pytest.mark.parametrize(
    ("head", "params", "message"),
    [
        ("", "s: str = Input(choices=sorted(['b', 'a']))", "input 's' choices is `sorted"),
        ("C = list(range(3))", "s: int = Input(choices=C)", "input 's' choices is `C`"),
        ("import os", "s: str = Input(default=os.getenv('S'))", "input 's' default is"),
        ("", "s: str = Input(description=f'{1}')", "input 's' description"),
        ("MIN = 1", "s: int = Input(ge=MIN)", "ge is `MIN`: .* must be a literal$"),
        ("", "s: str = Input(default_factory=list)", "default_factory"),
        ("", "s: dict = Input()", "type `dict` is not supported"),
        ("", "s = Input(default=1)", "has no type annotation"),
    ],
)
def test_unresolvable_declarations_are_rejected(tmp_path, head, params, message):
    with pytest.raises(SchemaError, match=message):
        build_schema(synthetic(tmp_path, params, head))


def test_predict_method_and_list_output(tmp_path):
    path = synthetic(tmp_path, "x: Path", ret="List[Path]")
    path.write_text(path.read_text().replace("def run(", "def predict("))
    schema = build_schema(path)["components"]["schemas"]
    assert schema["Input"]["properties"]["x"]["format"] == "uri"
    assert schema["Output"]["items"] == {"type": "string", "format": "uri"}


def test_optional_output_is_rejected(tmp_path):
    with pytest.raises(SchemaError, match="Optional output"):
        build_schema(synthetic(tmp_path, "x: int", ret="Optional[Path]"))


# --- the command ----------------------------------------------------------------------


def test_main_writes_then_checks(tmp_path, capsys):
    predict = synthetic(tmp_path, "x: int = Input(default=1)")
    out = tmp_path / ".cog" / "openapi_schema.json"
    assert main(["--predict", str(predict), "--check"]) == 1  # missing file
    assert main(["--predict", str(predict)]) == 0
    assert json.loads(out.read_text()) == build_schema(predict)
    assert main(["--predict", str(predict), "--check"]) == 0
    predict.write_text(predict.read_text().replace("default=1", "default=2"))
    capsys.readouterr()
    assert main(["--predict", str(predict), "--check"]) == 1
    captured = capsys.readouterr()
    assert "python -m sdxl schema" in captured.err
    assert '"default": 2' in captured.out  # the diff


def test_main_reports_errors(tmp_path, capsys):
    predict = synthetic(tmp_path, "x: int = Input(choices=make())")
    assert main(["--predict", str(predict)]) == 2
    assert "choices is `make()`" in capsys.readouterr().err


def test_write_schema(tmp_path):
    out = write_schema(PREDICT, tmp_path / "x" / "schema.json")
    assert out.read_text() == GOLDEN.read_text()


def test_the_trainers_part_is_what_coglet_validates_trainings_with(schema):
    components = schema["components"]["schemas"]
    inputs = components["TrainingInput"]
    assert inputs["required"] == ["input_images"]
    assert inputs["properties"]["input_images"]["format"] == "uri"
    assert inputs["properties"]["lora_rank"]["minimum"] == 1
    assert inputs["properties"]["lr_scheduler"] == {
        "allOf": [{"$ref": "#/components/schemas/lr_scheduler"}],
        "default": "constant",
        "description": "Learning rate scheduler to use for training",
        "x-order": 11,
    }
    assert components["TrainingOutput"]["properties"]["weights"]["format"] == "uri"
