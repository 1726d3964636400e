"""An engine in a process of its own, driven from the server over a pipe.

Two reasons to keep a pipeline out of the server's process, both measured here:

- Some GenAI pipelines hold Python's GIL while they compute: ``ContinuousBatchingPipeline.step()``
  (~10 ms per step for SmolLM2) would stall the server's event loop for as long as anything decodes.
- Some do not give back all their memory when dropped: a ``WhisperPipeline`` keeps ~7 MB per load
  and first use, for good (glibc arena settings do not change it). A process returns all of it when
  it exits, so unloading a model frees what it took.

The child is started with ``spawn`` (no threads are forked), builds the engine with the factory it
is given and runs each call on a thread of its own, so a stop or close message reaches a call that
runs. ``ProcessEngine`` is the server's side: subclasses give it the engine's methods. Messages:

  server → child   ("call", id, method, args, kwargs, streams), ("stop", id, reason), ("close",)
  child → server   ("ready", attributes, described) or ("failed", reason or user error) once,
                   ("text", id, piece), ("done", id, result, error, live attributes)

The child writes nothing to stdout (the MCP wire in stdio mode: its fd 1 is pointed at stderr) and
ends when told to close, when the server's end of the pipe goes away, or when the server's process
is gone, even in the middle of building the engine (a server that exits while a model still loads
does not wait for that thread, and would otherwise leave the child compiling for nobody). A child
that dies answers every call waiting on it with an error; the model can be unloaded and loaded again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, ClassVar

from ..errors import EngineFault, UserError
from .base import StopFlag, TextSink

__all__ = ["READY_DEADLINE", "ProcessEngine", "serve_engine"]

logger = logging.getLogger(__name__)
_WAKE_LOOK = 1.0
"""Seconds between a waiting caller's looks at its call when nothing wakes it (an answer and a stop
both wake it at once): a safety net, and how often it checks a stopped call's grace."""
_CLOSE_DEADLINE = 30.0  # seconds the child gets to stop its calls and exit before it is killed
_RELOAD = "the model is loaded again on its next use (with auto-load), or load it again"
_ORPHAN_POLL = 0.25  # seconds between the child's looks at whether the server still runs
READY_DEADLINE = 3600.0
"""Seconds a model's process may take to build its engine (a big model's first compile takes minutes)."""
_EXIT_CODE_WAIT = 1.0  # seconds the reader waits for a child whose pipe closed to exit, for its code

EngineBuilder = Callable[..., Any]
"""Builds the engine in the child; it must be importable by name (a class or a module function)."""


@dataclass(eq=False)
class _Pending:
    on_text: TextSink | None
    done: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)  # answered, or asked to stop
    result: Any = None
    error: BaseException | None = None

    def finish(self) -> None:
        """The call is answered (its result or error is set): its caller wakes."""
        self.done.set()
        self.wake.set()


