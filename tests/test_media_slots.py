"""Calls with media (describe_image, transcribe) hold one of ``media_in_flight`` slots from decoding
to their answer, so the memory decoded media takes stays bounded; a call that cannot get a slot
within its request timeout gets a clear error, and no outcome leaves a slot taken."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from openarc_mcp.app import OpenArcApp
from openarc_mcp.errors import InvalidRequestError, RequestTimeoutError
from openarc_mcp.schema import GenerationOptions

from .conftest import VLM, WHISPER_EN, make_settings

pytestmark = pytest.mark.anyio


def _wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, format="WAV")
    return buffer.getvalue()


async def test_a_call_waits_for_a_media_slot_within_its_timeout(models_dir: Path) -> None:
    settings = make_settings(models_dir, media_in_flight=1, request_timeout=0.5, auto_load=False)
    async with OpenArcApp(settings) as app:
        async with app._media_slot("holder"):  # the one slot, taken
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError, match="1 calls with media were being served"):
                await app.transcribe(WHISPER_EN, _wav(1.0), None, "transcribe", False, None)
            assert time.monotonic() - started < 5
            with pytest.raises(RequestTimeoutError, match="calls with media"):
                await app.describe_image(
                    VLM, ["/no/such.png"], "What is this?", None, GenerationOptions(max_tokens=8)
                )
        assert app._media_slots.value == 1  # the slot is free again


async def test_every_outcome_gives_its_slot_back(models_dir: Path) -> None:
    async with OpenArcApp(make_settings(models_dir, media_in_flight=1, auto_load=False)) as app:
        with pytest.raises(InvalidRequestError, match="not audio"):
            await app.transcribe(None, b"not sound at all" * 10, None, "transcribe", False, None)
        with pytest.raises(InvalidRequestError, match="no file at"):
            await app.describe_image(
                None, ["/no/such.png"], "What is this?", None, GenerationOptions(max_tokens=8)
            )
        with pytest.raises(Exception, match="no 'whisper' model is loaded"):  # decoded, then no model
            await app.transcribe(None, _wav(0.5), None, "transcribe", False, None)
        assert app._media_slots.value == 1  # the slot is free again
