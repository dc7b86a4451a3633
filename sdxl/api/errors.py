"""HTTP errors every API of the server answers the same way."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered with `status` and `{"detail": message}`."""

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"detail": self.message}


class QueueFull(ApiError):
    status = 429


class Unavailable(ApiError):
    status = 503


class GenerationFailed(ApiError):
    status = 500


class GenerationTimeout(ApiError):
    status = 504  # the job ran past SDXL_MAX_SECONDS


class ClientDisconnected(ApiError):
    status = 499  # "client closed request" (nginx): nobody is left to read it


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(seconds)))}
