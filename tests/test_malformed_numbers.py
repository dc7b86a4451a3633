"""Every numeric input of every API (Cog's server, and each API of `python -m sdxl api`) given
what is not a number: control characters, unicode digits, "", "NaN", "Infinity", values that
overflow to infinity, other spellings. Each is that API's own 4xx naming the field, never a 500
(a control character before a seed once was a 500 on the Replicate API). Where an API takes
numbers as strings (Replicate's, AUTOMATIC1111's, OpenAI's multipart edits) these strings are
what the number grammar refuses; where it does not (Cog's, DataCrunch's, OpenAI's JSON), they
are the wrong type. A deterministic matrix on real servers; tests/test_fuzz.py throws random
ones."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from support.api_server import GUIDE_VERSION, KEYS
from support.bad_inputs import encoded, photo, resolve
from support.cog_server import start_server

from sdxl.config import COG_SCHEMA_FILE
from sdxl.train.options import TRAIN_INPUTS

pytestmark = pytest.mark.http

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
OVERFLOW = "__overflow__"  # replaced by the JSON number 1e999, which parses to infinity
MALFORMED = [
    "\u001f0",
    "0\u0000",
    "٣",
    "１２",
    "",
    " ",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "1_0",
    "0x1A",
    "\u00a05",
    "5 5",
    "1" * 5000,
    OVERFLOW,
]


@pytest.fixture(scope="module")
def server(plain_api):
    return plain_api


@pytest.fixture(scope="module")
def schema(server) -> dict:
    return requests.get(server.base + "/openapi.json", timeout=10).json()


NUMERIC = ("integer", "number")


def numeric_fields(properties: dict, schema: dict) -> list[str]:
    found = [n for n, p in properties.items() if resolve(p, schema).get("type") in NUMERIC]
    assert found, "no numeric field in the schema"
    return found


def body_text(body: dict) -> str:
    return json.dumps(body).replace(f'"{OVERFLOW}"', "1e999")


def check(response: requests.Response, field: str, value: str, shape: str) -> None:
    case = f"{field}={value[:20]!r}"
    assert response.status_code in (400, 422), f"{case}: {response.status_code} {response.text}"
    body = response.json()
    if shape == "openai":
        assert response.status_code == 400 and set(body) == {"error"}, case
        assert body["error"]["param"] == field, f"{case}: {body}"
    elif shape == "a1111":
        assert set(body) == {"error", "detail", "body", "errors"}, case
    assert field in json.dumps(body), f"{case}: {body}"


def run_matrix(session, url: str, base: dict, fields: list[str], shape: str) -> int:
    count = 0
    for field in fields:
        for value in MALFORMED:
            response = session.post(
                url,
                data=body_text({**base, field: value}),
                headers={**AUTH, "Content-Type": "application/json"},
                timeout=60,
            )
            check(response, field, value, shape)
            count += 1
    return count


def test_replicate_api(server):
    cog = json.loads(COG_SCHEMA_FILE.read_text())
    fields = numeric_fields(cog["components"]["schemas"]["Input"]["properties"], cog)
    with requests.Session() as session:
        url = server.base + "/v1/predictions"
        count = 0
        for field in fields:
            for value in MALFORMED:
                body = {"version": GUIDE_VERSION, "input": {"prompt": "a cat", field: value}}
                response = session.post(
                    url,
                    data=body_text(body),
                    headers={**AUTH, "Content-Type": "application/json"},
                    timeout=60,
                )
                check(response, field, value, "replicate")
                count += 1
    print(f"Replicate API: {count} malformed numbers over {len(fields)} inputs")


def test_replicate_trainings(server):
    """The trainer's numeric inputs, on a training of a destination the caller owns."""
    account = requests.get(server.base + "/v1/account", headers=AUTH, timeout=10).json()
    owner = account["username"]
    model = {"owner": owner, "name": "numbers", "visibility": "private", "hardware": "gpu"}
    made = requests.post(server.base + "/v1/models", json=model, headers=AUTH, timeout=10)
    assert made.status_code == 201, made.text
    fields = [name for name, spec in TRAIN_INPUTS.items() if spec.kind in NUMERIC]
    url = f"{server.base}/v1/models/stability-ai/sdxl/versions/{GUIDE_VERSION}/trainings"
    count = 0
    with requests.Session() as session:
        for field in fields:
            for value in MALFORMED:
                given = {"input_images": "https://x.test/photos.zip", field: value}
                response = session.post(
                    url,
                    data=body_text({"destination": f"{owner}/numbers", "input": given}),
                    headers={**AUTH, "Content-Type": "application/json"},
                    timeout=60,
                )
                check(response, field, value, "replicate")
                count += 1
    listed = requests.get(server.base + "/v1/trainings", headers=AUTH, timeout=10).json()
    assert listed["results"] == []  # none was queued
    print(f"Replicate trainings: {count} malformed numbers over {len(fields)} inputs")