class ProcessEngine:
    """The server's side of an engine that lives in a child process.

    ``exported`` attributes of the engine are copied once it is built (``self.attributes``);
    ``live`` ones come back with every answered call (``_absorb``).
    """

    exported: ClassVar[tuple[str, ...]] = ()
    live: ClassVar[tuple[str, ...]] = ()
    stop_grace: ClassVar[float] = 60.0
    """Seconds a call may run on after it was asked to stop; then the child is killed (every engine
    here stops within a token, a sentence or an audio chunk: one that does not is stuck)."""

    def __init__(
        self,
        build: EngineBuilder,
        build_args: tuple[Any, ...],
        label: str,
        ready_within: float = READY_DEADLINE,
    ) -> None:
        """Start the child and wait until it has built the engine: at most ``ready_within`` seconds,
        after which the child is killed and the load fails (a build that hangs must not hold the
        device's load slot for good)."""
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        level = logging.getLogger("openarc_mcp").getEffectiveLevel()
        arguments = (child_end, build, build_args, self.exported, self.live, level, label, os.getpid())
        self._pipe: Any = context.Process(
            target=serve_engine, args=arguments, name=f"openarc-{label}", daemon=True
        )  # the process that holds the pipeline; None once closed
        self._pipe.start()
        child_end.close()
        self.attributes, self._described = self._await_ready(ready_within)
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 0
        self._closed = False  # no new calls: closing, or the child is gone
        self._closing = False  # close() has begun (it runs once, even after the child died)
        self._ended: str | None = None  # why the child ended on its own, once it has
        self._reader = threading.Thread(target=self._read, name=f"openarc-engine-{label}", daemon=True)
        self._reader.start()

    @property
    def process_id(self) -> int | None:
        """The child's process id; ``None`` once closed."""
        process = self._pipe
        try:
            return process.pid if process is not None else None
        except ValueError:  # closed a moment ago, by close() on another thread
            return None

    def describe(self) -> dict[str, object]:
        """What a model resource shows about this engine: the engine's own account, and its process."""
        return {**self._described, "process_id": self.process_id}

    @property
    def ended(self) -> str | None:
        """Why the child ended without being closed (killed, crashed), once it has; else ``None``."""
        return self._ended

    def call(
        self, method: str, *args: Any, stop: StopFlag, on_text: TextSink | None = None, **kwargs: Any
    ) -> Any:
        """``engine.method(*args, **kwargs, stop=..., on_text=...)`` in the child; blocks until answered.

        Setting ``stop`` stops the call there (the engine polls its own flag); ``on_text`` receives
        streamed text on the reader thread.
        """
        pending = _Pending(on_text)
        with self._pending_lock:
            if self._closed or not self._reader.is_alive():
                raise EngineFault(f"the model's process is not running; {_RELOAD}")
            call_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[call_id] = pending
        try:
            self._send(("call", call_id, method, args, kwargs, on_text is not None))
        except Exception as exc:  # the arguments could not be pickled: nothing was sent
            with self._pending_lock:
                self._pending.pop(call_id, None)
            raise EngineFault(f"{method}'s arguments could not be sent to the model's process") from exc
        self._await_answer(pending, call_id, method, stop)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _await_answer(self, pending: _Pending, call_id: int, method: str, stop: StopFlag) -> None:
        """Sleep until the call is answered; a stop is passed on to the child the moment it is set,
        and a child that does not answer within ``stop_grace`` of it is killed."""
        stop.on_set(pending.wake.set)
        stop_sent_at: float | None = None
        while not pending.done.is_set():
            if stop.is_set() and stop_sent_at is None:
                self._send(("stop", call_id, stop.reason))
                stop_sent_at = time.monotonic()
            elif stop_sent_at is not None and time.monotonic() - stop_sent_at > self.stop_grace:
                self._kill_unresponsive(method)  # the reader then answers this call and every other
                stop_sent_at = float("inf")
            pending.wake.wait(_WAKE_LOOK)
            pending.wake.clear()  # what woke it is read again above, before the next sleep

    def _kill_unresponsive(self, method: str) -> None:
        """End a child that was asked to stop a call and did not (hung in native code, say): its
        calls fail, and the model counts as ended, so it is loaded again on its next use."""
        process = self._pipe
        if process is None:
            return
        logger.error(
            "the model's process did not stop %s within %.0f s of being asked; killing it",
            method,
            self.stop_grace,
        )
        with contextlib.suppress(ValueError):  # closed a moment ago
            process.kill()

    def close(self) -> None:
        """Ask the child to stop its calls and exit; kill it if it does not within the deadline."""
        with self._pending_lock:
            if self._closing:
                return
            self._closing = self._closed = True
        self._send(("close",))
        process = self._pipe
        process.join(_CLOSE_DEADLINE)
        if process.is_alive():
            logger.warning("the process of a model did not exit within %.0f s; killing it", _CLOSE_DEADLINE)
            process.kill()
            process.join()
        self._reader.join(_CLOSE_DEADLINE)
        self._conn.close()
        process.close()
        self._pipe = None

    def _absorb(self, live: Mapping[str, Any]) -> None:
        """Take the engine's ``live`` attributes as they were when a call was answered."""
        for name, value in live.items():
            setattr(self, name, value)

    def _await_ready(self, ready_within: float) -> tuple[dict[str, Any], dict[str, object]]:
        try:
            if not self._conn.poll(ready_within):
                self._pipe.kill()
                self._pipe.join(_CLOSE_DEADLINE)
                raise RuntimeError(
                    f"the model's process did not finish loading within {ready_within:g} s; it was stopped"
                )
            message = self._conn.recv()
        except (EOFError, OSError):
            self._end_child(5)
            raise RuntimeError(
                f"the model's process ended while loading (exit code {self._pipe.exitcode}); its "
                "error is on stderr. A program that runs openarc_mcp itself must start from an "
                "importable module whose entry point is guarded by if __name__ == '__main__': "
                "the model's process is spawned and imports it"
            ) from None
        if message[0] != "ready":
            self._end_child(_CLOSE_DEADLINE)
            if isinstance(message[1], UserError):  # an option refused, a folder it cannot use
                raise message[1]
            raise RuntimeError(str(message[1]))
        return message[1], message[2]

    def _end_child(self, within: float) -> None:
        """Wait for a child whose load failed to exit; kill it if it does not within ``within`` s."""
        self._pipe.join(within)
        if self._pipe.is_alive():
            logger.warning("the process of a model that failed to load did not exit; killing it")
            self._pipe.kill()
            self._pipe.join()

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send ``message``; raises if it cannot be pickled (nothing is sent then), and says nothing
        when the child is gone (the reader answers whoever waits)."""
        data = ForkingPickler.dumps(message)
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except (OSError, ValueError):  # a broken pipe, or the connection closed
            pass

    def _read(self) -> None:
        """Deliver the child's messages until its end of the pipe closes, then fail what is left."""
        try:
            while True:
                self._deliver(self._conn.recv())
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("reading from a model's process failed")
        with self._pending_lock:
            left, self._pending = list(self._pending.values()), {}
            self._closed = True
            closing = self._closing
        if not closing:
            self._pipe.join(_EXIT_CODE_WAIT)
            self._ended = f"the model's process ended unexpectedly (exit code {self._pipe.exitcode})"
            logger.error("%s", self._ended)
        for pending in left:
            pending.error = EngineFault(f"the model's process ended during the request; {_RELOAD}")
            pending.finish()

    def _deliver(self, message: tuple[Any, ...]) -> None:
        kind, call_id = message[0], message[1]
        with self._pending_lock:
            pending = self._pending.pop(call_id, None) if kind == "done" else self._pending.get(call_id)
        if kind == "done":
            self._absorb(message[4])
        if pending is None:
            return
        if kind == "text" and pending.on_text is not None:
            pending.on_text(message[2])
        elif kind == "done":
            _, _, pending.result, pending.error, _ = message
            pending.finish()


