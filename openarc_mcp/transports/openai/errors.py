"""OpenAI's error envelope, and the one mapping from openarc-mcp's errors to HTTP statuses.

Every error a ``/v1`` route answers is ``{"error": {"message", "type", "param", "code"}}`` with a
status an OpenAI client understands: 400 bad request, 401, 404 unknown model or route, 409 a model
name already in use, 413 too large, 422 a model that could not be loaded as asked, 429 busy, 503
not ready, 504 too slow, 500 a fault of the server (details only in its log).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from ...errors import (
    InvalidRequestError,
    ModelExistsError,
    ModelFailedError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelTypeError,
    ModelUnloadedError,
    OpenArcError,
    RequestTimeoutError,
    ServerBusyError,
    UserError,
)
from ..validation import telling_errors

__all__ = [
    "INVALID_MODEL_OUTPUT",
    "APIError",
    "error_body",
    "error_for",
    "error_response",
    "load_error_for",
    "unsupported",
    "validation_error",
]

logger = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    421: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# (error class, status, code), most specific first; any other UserError is a 400
_USER_ERRORS: list[tuple[type[UserError], int, str]] = [
    (ModelNotFoundError, 404, "model_not_found"),
    (ModelExistsError, 409, "model_exists"),
    (ServerBusyError, 429, "model_busy"),
    (ModelFailedError, 503, "model_failed"),
    (ModelNotReadyError, 503, "model_not_ready"),
    (ModelUnloadedError, 503, "model_unloaded"),
    (ModelLoadError, 503, "model_load_failed"),
    (RequestTimeoutError, 504, "timeout"),
]
INVALID_MODEL_OUTPUT = "invalid_model_output"
"""The model's reply broke what the request asked of it (the caller's request was valid)."""
_FINAL_CODES = frozenset({"model_failed", "model_load_failed", "timeout", INVALID_MODEL_OUTPUT})
"""Errors that the same request would meet again at once: OpenAI's clients retry 5xx (twice, by
default) unless told ``x-should-retry: false`` (a 504 retried would wait out the deadline again)."""


class APIError(Exception):
    """An error answered to an HTTP caller as is: status, message, and the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON of OpenAI's error envelope."""
    kind = _STATUS_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    """The HTTP response for an ``APIError`` (busy answers carry ``Retry-After``; those not worth
    retrying ``x-should-retry: false``)."""
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    if error.code in _FINAL_CODES:
        headers = {"x-should-retry": "false"}
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    body = error_body(error.status, error.message, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=headers)


_INDEX = re.compile(r"\[(\d+)\]")


def error_for(exc: OpenArcError, param: str | None = None) -> APIError:
    """The ``APIError`` for one of the application's errors (the one place that decides)."""
    if isinstance(exc, UserError):
        for error_type, status, code in _USER_ERRORS:
            if isinstance(exc, error_type):
                return APIError(status, str(exc), "model" if status == 404 else param, code)
        if isinstance(exc, InvalidRequestError) and exc.argument is not None:
            param = _INDEX.sub(r".\1", exc.argument)  # messages[0].content[1]: OpenAI's messages.0.content.1
        if isinstance(exc, ModelTypeError):  # the model named is of another type than the route needs
            return APIError(400, str(exc), "model", "wrong_model_type")
        return APIError(400, str(exc), param)
    logger.error("server fault: %s", exc)
    return APIError(500, f"{exc} (a server-side fault; details are in the server's log)", code="server_error")


def load_error_for(exc: OpenArcError) -> APIError:
    """``error_for`` on ``POST /v1/models/load``: a load that failed is a 422, not a 503 with
    ``Retry-After`` (clients retry those, and the same load would fail the same way)."""
    if isinstance(exc, ModelLoadError):  # the caller's mistake in an argument is a 400 naming it
        if exc.argument is not None:
            return APIError(400, str(exc), exc.argument, "model_load_refused")
        return APIError(422, str(exc), "model", "model_load_failed")
    return error_for(exc, "model")


def unsupported(param: str) -> APIError:
    """A 400 for a parameter openarc-mcp does not implement (never silently ignored)."""
    message = (
        f"unsupported parameter '{param}': openarc-mcp does not implement it (remove it from the request)"
    )
    return APIError(400, message, param, "unsupported_parameter")


def validation_error(exc: ValidationError, body: dict[str, Any]) -> APIError:
    """A 400 naming the first parameter pydantic refused in ``body`` (where it lies in the body; of a
    value that fits no type of a union, the type it fitted furthest); unknown parameters are called
    unsupported."""
    parts, problem = telling_errors(exc, body)[0]
    param = ".".join(str(part) for part in parts)
    if problem["type"] == "extra_forbidden":
        return unsupported(param)
    if problem["type"] == "missing":
        return APIError(400, f"missing required parameter '{param}'", param, "missing_parameter")
    return APIError(400, f"invalid '{param}': {problem['msg']}", param, "invalid_value")
