"""``POST /v1/embeddings`` and ``POST /v1/rerank``: retrieval in OpenAI's (and Cohere/Jina's) shapes."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from ...app import OpenArcApp
from ...errors import OpenArcError
from .errors import APIError, error_for
from .requests import parse_body
from .streaming import until_disconnected

__all__ = ["embeddings", "rerank"]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: Annotated[int | None, Field(ge=1)] = None
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["document", "query"] = Field(
        default="document", description="openarc-mcp's extension: 'query' applies the model's query prefix."
    )
    user: str | None = Field(default=None, description="Accepted for compatibility; not used.")


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    query: str
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)]
    top_n: Annotated[int | None, Field(ge=1)] = None
    return_documents: bool = True


async def embeddings(request: Request, app: OpenArcApp) -> JSONResponse:
    """Vectors for one text or a list of texts; ``base64`` packs little-endian float32."""
    body = await parse_body(request, EmbeddingRequest)
    texts = _texts(body.input)

    async def run() -> Any:
        try:
            return await app.embed(body.model, texts, body.input_type, body.dimensions, "input")
        except OpenArcError as exc:
            raise error_for(exc, "input") from exc

    result = await until_disconnected(request, run)
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, body.encoding_format)}
        for index, vector in enumerate(result.embeddings)
    ]
    tokens = result.usage.prompt_tokens
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": result.model, "usage": usage})


async def rerank(request: Request, app: OpenArcApp) -> JSONResponse:
    """Documents ordered by relevance to the query, best first (all of them unless ``top_n``)."""
    body = await parse_body(request, RerankRequest)
    documents = [d.text if isinstance(d, RerankDocument) else d for d in body.documents]

    async def run() -> Any:
        try:
            return await app.rerank(body.model, body.query, documents, body.top_n)
        except OpenArcError as exc:
            raise error_for(exc) from exc

    result = await until_disconnected(request, run)
    results = [
        {"index": item.index, "relevance_score": item.relevance_score}
        | ({"document": {"text": item.document}} if body.return_documents else {})
        for item in result.results
    ]
    return JSONResponse({"id": f"rerank-{uuid.uuid4().hex[:24]}", "model": result.model, "results": results})


def _texts(value: str | list[str] | list[int] | list[list[int]]) -> str | list[str]:
    if isinstance(value, str):
        return value
    if not all(isinstance(item, str) for item in value):
        raise APIError(
            400, "'input' must be a string or a list of strings; token arrays are not supported", "input"
        )
    return [item for item in value if isinstance(item, str)]


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
