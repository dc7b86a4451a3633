"""Request-shaped input built to break the server: JSON nested 100,000 deep, lone UTF-16
surrogates, numbers past Python's digit limit, cursors past a 64-bit row number, webhook URLs
past their cap. On every JSON route of every API (a real `python -m sdxl api` on loopback) each
is that API's own 4xx in its own error shape, naming the problem, never a 500; the server
answers the next request. The parser's bounds are checked directly too."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from support.api_server import GUIDE_VERSION, KEYS, Server

from sdxl.http.bodies import MAX_JSON_DEPTH, BadJson, parse_json
from sdxl.runtime.stored_inputs import own_file_id
from sdxl.runtime.webhooks import MAX_WEBHOOK_CHARS, check_webhook

AUTH = {"Authorization": f"Bearer {KEYS[0]}"}
DEEP = b"[" * 100_000 + b"]" * 100_000
TOO_DEEP = "nested too deeply"
TRAININGS = f"/v1/models/stability-ai/sdxl/versions/{GUIDE_VERSION}/trainings"

# (path, the API's error shape, a GET of the same API that must still answer 200)
JSON_ROUTES = [
    ("/v1/predictions", "replicate", "/v1/predictions"),
    ("/v1/models/stability-ai/sdxl/predictions", "replicate", "/v1/predictions"),
    ("/v1/models", "replicate", "/v1/trainings"),
    (TRAININGS, "replicate", "/v1/trainings"),
    ("/v1/images/generations", "openai", "/v1/models"),
    ("/v1/images/stable-diffusion-xl/generate", "datacrunch", "/health"),
    ("/sdapi/v1/txt2img", "a1111", "/sdapi/v1/options"),
    ("/sdapi/v1/img2img", "a1111", "/sdapi/v1/samplers"),
    ("/sdapi/v1/options", "a1111", "/sdapi/v1/options"),
]


@pytest.fixture(scope="module")
def server(plain_api):
    return plain_api  # its log is checked for tracebacks when the session ends


def post(server: Server, path: str, raw: bytes) -> requests.Response:
    headers = {**AUTH, "Content-Type": "application/json"}
    return requests.post(server.base + path, data=raw, headers=headers, timeout=60)


def error_of(response: requests.Response, shape: str) -> tuple[str, str | None]:
    """The status the shape answers malformed JSON with is asserted; (message, field)."""
    body = response.json()
    if shape == "replicate":
        assert response.status_code == 400, response.text
        assert set(body) == {"title", "detail", "status"} and body["status"] == 400, body
        return body["detail"], None
    if shape == "openai":
        assert response.status_code == 400 and set(body) == {"error"}, response.text
        assert body["error"]["type"] == "invalid_request_error", body
        return body["error"]["message"], body["error"]["param"]
    assert response.status_code == 422, response.text
    if shape == "a1111":
        assert set(body) == {"error", "detail", "body", "errors"}, body
        return body["errors"], body["detail"][0]["field"]
    (item,) = body["detail"]  # DataCrunch's list of problems
    assert set(item) == {"field", "msg", "type", "loc"}, item
    return item["msg"], item["field"]


# ---- over HTTP -----------------------------------------------------------------------------


@pytest.mark.http
@pytest.mark.parametrize(("path", "shape", "after"), JSON_ROUTES)
def test_json_nested_100000_deep_is_a_4xx_and_the_server_answers_after(server, path, shape, after):
    message, _field = error_of(post(server, path, DEEP), shape)
    assert TOO_DEEP in message and str(MAX_JSON_DEPTH) in message, message
    assert requests.get(server.base + after, headers=AUTH, timeout=10).status_code == 200


@pytest.mark.http
@pytest.mark.parametrize(("path", "shape", "after"), JSON_ROUTES[:1] + JSON_ROUTES[4:7])
def test_json_one_level_past_the_limit_is_refused_and_at_the_limit_read(server, path, shape, after):
    def nested(levels: int) -> bytes:  # the body object is a level; width 1 refused
        inner = b"[" * (levels - 1) + b"]" * (levels - 1)
        return b'{"prompt": "a", "width": 1, "x": ' + inner + b"}"

    message, _ = error_of(post(server, path, nested(MAX_JSON_DEPTH + 1)), shape)
    assert TOO_DEEP in message
    read = post(server, path, nested(MAX_JSON_DEPTH))  # an error about the field, not the body
    assert 400 <= read.status_code < 500 and TOO_DEEP not in read.text, read.text


# (path, shape, a body whose PROMPT is replaced, the field an error names). Width 1 is refused:
# nothing runs when the prompt is read.
LONE = [
    ("/v1/predictions", "replicate", f'{{"version": "{GUIDE_VERSION}", "input": INPUT}}', None),
    ("/v1/images/generations", "openai", "INPUT", "prompt"),
    ("/v1/images/stable-diffusion-xl/generate", "datacrunch", "INPUT", "prompt"),
    ("/sdapi/v1/txt2img", "a1111", "INPUT", "prompt"),
]


@pytest.mark.http
@pytest.mark.parametrize(("path", "shape", "template", "field"), LONE)
def test_a_lone_surrogate_is_a_4xx_naming_where_it_is(server, path, shape, template, field):
    """A lone "\\ud800" is no character: no reply, log or store could write it (it was a 500
    wherever an answer quoted it back)."""

    def body(prompt: str) -> bytes:
        return template.replace("INPUT", f'{{"prompt": {prompt}, "width": 1}}').encode()

    message, named = error_of(post(server, path, body('"a \\ud800 cat"')), shape)
    assert "lone UTF-16 surrogate" in message and "prompt" in message, message
    assert named == field
    message, _ = error_of(post(server, path, b'{"\\ud800": 1}'), shape)  # a key: escaped
    assert "'\\ud800'" in message, message
    pair = post(server, path, body('"\\ud83d\\ude00"'))  # a pair is a character
    assert 400 <= pair.status_code < 500 and "surrogate" not in pair.text, pair.text
    assert "width" in pair.text


@pytest.mark.http
@pytest.mark.parametrize(("path", "shape"), [r[:2] for r in [JSON_ROUTES[0], *JSON_ROUTES[4:7]]])
def test_bodies_that_are_not_json_name_why(server, path, shape):
    cases = [
        (b'{"prompt": "\xff"}', "not UTF-8"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "more than 4300 digits"),
        (b'{"prompt": ', "not valid JSON"),
    ]
    for raw, words in cases:
        message, _ = error_of(post(server, path, raw), shape)
        assert words in message, message


@pytest.mark.http
@pytest.mark.parametrize("path", ["/v1/predictions", "/v1/trainings"])
def test_a_cursor_past_any_row_number_is_a_400(server, path):
    for number in (10**30, 1 << 63, -5):
        cursor = base64.urlsafe_b64encode(str(number).encode()).decode().rstrip("=")
        response = requests.get(f"{server.base}{path}?cursor={cursor}", headers=AUTH, timeout=10)
        assert response.status_code == 400, response.text
        assert response.json()["title"] == "Invalid cursor"


def long_webhook() -> str:
    url = "https://hooks.example.com/"
    return url + "a" * (MAX_WEBHOOK_CHARS + 1 - len(url))


def assert_names_webhook(response: requests.Response) -> None:
    assert response.status_code == 422, response.text
    fields = {f["field"]: f["description"] for f in response.json()["invalid_fields"]}
    assert set(fields) == {"webhook"}, fields
    assert f"{MAX_WEBHOOK_CHARS + 1} characters" in fields["webhook"]
    assert str(MAX_WEBHOOK_CHARS) in fields["webhook"]


@pytest.mark.http
def newest(server, path: str) -> str | None:
    """The id of the newest prediction or training listed (the lists are newest first)."""
    results = server.api("GET", path).json()["results"]
    return results[0]["id"] if results else None


def test_a_webhook_over_the_cap_is_a_422_naming_it(server):
    before = {path: newest(server, path) for path in ("/v1/predictions", "/v1/trainings")}
    body = {"version": GUIDE_VERSION, "input": {"prompt": "a"}, "webhook": long_webhook()}
    assert_names_webhook(server.api("POST", "/v1/predictions", body))
    owner = server.api("GET", "/v1/account").json()["username"]
    model = {"owner": owner, "name": "hooked", "visibility": "private", "hardware": "gpu"}
    assert server.api("POST", "/v1/models", model).status_code == 201
    training = {
        "destination": f"{owner}/hooked",
        "input": {"input_images": "https://files.example.com/photos.zip"},
        "webhook": long_webhook(),
    }
    assert_names_webhook(server.api("POST", TRAININGS, training))
    after = {path: newest(server, path) for path in before}
    assert after == before  # nothing was queued


# ---- the bounds, directly ------------------------------------------------------------------


def test_parse_json_bounds():
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(at_limit) is not None
    for raw in (b"[" + at_limit + b"]", b'{"a":' * 65 + b"1" + b"}" * 65, DEEP):
        with pytest.raises(BadJson, match=TOO_DEEP):
            parse_json(raw)
    wide = json.dumps([[1, {"a": [2]}]] * 1000).encode()  # many brackets, shallow
    assert len(parse_json(wide)) == 1000
    assert parse_json(b'{"a": NaN}')["a"] != parse_json(b'{"a": NaN}')["a"]  # each API checks


@pytest.mark.parametrize(
    ("raw", "where", "field"),
    [
        (b'{"input": {"prompt": "x\\ud800"}}', "input.prompt", "input"),
        (b'{"styles": ["ok", "\\udc00"]}', "styles[1]", "styles"),
        (b'{"a": "\xed\xa0\x80"}', "a", "a"),  # a surrogate's own UTF-8 bytes
        ('{"a": "\\uDBFF"}'.encode("utf-16"), "a", "a"),
        (b'{"\\ud800": 1}', "'\\ud800'", None),
    ],
)
def test_parse_json_names_where_a_lone_surrogate_is(raw, where, field):
    with pytest.raises(BadJson, match="lone UTF-16 surrogate") as caught:
        parse_json(raw)
    assert str(caught.value).startswith(where) and caught.value.field == field
    str(caught.value).encode("utf-8")  # the message itself can be written


def test_parse_json_keeps_surrogate_pairs_and_utf8():
    assert parse_json(b'{"p": "\\ud83d\\ude00 caf\xc3\xa9"}') == {"p": "\U0001f600 café"}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://h.example/" + "a" * (MAX_WEBHOOK_CHARS - 18), None),  # at the cap
        ("https://h.example/" + "a" * (MAX_WEBHOOK_CHARS - 17), "the limit is 2048"),
        ("ftp://h.example/", "must be an http(s) URL"),
        ("http://", "with a host"),
        ("http://[::1/x", "well-formed"),
        ("http://h.example:99999/", "well-formed"),
        ("http://h.example/a b", "without spaces or control characters"),
        ("http://h.example/\x00", "without spaces or control characters"),
        ("https://user:secret@h.example/", "must not hold credentials"),
        ("http://[::1]:8080/hook?x=1", None),
    ],
)
def test_check_webhook(url, words):
    problems = check_webhook(url, None)
    if words is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.field == "webhook" and words in problem.message, problem
        assert "secret" not in problem.message


def test_a_malformed_url_is_no_file_of_this_server():
    assert own_file_id("http://[::1", ("http://127.0.0.1:8000",)) is None
