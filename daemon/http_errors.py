"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

The kind of failure comes from daemon/errors.py, as for gRPC, so a request is refused for the same reason
over both protocols; only the numbers differ.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from omnid.daemon.errors import Failure, classify

log = logging.getLogger(__name__)

#: (HTTP status, OpenAI error type, code) of each kind of failure.
_HTTP = {
    Failure.INVALID: (400, "invalid_request_error", "invalid_request"),
    Failure.UNSUPPORTED: (400, "invalid_request_error", "unsupported"),
    Failure.TOO_LONG: (400, "invalid_request_error", "context_length_exceeded"),
    Failure.OVER_LIMIT: (413, "invalid_request_error", "request_too_large"),
    Failure.BUSY: (429, "rate_limit_error", "queue_full"),
    Failure.NO_SPACE: (507, "server_error", "insufficient_storage"),
    Failure.UNAVAILABLE: (503, "server_error", "unavailable"),
    Failure.CANCELLED: (499, "invalid_request_error", "cancelled"),
    Failure.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    Failure.DENIED: (403, "permission_error", "permission_denied"),
    Failure.INTERNAL: (500, "server_error", "internal_error"),
}


class HttpError(Exception):
    """A refusal the HTTP layer itself decides (a wrong token, a body too large, loading): its status and
    OpenAI type and code as given."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def described(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI error body for an exception raised while serving a request."""
    if isinstance(exc, HttpError):
        return exc.status, error_body(str(exc), exc.type, exc.code)
    if isinstance(exc, HTTPException):  # Starlette's own refusals (a multipart body that does not parse)
        return exc.status_code, error_body(str(exc.detail), "invalid_request_error", "invalid_request")
    kind, message = classify(exc)
    if kind == Failure.INTERNAL:
        log.error("internal error serving an HTTP request", exc_info=exc)
    status, type_, code = _HTTP[kind]
    return status, error_body(message, type_, code)


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    status, body = described(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error(exc: BaseException) -> bytes:
    """An error after a stream began (its 200 is sent): one `data:` event with the error body, as llama-server
    and vLLM send it (the openai package raises it as an APIError)."""
    return b"data: " + json.dumps(described(exc)[1]).encode() + b"\n\n"
