"""Streamed REST responses (``EventStream``): a failure to send means the client left (nothing more
is sent, nothing is logged as a fault), while an ``OSError`` of the server's own work is a fault
the client is told about, like any other."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from openarc_mcp.transports.openai.streaming import Emit, EventStream

pytestmark = pytest.mark.anyio

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


async def _never_disconnects() -> dict[str, Any]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def test_an_oserror_of_the_work_is_a_500_not_a_departed_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def produce(emit: Emit) -> None:
        raise OSError(28, "No space left on device")

    with anyio.fail_after(5):
        await EventStream(produce)(SCOPE, _never_disconnects, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 500
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert "failed on this request" in body["error"]["message"]
    assert "a streamed response failed" in caplog.text


async def test_a_client_that_cannot_be_sent_to_ends_the_stream_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    produced: list[str] = []

    async def send(message: Any) -> None:
        raise OSError(32, "Broken pipe")

    async def produce(emit: Emit) -> None:
        produced.append("first")
        await emit({"delta": "hello"})
        produced.append("after the client left")  # never reached

    with anyio.fail_after(5):
        await EventStream(produce)(SCOPE, _never_disconnects, send)
    assert produced == ["first"]
    assert "failed" not in caplog.text
