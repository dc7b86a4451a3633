"""Errors in the shape each API's clients read: OpenAI's Images API, AUTOMATIC1111's, and the
others (DataCrunch's, Replicate's) as each of their errors writes itself (`ApiError.body`).

Each API's routes carry their shape: their router's `route_class` (`OpenAIRoute`, `A1111Route`,
`DataCrunchRoute`, `ReplicateRoute`) answers the ApiError, the validation error and the store
outage its handlers raise in that shape. What no route of an API answers (a 404 or 405 of an
unknown path, the auth middleware's 401, the body limit's 413, the probes) keeps a rule by the
request's path (`shape_of`): OpenAI's for `/v1/images/*` but DataCrunch's path, `/v1/models`
and `/v1/models/<id>`; AUTOMATIC1111's for `/sdapi/*`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sdxl.http.datacrunch.errors import format_validation_errors
from sdxl.http.errors import ApiError, InvalidRequest, problem_item, store_unavailable
from sdxl.inputs.surface import Problem
from sdxl.store.errors import StoreUnavailable

OPENAI, A1111, DEFAULT = "openai", "a1111", "default"
A1111_PREFIXES = ("/sdapi/", "/controlnet/")  # A1111's API and its ControlNet extension's
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
    """The shape of an answer no API's route gave (the rule by path)."""
    if path.startswith(A1111_PREFIXES):
        return A1111
    if path.startswith("/v1/images/") and not path.startswith(DATACRUNCH_PREFIX):
        return OPENAI
    if path == "/v1/models" and method != "GET":  # Replicate's models.create (POST)
        return DEFAULT
    if path == "/v1/models" or (path.startswith("/v1/models/") and path.count("/") == 3):
        return OPENAI
    return DEFAULT


def error_response(path: str, error: ApiError, method: str = "GET") -> JSONResponse:
    """`error` as the clients of `path`'s API read errors, for answers no route gave."""
    return shaped_error(shape_of(path, method), error)


def shaped_error(shape: str, error: ApiError) -> JSONResponse:
    """`error` in `shape` (an error that writes its own shape keeps it)."""
    shape = DEFAULT if error.own_shape else shape
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


def invalid_body(shape: str, exc: RequestValidationError) -> JSONResponse:
    """A body FastAPI could not read into the route's parameters, in `shape`."""
    items = format_validation_errors(exc.errors())
    if shape == DEFAULT:
        return JSONResponse({"detail": items}, status_code=422)
    problems = [Problem(item["field"], item["msg"]) for item in items]
    return shaped_error(shape, InvalidRequest(problems))


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


class ShapedRoute(APIRoute):
    """A route whose errors are answered in its API's `shape`."""

    shape = DEFAULT

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        shape = self.shape

        async def shaped(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return invalid_body(shape, exc)
            except ApiError as exc:
                return shaped_error(shape, exc)
            except StoreUnavailable as exc:
                return shaped_error(shape, store_unavailable(exc))

        return shaped


class OpenAIRoute(ShapedRoute):
    shape = OPENAI


class A1111Route(ShapedRoute):
    shape = A1111


class DataCrunchRoute(ShapedRoute):
    shape = DEFAULT  # its errors write DataCrunch's bodies themselves


class ReplicateRoute(ShapedRoute):
    shape = DEFAULT  # Replicate's errors write their own {"title", "detail", "status"}