# ----- the child process -----------------------------------------------------------------------


def serve_engine(
    conn: Connection,
    build: EngineBuilder,
    build_args: tuple[Any, ...],
    exported: tuple[str, ...],
    live: tuple[str, ...],
    log_level: int,
    label: str,
    server_pid: int,
) -> None:
    """The child's main function: build the engine, then serve the server's messages."""
    os.dup2(2, 1)  # stdout may be the MCP wire; nothing of the child's may reach it
    log_format = f"%(levelname)s %(name)s[{label}]: %(message)s"
    logging.basicConfig(level=log_level, stream=sys.stderr, format=log_format)
    _exit_when_orphaned(server_pid)
    try:
        engine = build(*build_args)
        attributes = {name: getattr(engine, name) for name in exported}
        describe = getattr(engine, "describe", None)
        described = dict(describe()) if callable(describe) else {}
    except Exception as exc:
        failure: UserError | str
        if isinstance(exc, UserError):  # the caller's mistake: it crosses as itself, no traceback
            logger.warning("loading the model failed: %s", exc)
            failure = exc
        else:
            logger.exception("loading the model failed")
            failure = _load_failure(exc)
        _report_load(conn, ("failed", failure))
        return
    if _report_load(conn, ("ready", attributes, described)):
        _Child(conn, engine, live).serve()


