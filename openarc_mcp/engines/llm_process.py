"""A continuously batching LLM in a process of its own, driven from the server over a pipe.

GenAI's ``ContinuousBatchingPipeline.step()`` holds Python's GIL while it computes (~10 ms per step
for SmolLM2, far more for bigger models), which would stall the server's event loop — every other
request, progress notification and ping — for as long as anything decodes. So the pipeline and its
stepping thread live in a child process (``spawn``: no threads are forked), and the server keeps a
``BatchedLLMEngine``: a proxy with the same ``generate`` as every text engine. Messages:

  server → child   ("generate", id, prompt, options, apply_chat_template), ("cancel", id, reason),
                   ("close",)
  child → server   ("ready", info) or ("failed", reason) once, ("text", id, piece),
                   ("done", id, output, error, steps)

The child writes nothing to stdout (the MCP wire in stdio mode: its fd 1 is pointed at stderr) and
ends when told to close or when the server's end of the pipe goes away (the server died). A child
that dies answers every request waiting on it with an error; the model can be unloaded and loaded again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import EngineFault, UserError
from ..schema import ChatMessage, GenerationOptions, RuntimeValue
from .base import StopFlag, TextSink
from .batched_llm import ContinuousBatcher, SchedulerSettings
from .generation import GenerationOutput

__all__ = ["BatchedLLMEngine"]

logger = logging.getLogger(__name__)
_STOP_POLL = 0.01  # seconds between a waiting caller's looks at its stop flag
_CLOSE_DEADLINE = 30.0  # seconds the child gets to cancel its requests and exit before it is killed


@dataclass(eq=False)
class _Pending:
    on_text: TextSink
    done: threading.Event = field(default_factory=threading.Event)
    output: GenerationOutput | None = None
    error: BaseException | None = None


class BatchedLLMEngine:
    """Continuous batching of ``generate`` calls on one LLM, computed in a child process."""

    def __init__(
        self, path: Path, device: str, properties: dict[str, RuntimeValue], settings: SchedulerSettings
    ) -> None:
        self.settings = settings
        self.concurrency = settings.max_concurrent_requests
        self.steps = 0
        """Pipeline steps run so far (as of the last finished request); each advances every running
        request by up to one token."""
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        level = logging.getLogger("openarc_mcp").getEffectiveLevel()
        arguments = (child_end, str(path), device, properties, settings, level)
        self._pipe: Any = context.Process(
            target=serve_model, args=arguments, name=f"openarc-llm-{path.name}", daemon=True
        )  # the process that holds the pipeline; None once closed
        self._pipe.start()
        child_end.close()
        self._info = self._await_ready()
        self.token_limit: int | None = self._info.get("token_limit")
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 0
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"openarc-cb-{path.name}", daemon=True)
        self._reader.start()

    def _await_ready(self) -> dict[str, Any]:
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._pipe.join(5)
            raise RuntimeError(
                f"the model's process ended while loading (exit code {self._pipe.exitcode})"
            ) from None
        if message[0] != "ready":
            self._pipe.join(_CLOSE_DEADLINE)
            raise RuntimeError(str(message[1]))
        info: dict[str, Any] = message[1]
        return info

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine."""
        return {
            "prompt_token_limit": self.token_limit,
            "batching": "continuous",
            "max_concurrent_requests": self.concurrency,
            "kv_cache_gb": self.settings.kv_cache_gb or "grows as needed",
            "max_batched_tokens": self.settings.max_batched_tokens,
            "prefix_caching": self.settings.prefix_caching,
            "process_id": self._pipe.pid if self._pipe is not None else None,
        }

    def generate(
        self,
        prompt: str | list[ChatMessage],
        options: GenerationOptions,
        on_text: TextSink,
        stop: StopFlag,
        *,
        apply_chat_template: bool = True,
    ) -> GenerationOutput:
        """Generate a completion; blocks the calling thread while the model's process decodes."""
        pending = _Pending(on_text)
        with self._pending_lock:
            if self._closed or not self._reader.is_alive():
                raise EngineFault("the model's process is not running")
            request_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[request_id] = pending
        self._send(("generate", request_id, prompt, options, apply_chat_template))
        cancel_sent = False
        while not pending.done.wait(_STOP_POLL):
            if stop.is_set() and not cancel_sent:
                self._send(("cancel", request_id, stop.reason))
                cancel_sent = True
        if pending.error is not None:
            raise pending.error
        assert pending.output is not None
        return pending.output

    def close(self) -> None:
        """Ask the child to cancel what runs and exit; kill it if it does not within the deadline."""
        with self._pending_lock:
            if self._closed:
                return
            self._closed = True
        self._send(("close",))
        process = self._pipe
        process.join(_CLOSE_DEADLINE)
        if process.is_alive():
            logger.warning("the process of an LLM did not exit within %.0f s; killing it", _CLOSE_DEADLINE)
            process.kill()
            process.join()
        self._reader.join(_CLOSE_DEADLINE)
        self._conn.close()
        process.close()
        self._pipe = None

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError):  # the child is gone: the reader answers whoever waits
            pass

    def _read(self) -> None:
        """Deliver the child's messages until its end of the pipe closes, then fail what is left."""
        try:
            while True:
                message = self._conn.recv()
                self._deliver(message)
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("reading from an LLM's process failed")
        with self._pending_lock:
            left, self._pending = list(self._pending.values()), {}
            self._closed = True
        for pending in left:
            pending.error = EngineFault("the model's process ended while generating")
            pending.done.set()

    def _deliver(self, message: tuple[Any, ...]) -> None:
        kind, request_id = message[0], message[1]
        with self._pending_lock:
            pending = self._pending.get(request_id)
            if kind == "done":
                self._pending.pop(request_id, None)
        if pending is None:
            return
        if kind == "text":
            pending.on_text(message[2])
        elif kind == "done":
            _, _, pending.output, pending.error, steps = message
            self.steps = max(self.steps, steps)
            pending.done.set()


