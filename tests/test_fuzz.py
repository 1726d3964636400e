"""Property-based fuzzing of every tool over a real stdio server, from the tools' own input schemas.

Hypothesis draws each tool's arguments from the ``inputSchema`` the server publishes in tools/list,
mostly valid and often broken on purpose (see fuzz_schema.py). Every call must be answered within
``CALL_DEADLINE_S`` with a result or a clear error (never an unexpected exception, a server fault
or a traceback), the server must keep answering ``ping``, and its log must hold no traceback.

``OPENARC_FUZZ_CASES`` scales the total (default 5000, split over the tools by ``WEIGHTS``);
``OPENARC_FUZZ_RANDOM=1`` draws fresh cases instead of the reproducible derandomized set.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from .conftest import EMBEDDER, LLM, RERANKER, TTS, VLM, WHISPER_EN
from .fuzz_schema import ANY_TEXT, SchemaStrategies
from .stdio_session import RawSession, server_env

TOTAL_CASES = int(os.environ.get("OPENARC_FUZZ_CASES", "5000"))
WEIGHTS = {  # share of the cases per tool: the fast models get most of them
    "embed": 0.28,
    "rerank": 0.22,
    "generate": 0.22,
    "describe_image": 0.08,
    "transcribe": 0.08,
    "load_model": 0.05,
    "unload_model": 0.04,
    "speak": 0.03,
}
CALL_DEADLINE_S = 60.0
FAULT_MARKERS = ("Traceback", "server-side fault", "Internal Server Error")
RANDOM = os.environ.get("OPENARC_FUZZ_RANDOM") == "1"

TALLY: Counter[str] = Counter()


def _wav_b64(samples: int) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(samples, dtype=np.float32), 16_000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def _png_b64(size: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 90)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


MODEL_OF = {
    "generate": LLM,
    "embed": EMBEDDER,
    "rerank": RERANKER,
    "describe_image": VLM,
    "transcribe": WHISPER_EN,
    "speak": TTS,
}


def _overrides(tool: str) -> dict[str, st.SearchStrategy[Any]]:
    """Keep valid calls likely and cheap enough to run thousands: the tool's own model most of the
    time, short outputs, small real media, names and paths that mean something to the server."""
    own = MODEL_OF.get(tool, LLM)
    return {
        "model": st.one_of(
            st.just(own), st.just(own), st.none(), st.sampled_from(list(MODEL_OF.values())), ANY_TEXT
        ),
        # large valid values only cost time (a generation to the context's end): left to other tests
        "max_tokens": st.integers(1, 4) | st.integers(max_value=0) | st.sampled_from([None, 2**63, "4", 2.5]),
        "audio": st.sampled_from([_wav_b64(1), _wav_b64(1600), "data:audio/wav;base64," + _wav_b64(400)])
        | ANY_TEXT,
        "image": st.sampled_from([_png_b64(1), _png_b64(16)]) | ANY_TEXT,
        "images": st.lists(st.sampled_from([_png_b64(1), _png_b64(8)]) | ANY_TEXT, max_size=3),
        "model_name": st.sampled_from(["fuzz-model", "x", "../x", ""]) | ANY_TEXT,
        "model_path": st.sampled_from(["/etc", "..", EMBEDDER, "/no/such"]) | ANY_TEXT | st.none(),
    }


@pytest.fixture(scope="module")
def fuzz_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BlockingPortal, RawSession, Path]]:
    folder = tmp_path_factory.mktemp("fuzz")
    log = folder / "server.log"
    env = server_env(
        models_dir,
        OPENARC_PRELOAD=",".join([LLM, EMBEDDER, RERANKER, VLM, WHISPER_EN, TTS]),
        OPENARC_OUTPUT_DIR=str(folder / "out"),
        OPENARC_MEDIA_ROOTS=str(folder),
        OPENARC_DEFAULT_MAX_TOKENS="4",
        OPENARC_MAX_SPEAK_CHARS="40",
        OPENARC_MAX_TEXTS="16",
    )
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(RawSession(env, stderr=log)) as session,
    ):
        portal.call(session.initialize)
        yield portal, session, log


def _schemas(portal: BlockingPortal, session: RawSession) -> dict[str, dict[str, Any]]:
    tools = portal.call(session.request, "tools/list")["result"]["tools"]
    return {tool["name"]: tool["inputSchema"] for tool in tools}


def _call(portal: BlockingPortal, session: RawSession, tool: str, arguments: Any) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}
    started = time.perf_counter()
    reply: dict[str, Any] = portal.call(session.request, "tools/call", params, CALL_DEADLINE_S)
    TALLY[f"seconds:{tool}"] = max(TALLY[f"seconds:{tool}"], round(time.perf_counter() - started))
    session.notifications.clear()
    return reply


def _check_answer(tool: str, arguments: Any, reply: dict[str, Any]) -> None:
    """A result, a tool error saying what is wrong, or a JSON-RPC invalid-params error; nothing else."""
    TALLY["cases"] += 1
    TALLY[f"cases:{tool}"] += 1
    shown = json.dumps(arguments)[:300]
    if "error" in reply:
        TALLY["protocol errors"] += 1
        # JSON allows escapes of lone surrogates, which the SDK's parser refuses: Invalid Request
        allowed = {-32602, -32600} if _has_lone_surrogate(arguments) else {-32602}
        assert reply["error"]["code"] in allowed and reply["error"]["message"], (tool, shown, reply)
        return
    result = reply["result"]
    text = " ".join(block.get("text", "") for block in result.get("content", []) if isinstance(block, dict))
    if result.get("isError"):
        TALLY["tool errors"] += 1
        assert text.strip(), (tool, shown, reply)
    else:
        TALLY["results"] += 1
    crashed = text.strip() == f"Error executing tool {tool}"  # the SDK's text for an unexpected exception
    assert not crashed and not any(marker in text for marker in FAULT_MARKERS), (tool, shown, text[:500])


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(key) or _has_lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


@pytest.mark.parametrize("tool", sorted(WEIGHTS))
def test_fuzzed_arguments_always_get_a_clear_answer(
    fuzz_server: tuple[BlockingPortal, RawSession, Path], tool: str
) -> None:
    portal, session, _ = fuzz_server
    schema = _schemas(portal, session)[tool]
    arguments = SchemaStrategies(schema, _overrides(tool)).mutated(schema)

    @settings(
        max_examples=max(1, round(TOTAL_CASES * WEIGHTS[tool])),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(arguments)
    def call_survives(drawn: Any) -> None:
        _check_answer(tool, drawn, _call(portal, session, tool, drawn))

    call_survives()
    assert portal.call(session.request, "ping", None, CALL_DEADLINE_S)["result"] == {}


def test_the_server_survived_every_case_and_logged_no_traceback(
    fuzz_server: tuple[BlockingPortal, RawSession, Path],
) -> None:
    portal, session, log = fuzz_server
    assert session.process.returncode is None
    for tool, arguments in [
        ("generate", {"model": LLM, "prompt": "Say hi.", "max_tokens": 4}),
        ("embed", {"model": EMBEDDER, "texts": ["still here"]}),
        ("rerank", {"model": RERANKER, "query": "q", "documents": ["a", "b"]}),
    ]:
        reply = _call(portal, session, tool, arguments)
        assert reply["result"].get("isError") is not True, (tool, reply)
    summary = dict(sorted(TALLY.items()))
    print(f"\nfuzz summary: {json.dumps(summary)}")  # noqa: T201 (the figures docs/reliability.md cites)
    if TOTAL_CASES >= 5000 and TALLY["cases"]:
        assert TALLY["cases"] >= 5000, summary
    logged = log.read_text(errors="replace")
    assert "Traceback" not in logged, logged[logged.find("Traceback") - 2000 :][:6000]