@pytest.mark.parametrize(
    ("body_schema", "path", "shape"),
    [
        ("GenerateRequest", "/v1/images/stable-diffusion-xl/generate", "datacrunch"),
        ("ImageGenerationRequest", "/v1/images/generations", "openai"),
    ],
    ids=["datacrunch", "openai_generations"],
)
def test_json_endpoint(server, schema, body_schema, path, shape):
    props = schema["components"]["schemas"][body_schema]["properties"]
    fields = numeric_fields(props, schema)
    with requests.Session() as session:
        count = run_matrix(session, server.base + path, {"prompt": "a cat"}, fields, shape)
    print(f"{path}: {count} malformed numbers over {len(fields)} inputs")


def test_openai_edits_as_form_text(server, schema):
    props = schema["components"]["schemas"]["ImageEditRequest"]["properties"]
    fields = numeric_fields(props, schema)
    png = encoded(photo())
    count = 0
    with requests.Session() as session:
        for field in fields:
            for value in [v for v in MALFORMED if v != OVERFLOW]:
                response = session.post(
                    server.base + "/v1/images/edits",
                    data={"prompt": "a cat", field: value},
                    files={"image": ("image.png", png, "image/png")},
                    headers=AUTH,
                    timeout=60,
                )
                check(response, field, value, "openai")
                count += 1
    print(f"OpenAI edits: {count} malformed numbers over {len(fields)} inputs")


A1111_ROUTES = [("txt2img", "Txt2ImgRequest"), ("img2img", "Img2ImgRequest")]


@pytest.mark.parametrize(("route", "title"), A1111_ROUTES)
def test_automatic1111(server, schema, route, title):
    fields = numeric_fields(schema["components"]["schemas"][title]["properties"], schema)
    base = {"prompt": "a cat"}
    if route == "img2img":
        base["init_images"] = [base64.b64encode(encoded(photo())).decode()]
    with requests.Session() as session:
        url = f"{server.base}/sdapi/v1/{route}"
        count = run_matrix(session, url, base, fields, "a1111")
    print(f"AUTOMATIC1111 {route}: {count} malformed numbers over {len(fields)} inputs")


@pytest.mark.slow  # coglet's own parsing; test_bad_inputs sends the Cog server bad values
def test_cog_server(tiny_weights, tmp_path):
    """Cog's own server (coglet) reads its inputs strictly: a string is never a number there."""
    cog = json.loads(COG_SCHEMA_FILE.read_text())
    fields = numeric_fields(cog["components"]["schemas"]["Input"]["properties"], cog)
    server = start_server(tiny_weights, tmp_path)
    count = 0
    try:
        with requests.Session() as session:
            for field in fields:
                for value in MALFORMED:
                    if value == OVERFLOW:  # coglet refuses 1e999 before it reads any field
                        continue
                    response = session.post(
                        server.base + "/predictions",
                        data=body_text({"input": {"prompt": "a cat", field: value}}),
                        headers={"Content-Type": "application/json"},
                        timeout=60,
                    )
                    check(response, field, value, "cog")
                    count += 1
        assert server.settles_ready()
    finally:
        server.stop()
    print(f"Cog server: {count} malformed numbers over {len(fields)} inputs")