def _report_load(conn: Connection, message: tuple[Any, ...]) -> bool:
    """Tell the server how the load went; ``False`` when it no longer listens (it stopped waiting)."""
    try:
        conn.send(message)
    except OSError:
        logger.info("the server stopped waiting for this model; exiting")
        return False
    return True


def _exit_when_orphaned(server_pid: int) -> None:
    """End this process as soon as the server that started it is gone, whatever it is doing then.

    A server exits without waiting for a thread still loading a model (``cli.py``), so nobody would
    ever read this child's answer; without this it would finish compiling, fail to report, and only
    then end. Its parent changes when the server's process ends (it is re-parented).
    """

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(_ORPHAN_POLL)
        logger.info("the server's process has ended; exiting")
        os._exit(0)

    threading.Thread(target=watch, name="openarc-server-watch", daemon=True).start()


def _load_failure(exc: Exception) -> str:
    """What the server's load error says of a fault (user errors cross as themselves)."""
    return f"{type(exc).__name__}: {exc}"


class _Child:
    """The child's side of the pipe: runs each call on a thread and answers it."""

    def __init__(self, conn: Connection, engine: Any, live: tuple[str, ...]) -> None:
        self._conn = conn
        self._engine = engine
        self._live = live
        self._send_lock = threading.Lock()
        self._stops: dict[int, StopFlag] = {}
        self._calls: list[threading.Thread] = []

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
            self._finish()

    def _finish(self) -> None:
        """Stop every call, wait for each to answer, then release the engine."""
        for stop in list(self._stops.values()):
            stop.set("unloaded")
        for thread in self._calls:
            thread.join(_CLOSE_DEADLINE)
        close = getattr(self._engine, "close", None)
        if callable(close):
            close()

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] == "stop":
            stop = self._stops.get(message[1])
            if stop is not None:
                stop.set(message[2])
            return
        _, call_id, method, args, kwargs, streams = message
        stop = StopFlag()
        self._stops[call_id] = stop
        if streams:
            kwargs["on_text"] = self._text_sink(call_id)
        thread = threading.Thread(
            target=self._run, args=(call_id, method, args, kwargs, stop), name=f"openarc-call-{call_id}"
        )
        self._calls = [running for running in self._calls if running.is_alive()]
        self._calls.append(thread)
        thread.start()

    def _text_sink(self, call_id: int) -> TextSink:
        def on_text(piece: str) -> None:
            self._send(("text", call_id, piece))

        return on_text

    def _run(
        self, call_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], stop: StopFlag
    ) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = getattr(self._engine, method)(*args, stop=stop, **kwargs)
        except Exception as exc:
            error = _sendable(exc, method)
        self._stops.pop(call_id, None)
        try:
            live = {name: getattr(self._engine, name) for name in self._live}
            self._send(("done", call_id, result, error, live))
        except Exception:  # the answer could not be pickled (nothing was written): say so instead
            logger.exception("the result of %s could not be sent", method)
            fault = EngineFault(f"{method} gave a result that the model's process could not send back")
            self._send(("done", call_id, None, fault, {}))

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send ``message``; raises if it cannot be pickled (some pickling errors are ValueErrors:
        they must not pass for a closed pipe, or the call they answer would never be answered)."""
        data = ForkingPickler.dumps(message)
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except (OSError, ValueError):
            pass  # the server is gone; serve() ends at its next read


def _sendable(error: BaseException, method: str) -> BaseException:
    """Errors the caller can act on travel as they are; anything else as a generic engine fault."""
    if isinstance(error, UserError | EngineFault):
        return error
    logger.error("%s failed", method, exc_info=error)
    return EngineFault(f"{method} failed: {type(error).__name__}")
