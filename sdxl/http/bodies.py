"""Request bodies every JSON API reads the same way: a JSON object, or a 4xx that says why.

`parse_json` is the one reader of a request's JSON (Replicate's routes use it too): what is
not JSON, is not UTF-8, is nested deeper than `MAX_JSON_DEPTH` or holds a lone surrogate is a
`BadJson` that says so, never a 500 from the parser (RecursionError) or from whatever would
walk, store or write the value back later (RecursionError, UnicodeEncodeError).
"""

from __future__ import annotations

import json
import re
import sys

from fastapi import Request as HttpRequest

from sdxl.http.errors import InvalidRequest
from sdxl.inputs.surface import Problem

# No input of any API nests deeper than a few levels (A1111's alwayson_scripts: about 5); 64
# leaves room for any client while keeping every later walk of the value far from Python's
# recursion limit.
MAX_JSON_DEPTH = 64
# A lone surrogate comes from an escape \ud800-\udfff that is not half of a pair, or from
# its UTF-8 bytes, which json decodes with "surrogatepass".
_HIGH, _LOW = rb"\\u[dD][89abAB][0-9a-fA-F]{2}", rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_HIGH = re.compile(_HIGH + rb"(?!" + _LOW + rb")")
_LONE_LOW = re.compile(rb"(?<!" + _HIGH + rb")" + _LOW)
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")


class BadJson(ValueError):
    """A body that is not JSON an API can read; the message says why, `field` (the top-level
    key) where it is within one field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def parse_json(raw: bytes) -> object:
    """`raw` as JSON, nested at most `MAX_JSON_DEPTH` levels of objects and arrays, every
    string of it text (no lone UTF-16 surrogate, which no reply, log or store could encode)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BadJson(_too_deep()) from None
    except ValueError as err:  # UnicodeDecodeError, a digit string over Python's limit too
        raise BadJson(f"the body is not valid JSON ({_short(err)})") from None
    # Byte searches first (C speed): most bodies have too few brackets to nest that deep, and
    # neither an escape nor bytes that could make a lone surrogate.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _nests_too_deep(value):
        raise BadJson(_too_deep())
    if _may_hold_surrogates(raw):
        _check_text_in(value)
    return value


def _nests_too_deep(value: object) -> bool:
    """Whether `value` nests more than `MAX_JSON_DEPTH` levels (a level at a time, without
    recursion)."""
    level, depth = [value], 0  # the containers `depth` levels in
    while level:
        if depth >= MAX_JSON_DEPTH:
            return True
        deeper: list = []
        for item in level:
            if type(item) is dict:
                item = item.values()
            elif type(item) is not list:
                continue
            deeper += [child for child in item if type(child) is dict or type(child) is list]
        level, depth = deeper, depth + 1
    return False


def _may_hold_surrogates(raw: bytes) -> bool:
    """False when `raw` surely holds no lone surrogate: UTF-8 without a lone \\ud800-\\udfff
    escape and without a surrogate's bytes (json decodes with "surrogatepass")."""
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        return True  # UTF-16 and UTF-32 bodies: walked
    escaped = (b"\\ud" in raw or b"\\uD" in raw) and (
        _LONE_HIGH.search(raw) is not None or _LONE_LOW.search(raw) is not None
    )
    return escaped or (b"\xed" in raw and _RAW_SURROGATE.search(raw) is not None)


def _check_text_in(value: object) -> None:
    """BadJson at the first string (a key or a value) of `value` that UTF-8 cannot encode. A
    trail is (key, the parent's trail): the path is built only for the error."""
    stack: list[tuple[object, tuple | None]] = [(value, None)]
    while stack:
        item, trail = stack.pop()
        if isinstance(item, str):
            _check_text(item, trail)
            continue
        if not isinstance(item, dict | list):
            continue
        for key, child in item.items() if isinstance(item, dict) else enumerate(item):
            if isinstance(key, str):
                _check_text(key, (key, trail))
            if isinstance(child, dict | list | str):
                stack.append((child, (key, trail)))


def _check_text(text: str, trail: tuple | None) -> None:
    if _utf8(text):
        return
    path = _path(trail)
    bad = next(ascii(ch) for ch in text if not _utf8(ch))
    field = path[0] if path and isinstance(path[0], str) and _utf8(path[0]) else None
    raise BadJson(
        f"{_dotted(path) or 'the body'} holds a lone UTF-16 surrogate ({bad}), which is not "
        "text; send characters outside the BMP as a surrogate pair, or as UTF-8",
        field,
    )


def _path(trail: tuple | None) -> list:
    out = []
    while trail is not None:
        key, trail = trail
        out.append(key)
    return out[::-1]


def _dotted(path: list) -> str:
    """`input.prompt`, `styles[0]`: where a value is, its keys shown safely."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if _utf8(part) else ascii(part)
            out += f".{shown}" if out else shown
    return out


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def json_object(http: HttpRequest, example: str, empty: str = "null") -> dict:
    """The body as a JSON object; `empty` is what an empty body stands for."""
    try:
        body = parse_json(await http.body() or empty.encode())
    except BadJson as err:
        raise _not_an_object(str(err), example, err.field) from None
    if body is None:
        raise _not_an_object("the request has no body", example)
    if not isinstance(body, dict):
        raise _not_an_object("the body must be a JSON object", example)
    return body


def _too_deep() -> str:
    return (
        f"the body's JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels of objects "
        "and arrays)"
    )


def _short(err: ValueError) -> str:
    """The parser's reason, without the bytes of the body it may quote (UnicodeDecodeError)."""
    if isinstance(err, UnicodeDecodeError):
        return f"it is not UTF-8: byte {err.start} cannot be decoded"
    if "integer string conversion" in str(err):  # Python's own limit, and its own advice
        return f"a number in it has more than {sys.get_int_max_str_digits()} digits"
    return str(err)[:200]


def _not_an_object(why: str, example: str, field: str | None = None) -> InvalidRequest:
    return InvalidRequest([Problem(field, f"{why}; send a JSON object such as {example}")])
