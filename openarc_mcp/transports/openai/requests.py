"""Reading a JSON request body into its pydantic model, with errors that name the parameter."""

from __future__ import annotations

from typing import TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .errors import APIError, validation_error

__all__ = ["parse_body"]

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``; any problem is a 400 (or 415) saying what to fix."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        raise APIError(415, f"send the body as JSON (Content-Type: application/json), not '{content_type}'")
    raw = await request.body()
    try:  # pydantic's parser, as the MCP routes use: it refuses what is not Unicode (a lone \ud800)
        data = pydantic_core.from_json(raw)
    except ValueError as exc:
        message = f"the body is not valid JSON in UTF-8 (escapes must form valid Unicode): {exc}"
        raise APIError(400, message, code="invalid_json") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:  # strictly, as OpenAI's API checks types: no true for a number, no "yes" or 1 for a boolean
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise validation_error(exc, data) from exc
