"""The models a caller can name, and their management: ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/models/load``, ``POST /v1/models/unload`` and ``GET /v1/devices`` (the last three are
openarc-mcp's own, the REST face of the ``load_model`` and ``unload_model`` tools and of
``openarc://devices``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ...app import OpenArcApp
from ...errors import OpenArcError
from ...schema import (
    MAX_MODEL_NAME,
    MODEL_NAME_PATTERN,
    LoadRequest,
    ModelRecord,
    ModelStatus,
    ModelType,
    RuntimeValue,
)
from .errors import APIError, error_for, load_error_for
from .requests import parse_body
from .streaming import until_disconnected

__all__ = ["get_model", "list_devices", "list_models", "load_model", "unload_model"]

_OWNER = "openarc-mcp"


class LoadBody(BaseModel):
    """``POST /v1/models/load``: what the ``load_model`` tool takes, the name as ``model``."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=MODEL_NAME_PATTERN)]
    model_path: Annotated[str | None, Field(min_length=1)] = None
    model_type: ModelType | None = None
    device: Annotated[str | None, Field(min_length=1)] = None
    engine: Annotated[str | None, Field(min_length=1)] = None
    runtime_config: dict[str, RuntimeValue] = Field(default_factory=dict)


class UnloadBody(BaseModel):
    """``POST /v1/models/unload``: the name of a loaded model."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]


async def list_models(request: Request, app: OpenArcApp) -> JSONResponse:
    """Every loaded, loading, failed and prepared model, with openarc-mcp's fields beside OpenAI's."""
    data = [_model_object(record) for record in await _usable(app)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request, app: OpenArcApp) -> JSONResponse:
    """One model by name; 404 when it is neither loaded nor prepared."""
    name = request.path_params["model"]
    record = next((r for r in await _usable(app) if r.name == name), None)
    if record is None and name in _POST_ACTIONS:  # the action's own route takes POST only
        detail = f'{name} a model with POST /v1/models/{name} and a JSON body {{"model": NAME}}'
        raise HTTPException(405, detail, headers={"Allow": "POST"})
    if record is None:
        raise APIError(404, f"no model named '{name}'; GET /v1/models lists them", "model", "model_not_found")
    return JSONResponse(_model_object(record))


async def load_model(request: Request, app: OpenArcApp) -> JSONResponse:
    """Load a model and answer once it is ready (the load goes on if the client leaves first)."""
    body = await parse_body(request, LoadBody)
    load = LoadRequest(
        model_name=body.model,
        model_path=Path(body.model_path) if body.model_path is not None else None,
        model_type=body.model_type,
        device=body.device,
        engine=body.engine,
        runtime_config=body.runtime_config,
    )

    async def run() -> ModelRecord:
        try:
            return await app.load_model(load)
        except OpenArcError as exc:
            raise load_error_for(exc) from exc

    return JSONResponse(_model_object(await until_disconnected(request, run)))


async def unload_model(request: Request, app: OpenArcApp) -> JSONResponse:
    """Unload a model (its queued and running requests get an error) and free its memory."""
    body = await parse_body(request, UnloadBody)
    try:
        record = await app.unload_model(body.model)  # runs to its end even if the client leaves
    except OpenArcError as exc:
        raise error_for(exc, "model") from exc
    return JSONResponse(_model_object(record))


async def list_devices(request: Request, app: OpenArcApp) -> JSONResponse:
    """OpenVINO's devices, as ``openarc://devices`` lists them."""
    devices = [device.model_dump(mode="json") for device in await app.list_devices()]
    return JSONResponse({"object": "list", "data": devices})


_POST_ACTIONS = ("load", "unload")


async def _usable(app: OpenArcApp) -> list[ModelRecord]:
    return [record for record in await app.list_models() if record.status is not ModelStatus.NOT_PREPARED]


def _model_object(record: ModelRecord) -> dict[str, Any]:
    """OpenAI's model object, with openarc-mcp's type and status (and device, engine, load time and
    the reason of a failure, where known)."""
    known = {
        "device": record.device,
        "engine": record.engine,
        "load_time_s": record.load_time_s,
        "error": record.error if record.status is ModelStatus.FAILED else None,
    }
    return {
        "id": record.name,
        "object": "model",
        "created": 0,
        "owned_by": _OWNER,
        "type": record.model_type.value,
        "status": record.status.value,
        **{key: value for key, value in known.items() if value is not None},
    }