# ----- the child process -----------------------------------------------------------------------


def serve_model(
    conn: Connection,
    path: str,
    device: str,
    properties: dict[str, RuntimeValue],
    settings: SchedulerSettings,
    log_level: int,
) -> None:
    """The child's main function: load the batcher, then serve the server's messages."""
    os.dup2(2, 1)  # stdout may be the MCP wire; nothing of the child's may reach it
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(levelname)s %(name)s[llm]: %(message)s")
    try:
        batcher = ContinuousBatcher(Path(path), device, properties, settings)
    except Exception as exc:
        logger.exception("loading the LLM failed")
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"token_limit": batcher.token_limit}))
    _Child(conn, batcher).serve()


class _Child:
    """The child's side of the pipe: turns messages into batcher requests and back."""

    def __init__(self, conn: Connection, batcher: ContinuousBatcher) -> None:
        self._conn = conn
        self._batcher = batcher
        self._send_lock = threading.Lock()
        self._stops: dict[int, StopFlag] = {}

    def serve(self) -> None:
        try:
            while True:
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    break  # the server went away
                if message[0] == "close":
                    break
                self._handle(message)
        finally:
            self._batcher.close()  # cancels what still runs; each is answered through on_done

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] == "cancel":
            stop = self._stops.get(message[1])
            if stop is not None:
                stop.set(message[2])
            return
        _, request_id, prompt, options, apply_chat_template = message
        stop = StopFlag()
        self._stops[request_id] = stop

        def on_text(piece: str) -> None:
            self._send(("text", request_id, piece))

        def on_done(request: Any) -> None:
            self._stops.pop(request_id, None)
            self._send(("done", request_id, request.output, _sendable(request.error), self._batcher.steps))

        try:
            self._batcher.submit(prompt, options, on_text, stop, apply_chat_template, on_done)
        except Exception as exc:
            self._stops.pop(request_id, None)
            self._send(("done", request_id, None, _sendable(exc), self._batcher.steps))

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError):
            pass  # the server is gone; serve() ends at its next read


def _sendable(error: BaseException | None) -> BaseException | None:
    """Errors the caller can act on travel as they are; anything else as a generic engine fault."""
    if error is None or isinstance(error, UserError | EngineFault):
        return error
    logger.error("generation failed", exc_info=error)
    return EngineFault(f"generation failed: {type(error).__name__}")
