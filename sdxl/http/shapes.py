"""Errors in the shape each API's clients read, chosen by the request's path: OpenAI's Images
API (`/v1/images/*` but DataCrunch's path, `/v1/models` and `/v1/models/<id>`), AUTOMATIC1111's
(`/sdapi/*`), and the others as each of their errors writes itself (`ApiError.body`)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from sdxl.http.errors import ApiError, InvalidRequest, problem_item

OPENAI, A1111, DEFAULT = "openai", "a1111", "default"
DATACRUNCH_PREFIX = "/v1/images/stable-diffusion-xl/"
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}


def shape_of(path: str, method: str = "GET") -> str:
    if path.startswith("/sdapi/"):
        return A1111
    if path.startswith("/v1/images/") and not path.startswith(DATACRUNCH_PREFIX):
        return OPENAI
    if path == "/v1/models" and method != "GET":  # Replicate's models.create (POST)
        return DEFAULT
    if path == "/v1/models" or (path.startswith("/v1/models/") and path.count("/") == 3):
        return OPENAI
    return DEFAULT


def error_response(path: str, error: ApiError, method: str = "GET") -> JSONResponse:
    """`error` as the clients of `path`'s API read errors."""
    shape = DEFAULT if error.own_shape else shape_of(path, method)
    headers = dict(error.headers)
    status = error.status
    if shape == OPENAI:
        if isinstance(error, InvalidRequest):
            status = 400  # OpenAI answers every invalid request with 400
        body = openai_error(status, error.message, _param(error), getattr(error, "code", None))
        if status >= 500 and not error.retry:
            headers["x-should-retry"] = "false"  # the clients retry 5xx twice otherwise
    elif shape == A1111:
        body = a1111_error(error)
    else:
        body = error.body()
    return JSONResponse(body, status_code=status, headers=headers)


def openai_error(status: int, message: str, param: str | None, code: str | None) -> dict:
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code or OPENAI_CODES.get(status, "invalid_value" if status == 400 else None),
        }
    }


def a1111_error(error: ApiError) -> dict:
    """AUTOMATIC1111's API middleware writes {"error": the exception's name, "detail", "body",
    "errors"}; a request that cannot run lists its problems in `detail`."""
    if isinstance(error, InvalidRequest):
        detail = [problem_item(p) for p in error.problems]
        return {"error": "ValidationError", "detail": detail, "body": "", "errors": error.message}
    return {"error": "HTTPException", "detail": error.message, "body": "", "errors": ""}


def _param(error: ApiError) -> str | None:
    return error.field if isinstance(error, InvalidRequest) else None
