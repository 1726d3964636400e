"""Property-based fuzzing of the OpenAI-compatible REST routes, from their request models' JSON Schema.

The app publishes no OpenAPI document, so schemathesis has nothing to read; hypothesis draws each
JSON route's body from its pydantic model's schema instead (mostly valid, often broken: see
fuzz_schema.py), and sends it to the real ASGI app (real models, in process). Every answer must be
a 2xx or a 4xx in OpenAI's error envelope naming what is wrong; never a 5xx, never a traceback.
``OPENARC_FUZZ_REST_CASES`` scales the total (default 1500).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from openarc_mcp.app import OpenArcApp
from openarc_mcp.schema import LoadRequest
from openarc_mcp.transports.http import build_http_app
from openarc_mcp.transports.openai.audio import SpeechRequest
from openarc_mcp.transports.openai.chat import ChatCompletionRequest, CompletionRequest
from openarc_mcp.transports.openai.embeddings import EmbeddingRequest, RerankRequest

from .conftest import EMBEDDER, LLM, RERANKER, TTS, VLM, make_settings
from .fuzz_schema import ANY_JSON, ANY_TEXT, SchemaStrategies

TOTAL_CASES = int(os.environ.get("OPENARC_FUZZ_REST_CASES", "1500"))
ROUTES: dict[str, tuple[type[BaseModel], str, float]] = {  # path: (body model, its model, share)
    "/v1/chat/completions": (ChatCompletionRequest, LLM, 0.3),
    "/v1/completions": (CompletionRequest, LLM, 0.2),
    "/v1/embeddings": (EmbeddingRequest, EMBEDDER, 0.25),
    "/v1/rerank": (RerankRequest, RERANKER, 0.15),
    "/v1/audio/speech": (SpeechRequest, TTS, 0.1),
}
TALLY: Counter[str] = Counter()

Client = tuple[BlockingPortal, httpx.AsyncClient]


@pytest.fixture(scope="module")
def rest(models_dir: Path) -> Iterator[Client]:
    settings = make_settings(
        models_dir, transport="http", default_max_tokens=4, max_speak_chars=40, max_texts=16
    )

    async def load_all(app: OpenArcApp) -> None:
        for name in (LLM, EMBEDDER, RERANKER, TTS, VLM):
            await app.load_model(LoadRequest(model_name=name))

    with start_blocking_portal() as portal, portal.wrap_async_context_manager(OpenArcApp(settings)) as app:
        portal.call(load_all, app)
        transport = httpx.ASGITransport(app=build_http_app(app))
        client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000", timeout=60)
        with portal.wrap_async_context_manager(client):
            yield portal, client


def _overrides(own_model: str) -> dict[str, st.SearchStrategy[Any]]:
    small = st.integers(1, 4) | st.integers(max_value=0) | st.sampled_from([None, 2**63, "4"])
    return {
        "model": st.one_of(st.just(own_model), st.just(own_model), st.just(VLM), ANY_TEXT, ANY_JSON),
        "max_tokens": small,
        "max_completion_tokens": small,
        "n": st.sampled_from([None, 1, 2, 0, -1]),
    }


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_fuzzed_bodies_get_a_2xx_or_a_4xx_that_says_why(rest: Client, path: str) -> None:
    portal, client = rest
    body_model, own_model, share = ROUTES[path]
    schema = body_model.model_json_schema()
    bodies = SchemaStrategies(schema, _overrides(own_model)).mutated(schema)

    @settings(
        max_examples=max(1, round(TOTAL_CASES * share)),
        deadline=None,
        derandomize=os.environ.get("OPENARC_FUZZ_RANDOM") != "1",
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bodies)
    def post_survives(body: Any) -> None:
        content = json.dumps(body).encode("utf-8", "surrogatepass")
        headers = {"content-type": "application/json"}
        response = portal.call(lambda: client.post(path, content=content, headers=headers))
        _check_response(path, body, response)

    post_survives()


def _check_response(path: str, body: Any, response: httpx.Response) -> None:
    TALLY["cases"] += 1
    TALLY[f"status:{response.status_code}"] += 1
    shown = json.dumps(body)[:300]
    assert response.status_code < 500, (path, shown, response.status_code, response.text[:500])
    assert "Traceback" not in response.text, (path, shown, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"], (path, shown, error)


def test_rest_fuzz_totals(rest: Client) -> None:
    portal, client = rest
    print(f"\nREST fuzz summary: {json.dumps(dict(sorted(TALLY.items())))}")  # noqa: T201
    response = portal.call(
        lambda: client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "still serving"})
    )
    assert response.status_code == 200
