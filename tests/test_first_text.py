"""The first streamed text reaches the caller as soon as a worker thread emits it, and a job that
ends before any text wakes its caller at once (``workers/worker.py``'s ``_wait``).

Worker-level tests of the waiting logic: the "engine" is a placeholder and the work functions are
the tests' own, so each can hold its thread until the caller has seen what it must see. The
progress interval is set far beyond the tests' deadlines: only the streaming thread's wake-up can
deliver the text in time, never a periodic look.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from openarc_mcp.engines.base import StopFlag, TextSink
from openarc_mcp.errors import InvalidRequestError, ModelUnloadedError, UserError
from openarc_mcp.workers import worker as worker_module
from openarc_mcp.workers.worker import ModelWorker

pytestmark = pytest.mark.anyio

NEVER_S = 600.0  # the progress interval and fallback poll: far beyond every deadline below
DEADLINE_S = 30.0


class _Placeholder:
    def close(self) -> None:
        return None


@pytest.fixture
def no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "_FIRST_TEXT_POLL", NEVER_S)


async def _serving(work: Any, progress: Any) -> Any:
    """The outcome of one call of ``work`` on a fresh worker, raised here if it is an error."""
    worker = ModelWorker("placeholder", _Placeholder(), anyio.CapacityLimiter(1), queue_depth=4)
    outcome: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(worker.serve)
        try:
            with anyio.fail_after(DEADLINE_S):
                outcome["value"] = await worker.call(work, NEVER_S, progress, NEVER_S)
        except UserError as exc:
            outcome["error"] = exc
        finally:
            await worker.close(5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.usefixtures("no_polling")
async def test_the_first_text_is_forwarded_while_the_work_still_runs() -> None:
    forwarded = threading.Event()
    seen: list[str] = []

    def work(engine: Any, stop: StopFlag, sink: TextSink) -> str:
        sink("first words")
        if not forwarded.wait(DEADLINE_S / 2):
            raise RuntimeError("the first text was not forwarded while the work ran")
        sink(" and the rest")
        return "first words and the rest"

    async def progress(text: str, pieces: int) -> None:
        seen.append(text)
        forwarded.set()

    assert await _serving(work, progress) == "first words and the rest"
    assert seen[0] == "first words"


@pytest.mark.usefixtures("no_polling")
async def test_a_job_that_ends_before_any_text_wakes_its_caller_at_once() -> None:
    async def progress(text: str, pieces: int) -> None:
        raise AssertionError("no text was streamed")

    def quiet(engine: Any, stop: StopFlag, sink: TextSink) -> str:
        return "nothing streamed"

    def failing(engine: Any, stop: StopFlag, sink: TextSink) -> str:
        raise InvalidRequestError("refused before any text")

    assert await _serving(quiet, progress) == "nothing streamed"
    with pytest.raises(InvalidRequestError, match="refused before any text"):
        await _serving(failing, progress)


async def test_a_request_running_when_its_worker_is_cancelled_is_answered_then() -> None:
    """At shutdown the app cancels workers whose requests did not stop in time (an engine call stuck
    in native code): each such request is answered then, not left to wait for its deadline."""
    release = threading.Event()
    outcome: dict[str, Any] = {}

    def stuck(engine: Any, stop: StopFlag, sink: TextSink) -> str:
        release.wait(DEADLINE_S)  # never looks at its stop flag
        return "too late"

    worker = ModelWorker("stuck", _Placeholder(), anyio.CapacityLimiter(1), queue_depth=4)

    async def caller() -> None:
        try:
            outcome["value"] = await worker.call(stuck, NEVER_S, None, NEVER_S)
        except UserError as exc:
            outcome["error"] = exc

    try:
        with anyio.fail_after(DEADLINE_S / 2):
            async with anyio.create_task_group() as callers:
                callers.start_soon(caller)
                async with anyio.create_task_group() as serving:
                    serving.start_soon(worker.serve)
                    await anyio.wait_all_tasks_blocked()  # the request runs on its thread
                    serving.cancel_scope.cancel()
    finally:
        release.set()
    assert isinstance(outcome.get("error"), ModelUnloadedError), outcome
    assert "server stopped" in str(outcome["error"])
