"""predict.py's literal Input declarations (what `cog build` reads) equal sdxl's tables."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import pytest
from support.helpers import REFERENCE_SCHEDULERS

from sdxl.builders.tiny import SDXL_SCHEDULER_CONFIG
from sdxl.config import COG_INPUTS, SCHEDULERS
from sdxl.generate.schedulers import make_scheduler

PREDICT = Path(__file__).resolve().parent.parent / "predict.py"


def _module_literals(tree: ast.Module) -> dict:
    """Module-level NAME = <literal> assignments, as cog build resolves them."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                with contextlib.suppress(ValueError):  # not a literal: not usable by cog
                    found[target.id] = ast.literal_eval(node.value)
    return found


def _declared_inputs() -> dict[str, tuple[str, dict]]:
    tree = ast.parse(PREDICT.read_text())
    literals = _module_literals(tree)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Predictor"]
    (run,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    args = run.args.args[1:]  # skip self
    defaults = run.args.defaults
    assert len(args) == len(defaults), "every input must be declared with Input(...)"
    inputs = {}
    for arg, call in zip(args, defaults, strict=True):
        assert isinstance(call, ast.Call) and call.func.id == "Input", arg.arg
        keywords = {}
        for kw in call.keywords:
            if isinstance(kw.value, ast.Name):
                keywords[kw.arg] = literals[kw.value.id]  # must be a module-level literal
            else:
                keywords[kw.arg] = ast.literal_eval(kw.value)  # raises if not a literal
        inputs[arg.arg] = (ast.unparse(arg.annotation), keywords)
    return inputs


def test_inputs_in_table_order():
    assert list(_declared_inputs()) == list(COG_INPUTS)


@pytest.mark.parametrize("name", list(COG_INPUTS))
def test_each_input_equals_table(name):
    annotation, keywords = _declared_inputs()[name]
    spec = COG_INPUTS[name]
    assert keywords.get("default") == spec.default
    assert keywords.get("ge") == spec.ge
    assert keywords.get("le") == spec.le
    choices = keywords.get("choices")
    assert (tuple(choices) if choices is not None else None) == spec.choices
    assert keywords.get("description"), f"{name} has no description"
    if spec.default is None:
        assert annotation.startswith("Optional["), f"{name} defaults to None: use Optional"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_choice_builds_diffusers_own_class(name):
    """Against an independent statement of what each name means (tests/support/helpers)."""
    class_name, options = REFERENCE_SCHEDULERS[name]
    scheduler = make_scheduler(name, SDXL_SCHEDULER_CONFIG)
    assert type(scheduler).__name__ == class_name
    for option, value in options.items():
        assert scheduler.config[option] == value


def test_reference_inputs_are_all_declared():
    """Every input of Replicate's stability-ai/sdxl, with its default (shared/reference)."""
    reference = {
        "prompt": "An astronaut riding a rainbow unicorn",
        "negative_prompt": "",
        "image": None,
        "mask": None,
        "width": 1024,
        "height": 1024,
        "num_outputs": 1,
        "scheduler": "K_EULER",
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "prompt_strength": 0.8,
        "seed": None,
        "refine": "no_refiner",
        "high_noise_frac": 0.8,
        "refine_steps": None,
        "apply_watermark": True,
        "lora_scale": 0.6,
        "replicate_weights": None,
        "disable_safety_checker": False,
    }
    declared = _declared_inputs()
    for name, default in reference.items():
        assert declared[name][1].get("default") == default, name
    # bounds at least as wide as the reference's
    for name, (lo, hi) in {
        "num_outputs": (1, 4),
        "num_inference_steps": (1, 500),
        "guidance_scale": (1, 50),
        "prompt_strength": (0, 1),
        "high_noise_frac": (0, 1),
        "lora_scale": (0, 1),
    }.items():
        kw = declared[name][1]
        assert kw["ge"] <= lo and kw["le"] >= hi, name
