"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models a caller can name (loaded or prepared)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ...app import OpenArcApp
from ...schema import ModelRecord, ModelStatus
from .errors import APIError

__all__ = ["get_model", "list_models"]

_OWNER = "openarc-mcp"


async def list_models(request: Request, app: OpenArcApp) -> JSONResponse:
    """Every loaded, loading and prepared model, with openarc-mcp's type and status beside OpenAI's fields."""
    data = [_model_object(record) for record in _usable(app)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request, app: OpenArcApp) -> JSONResponse:
    """One model by name; 404 when it is neither loaded nor prepared."""
    name = request.path_params["model"]
    record = next((r for r in _usable(app) if r.name == name), None)
    if record is None:
        raise APIError(404, f"no model named '{name}'; GET /v1/models lists them", "model", "model_not_found")
    return JSONResponse(_model_object(record))


def _usable(app: OpenArcApp) -> list[ModelRecord]:
    return [record for record in app.list_models() if record.status is not ModelStatus.NOT_PREPARED]


def _model_object(record: ModelRecord) -> dict[str, Any]:
    return {
        "id": record.name,
        "object": "model",
        "created": 0,
        "owned_by": _OWNER,
        "type": record.model_type.value,
        "status": record.status.value,
    }
