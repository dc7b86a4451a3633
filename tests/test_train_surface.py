"""train.py's literal Input declarations (what `cog build` reads) equal sdxl's trainer table,
and the trainer's inputs are the reference trainer's: the same 22 names, types and defaults
(read from replicate/cog-sdxl's train.py at c79cb3c, written out here), ours after them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sdxl.train.options import TRAIN_INPUTS

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
# The reference trainer's inputs, in its order: (name, annotation, default).
REFERENCE = [
    ("input_images", "Path", None),
    ("seed", "int", None),
    ("resolution", "int", 768),
    ("train_batch_size", "int", 4),
    ("num_train_epochs", "int", 4000),
    ("max_train_steps", "int", 1000),
    ("is_lora", "bool", True),
    ("unet_learning_rate", "float", 1e-6),
    ("ti_lr", "float", 3e-4),
    ("lora_lr", "float", 1e-4),
    ("lora_rank", "int", 32),
    ("lr_scheduler", "str", "constant"),
    ("lr_warmup_steps", "int", 100),
    ("token_string", "str", "TOK"),
    ("caption_prefix", "str", "a photo of TOK, "),
    ("mask_target_prompts", "str", None),
    ("crop_based_on_salience", "bool", True),
    ("use_face_detection_instead", "bool", False),
    ("clipseg_temperature", "float", 1.0),
    ("verbose", "bool", True),
    ("checkpointing_steps", "int", 999999),
    ("input_images_filetype", "str", "infer"),
]
KINDS = {"Path": "file", "int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def declared() -> dict[str, tuple[str, dict]]:
    tree = ast.parse(TRAIN.read_text())
    (train,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    found = {}
    for arg, call in zip(train.args.args, train.args.defaults, strict=True):
        assert isinstance(call, ast.Call) and call.func.id == "Input", arg.arg
        keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        found[arg.arg] = (ast.unparse(arg.annotation), keywords)
    return found


def test_the_reference_inputs_come_first_with_its_names_types_and_defaults():
    inputs = declared()
    assert list(inputs)[: len(REFERENCE)] == [name for name, _, _ in REFERENCE]
    assert list(inputs)[len(REFERENCE) :] == ["resume_from_checkpoint", "name"]
    for name, annotation, default in REFERENCE:
        written, keywords = inputs[name]
        assert written.removeprefix("Optional[").removesuffix("]") == annotation, name
        assert keywords.get("default") == default, name


@pytest.mark.parametrize("name", list(TRAIN_INPUTS))
def test_each_input_equals_the_table(name):
    annotation, keywords = declared()[name]
    spec = TRAIN_INPUTS[name]
    assert KINDS[annotation.removeprefix("Optional[").removesuffix("]")] == spec.kind
    assert keywords.get("default") == spec.default
    assert keywords.get("ge") == spec.ge and keywords.get("le") == spec.le
    assert tuple(keywords["choices"]) == spec.choices if spec.choices else "choices" not in keywords
    assert keywords.get("max_length") == spec.max_length
    assert ("Optional[" in annotation) == (spec.default is None and name != "input_images")
