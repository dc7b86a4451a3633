"""The REST API's pure pieces: parameter mapping, tables, seed_image, keys, errors."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sdxl.builders.tiny import SDXL_SCHEDULER_CONFIG
from sdxl.config import SCHEDULERS as ENGINE_SCHEDULERS
from sdxl.config import STYLES
from sdxl.engine.prepare import with_images
from sdxl.errors import InputError
from sdxl.generate.schedulers import plan_steps
from sdxl.http.auth import ApiKeys, Caller, KeyEntry, load_api_keys, presented_key
from sdxl.http.datacrunch.fields import DATACRUNCH, OUTPUT_FORMATS, OUTPUT_QUALITY, SCHEDULERS
from sdxl.http.server_settings import Settings
from sdxl.images.outputs import encode_image
from sdxl.inputs.model_rules import check_request
from sdxl.inputs.presets import apply_presets
from sdxl.inputs.request import Request
from sdxl.inputs.rules import check_fields
from sdxl.inputs.surface import InvalidInputs
from sdxl.settings import Caps, FetchSettings, SettingsError

# The scheduler names the DataCrunch document lists, spelled as it spells them.
DOCUMENTED_SCHEDULERS = {
    "DDIM",
    "K_EULER",
    "EulerA",
    "DPMSolverMultistep",
    "KarrasDPM",
    "PNDM",
    "HeunDiscrete",
}


def to_engine_request(body: dict) -> Request:
    return check_fields(body, DATACRUNCH, Caps()).request()


def body(**fields) -> dict:
    return {"prompt": "A cat with a hat", **fields}


def png_bytes(width=32, height=24, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


# ---- parameter mapping ----


def test_defaults_are_datacrunchs():
    req = to_engine_request(body())
    assert (req.width, req.height) == (1024, 1024)
    assert req.num_inference_steps == 50
    assert req.guidance_scale == 4.0
    assert req.num_outputs == 1
    assert req.seed == 42
    assert req.scheduler == "DDIM"
    assert req.timestep_spacing == "linspace"
    assert req.guidance_scale_refiner == 1.0
    assert req.refine == "no_refiner"
    assert req.negative_prompt == ""
    assert req.image is None
    assert req.disable_safety_checker is False


def test_every_documented_field_is_in_the_schema():
    documented = (
        "prompt height width num_inference_steps guidance_scale num_images_per_prompt seed "
        "negative_prompt seed_image strength scheduler timestep_spacing guidance_scale_refiner "
        "refiner num_inference_steps_refiner style_selected is_ensemble refiner_ratio "
        "aspect_ratio lora_id lora_name safety_filter"
    ).split()
    # ours: the format out, DeepCache, A1111's prompt language, LoRA stacks, the hires fix,
    # ControlNet and IP-Adapter (the Replicate inputs)
    extensions = {"output_format", "cache_interval", "prompt_syntax", "loras"}
    extensions |= {"hires_scale", "hires_upscaler", "hires_steps", "hires_strength"}
    extensions |= {"canny_low_threshold", "canny_high_threshold", "return_control_maps"}
    for n in (1, 2, 3):
        unit = f"controlnet_{n}"
        extensions |= {unit, *(f"{unit}_{s}" for s in ("image", "preprocessor", "start", "end"))}
        extensions.add(f"{unit}_conditioning_scale")
    extensions |= {f"ip_adapter_{s}" for s in ("image", "model", "scale", "block_scales")}
    assert set(DATACRUNCH.by_name) == {*documented, *extensions}


def test_names_map_to_the_engine():
    req = to_engine_request(
        body(
            num_images_per_prompt=3,
            strength=0.55,
            negative_prompt="blurry",
            num_inference_steps=12,
            guidance_scale=6.5,
            seed=7,
            safety_filter=False,
        )
    )
    assert req.num_outputs == 3
    assert req.prompt_strength == 0.55
    assert req.negative_prompt == "blurry"
    assert (req.num_inference_steps, req.guidance_scale, req.seed) == (12, 6.5, 7)
    assert req.disable_safety_checker is True


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.35])
def test_ensemble_maps_refiner_ratio_to_the_bases_share(ratio):
    req = to_engine_request(body(is_ensemble=True, refiner_ratio=ratio))
    assert req.refine == "expert_ensemble_refiner"
    assert req.high_noise_frac == pytest.approx(1 - ratio)


def test_refiner_runs_num_inference_steps_refiner_steps():
    req = to_engine_request(
        body(refiner=True, num_inference_steps_refiner=10, guidance_scale_refiner=4)
    )
    assert req.refine == "base_image_refiner"
    assert req.refine_steps == 10
    assert req.guidance_scale_refiner == 4


def test_ensemble_and_refiner_together_is_an_error_naming_both():
    with pytest.raises(InvalidInputs) as info:
        to_engine_request(body(is_ensemble=True, refiner=True))
    (problem,) = info.value.problems
    assert problem.field == "is_ensemble"
    assert "is_ensemble=true" in problem.message and "refiner=true" in problem.message


def test_scheduler_aliases_cover_the_document_and_the_engine():
    assert set(SCHEDULERS) == DOCUMENTED_SCHEDULERS | {"LCM", "TCD"}  # ours: few-step LoRAs
    assert set(SCHEDULERS.values()) == set(ENGINE_SCHEDULERS)
    assert to_engine_request(body(scheduler="EulerA")).scheduler == "K_EULER_ANCESTRAL"


@pytest.mark.parametrize(("field", "value"), [("lora_id", "abc"), ("lora_name", "offset")])
def test_lora_goes_to_the_engine(field, value):
    request = to_engine_request(body(**{field: value}))
    assert getattr(request, field) == value


def test_unknown_lora_is_a_named_error():
    with pytest.raises(InputError, match="lora_name='no-such-lora' is not available"):
        check_request(to_engine_request(body(lora_name="no-such-lora")))


def test_style_goes_to_the_engine():
    style = sorted(STYLES)[0]
    assert to_engine_request(body(style_selected=style)).style_selected == style
    assert to_engine_request(body()).style_selected is None


def test_unknown_style_lists_the_styles():
    (item,) = errors_of(prompt="x", style_selected="no-such-style")
    assert item["field"] == "style_selected"
    assert "style_selected='no-such-style' is not supported" in item["msg"]
    assert sorted(STYLES)[0] in item["msg"]


# ---- aspect ratios ----


def test_aspect_ratio_sets_the_size():
    req = apply_presets(to_engine_request(body(aspect_ratio="16:9")))
    assert (req.width, req.height) == (1344, 768)
    assert req.aspect_ratio == "16:9"
    req = apply_presets(to_engine_request(body(aspect_ratio="9:21", width=640, height=1536)))
    assert (req.width, req.height) == (640, 1536)


def test_aspect_ratio_with_a_different_size_is_an_error():
    with pytest.raises(InvalidInputs) as info:
        to_engine_request(body(aspect_ratio="16:9", height=1024))
    (problem,) = info.value.problems
    assert problem.field == "height"
    assert "16:9" in problem.message and "height=1024" in problem.message


# ---- schema errors ----


def errors_of(**fields) -> list[dict]:
    with pytest.raises(InvalidInputs) as info:
        check_fields(fields, DATACRUNCH, Caps())
    return [{"field": p.field, "msg": p.message} for p in info.value.problems]


def test_unknown_field_suggests_the_right_spelling():
    (item,) = errors_of(prompt="x", num_inference_step=4)
    assert item["field"] == "num_inference_step"
    assert "did you mean 'num_inference_steps'" in item["msg"]


def test_range_error_names_value_and_range():
    (item,) = errors_of(prompt="x", strength=2.0)
    assert item["msg"] == "strength=2.0 is out of range; use 0.05..1"
    (item,) = errors_of(prompt="x", refiner_ratio=1.5)
    assert item["msg"] == "refiner_ratio=1.5 is out of range; use 0..1"


def test_the_ensemble_split_is_checked_only_for_the_ensemble():
    check_request(to_engine_request(body(refiner_ratio=1.0)))  # not an ensemble: not used
    with pytest.raises(InputError) as info:
        check_request(to_engine_request(body(is_ensemble=True, refiner_ratio=1.0)))
    problem = DATACRUNCH.problem(info.value)
    assert problem.field == "refiner_ratio"
    assert problem.message.startswith("refiner_ratio=1.0 leaves one expert nothing to do")


def test_no_coercion_of_strings():
    (item,) = errors_of(prompt="x", seed="42")
    assert item["field"] == "seed" and "must be an integer" in item["msg"]
    (item,) = errors_of(prompt="x", refiner="true")
    assert "true or false" in item["msg"]


def test_missing_prompt():
    (item,) = errors_of()
    assert item["msg"].startswith("prompt is required")


def test_every_problem_is_listed():
    items = errors_of(prompt=3, width="wide", seed=-1)
    assert [item["field"] for item in items] == ["prompt", "width", "seed"]


# ---- engine messages ----


def test_engine_messages_use_rest_names_and_values():
    with pytest.raises(InputError) as info:
        plan_steps(
            "DDIM",
            SDXL_SCHEDULER_CONFIG,
            SDXL_SCHEDULER_CONFIG,
            steps=2,
            spacing=None,
            strength=None,
            refine="expert_ensemble_refiner",
            high_noise_frac=0.9999,
            refine_steps=None,
            refine_strength=0.3,
        )
    assert "high_noise_frac=0.9999" in str(info.value)  # the engine's own names
    item = DATACRUNCH.problem(info.value)
    assert "refiner_ratio=0.0001 " in item.message  # the base's share turned into the refiner's
    assert "strength must also exceed" in item.message
    assert "high_noise_frac" not in item.message and "prompt_strength" not in item.message
    assert item.field == "num_inference_steps"


def test_caps_name_the_rest_field_and_the_setting():
    with pytest.raises(InvalidInputs) as info:
        check_fields(body(num_images_per_prompt=3), DATACRUNCH, Caps(max_outputs=2))
    (problem,) = info.value.problems
    assert problem.field == "num_images_per_prompt"
    assert problem.message == (
        "num_images_per_prompt=3 is over this server's limit of 2 (SDXL_MAX_OUTPUTS); lower it"
    )


def test_engine_image_message_names_seed_image():
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + png_bytes()[8:60]).decode()
    request = to_engine_request(body(seed_image=image))
    with pytest.raises(InputError) as info:
        with_images(request, FetchSettings())
    item = DATACRUNCH.problem(info.value)
    assert item.message.startswith("seed_image is not a readable image")
    assert item.field == "seed_image"


# ---- seed_image ----


def seed_image_bytes(text: str) -> bytes:
    return check_fields(body(seed_image=text), DATACRUNCH, Caps()).values["image"].data


def seed_image_problem(text: str):
    with pytest.raises(InvalidInputs) as info:
        check_fields(body(seed_image=text), DATACRUNCH, Caps())
    (problem,) = info.value.problems
    return problem


def test_raw_base64_decodes():
    raw = png_bytes()
    assert seed_image_bytes(base64.b64encode(raw).decode()) == raw


def test_data_uri_decodes():
    raw = png_bytes(fmt="JPEG")
    uri = "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    assert seed_image_bytes(uri) == raw


def test_wrapped_lines_and_missing_padding_are_accepted():
    raw = png_bytes(33, 17)
    text = base64.b64encode(raw).decode().rstrip("=")
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert seed_image_bytes(wrapped) == raw


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "is empty"),
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(b"hello, plain text").decode(), "not a readable image"),
        ("https://example.com/cat.png", "https: URLs are not accepted"),
        ("data:image/png," + base64.b64encode(b"x").decode(), "not base64"),
        ("data:text/plain;base64,aGVsbG8=", "of type 'text/plain'"),
    ],
)
def test_bad_seed_images_name_the_field(text, words):
    problem = seed_image_problem(text)
    assert problem.field == "seed_image"
    assert problem.message.startswith("seed_image")
    assert words in problem.message


def test_other_image_formats_are_refused():
    problem = seed_image_problem(base64.b64encode(png_bytes(fmt="GIF")).decode())
    assert "is a GIF image" in problem.message


def test_seed_image_decodes_in_memory_with_exif_applied(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    Image.new("RGB", (40, 24), (10, 20, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    request = to_engine_request(body(seed_image=base64.b64encode(buffer.getvalue()).decode()))
    image = with_images(request, FetchSettings()).image
    assert image.size == (24, 40) and image.mode == "RGB"
    assert list(tmp_path.iterdir()) == []  # nothing written to disk


# ---- encoding ----


@pytest.mark.parametrize(("name", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_image_formats(name, pil):
    image = Image.new("RGB", (40, 24), (10, 200, 30))
    decoded = Image.open(io.BytesIO(encode_image(image, OUTPUT_FORMATS[name], OUTPUT_QUALITY)))
    assert decoded.format == pil
    assert decoded.size == (40, 24)


# ---- keys and settings ----


def test_keys_from_env_and_file(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# staff\nfile-key-1\n\n  ops:file-key-2 , env-key \n")
    env = {"SDXL_API_KEYS": " env-key, other ,", "SDXL_API_KEYS_FILE": str(keyfile)}
    keys = load_api_keys({**env, "SDXL_ADMIN_KEY": "root-key"})
    assert keys == [
        KeyEntry("env-key"),
        KeyEntry("other"),
        KeyEntry("file-key-1"),
        KeyEntry("file-key-2", "ops"),
        KeyEntry("root-key", "admin", admin=True),
    ]
    assert load_api_keys({}) == []


def test_unreadable_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="SDXL_API_KEYS_FILE"):
        load_api_keys({"SDXL_API_KEYS_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ("good,bad\tsecret-value", "number 2"),
        ("good,:secret-value", "number 2"),  # a name without letters
        ("key-abc:secret-value", "not starting with 'key-'"),  # an unnamed key's name
        ("anonymous:secret-value", "not starting with"),
        ("a b:secret-value", "number 1"),
        ("alice:", "number 1"),
    ],
)
def test_bad_key_is_reported_without_its_value(keys, words):
    with pytest.raises(SettingsError) as info:
        load_api_keys({"SDXL_API_KEYS": keys})
    assert words in str(info.value)
    assert "secret" not in str(info.value)


def test_the_admin_key_cannot_also_be_an_ordinary_key():
    with pytest.raises(SettingsError, match="SDXL_ADMIN_KEY"):
        load_api_keys({"SDXL_API_KEYS": "shared-key", "SDXL_ADMIN_KEY": "shared-key"})


def test_keys_name_their_tenants():
    entries = [KeyEntry("alpha"), KeyEntry("new", "alice"), KeyEntry("old", "alice")]
    keys = ApiKeys([*entries, KeyEntry("root", "admin", admin=True)], salt=b"salt-1")
    assert keys.identify(b"new") == keys.identify(b"old") == Caller("alice")  # a rotation
    assert keys.identify(b"root") == Caller("admin", admin=True)
    unnamed = keys.identify(b"alpha").tenant
    assert unnamed.startswith("key-") and "alpha" not in unnamed
    assert ApiKeys(entries, salt=b"salt-2").identify(b"alpha").tenant != unnamed  # keyed
    for wrong in (b"alph", b"alphaa", b"", b"ALPHA"):
        assert keys.identify(wrong) is None
    assert "alpha" not in repr(keys) and keys.tenants == sorted(["admin", "alice", unnamed])


BASIC = b"Basic " + base64.b64encode(b"anyone:the-key")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", b"abc"),
        (b"bearer  abc ", b"abc"),
        (BASIC, b"the-key"),  # AUTOMATIC1111's --api-auth: the key is the password
        (b"Basic " + base64.b64encode(b"no-password:"), None),
        (b"Basic abc", None),  # not base64 of user:password
        (b"Basic ", None),  # what Open WebUI sends without credentials
        (b"", None),
        (b"Digest abc", None),
        (None, None),
    ],
)
def test_presented_key(header, token):
    assert presented_key(header)[0] == token


def test_settings_from_env():
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"SDXL_QUEUE_SIZE": "0", "SDXL_MAX_BODY_BYTES": "4096"}) == Settings(
        max_body_bytes=4096, queue_size=0
    )
    with pytest.raises(SettingsError, match="SDXL_QUEUE_SIZE='many'"):
        Settings.from_env({"SDXL_QUEUE_SIZE": "many"})
