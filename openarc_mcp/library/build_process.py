"""Model builds (exports, conversions) run in a child process that the caller owns.

A Ctrl-C, or an out-of-memory kill, can land inside native converter code and end the converting
process outright: OpenVINO's PyTorch frontend calls ``std::terminate`` when a KeyboardInterrupt
reaches it through pybind11, and a process that is gone runs no cleanup. So the build runs in a
spawned child, and the caller (which holds the staging folder, and imports no torch) stays in
plain Python, where an interrupt is an ordinary exception: it ends the child and cleans up,
whatever state the child was in.

The child ignores SIGINT (a terminal sends Ctrl-C to the whole process group: the caller decides),
ends itself when the caller's process is gone, and writes its temporary files (optimum exports to
a temporary folder first) beside the staging folder in the models directory, where the caller
removes them, rather than in ``/tmp``, which may be small or held in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CatalogueError, short_reason
from .signals import interrupts_held

__all__ = ["BUILD_PROCESS_DEADLINE_S", "run_build"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

BUILD_PROCESS_DEADLINE_S = 6 * 3600.0
"""The longest a build may take (a large checkpoint's int4 export runs for tens of minutes)."""
_END_GRACE_S = 10.0
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PR_SET_PDEATHSIG = 1  # prctl(2)
_SCRATCH_PREFIX = ".staging-scratch-"  # hidden from the library; stale ones are removed like staging


def run_build(label: str, scratch_parent: Path, work: Callable[..., R], *args: Any) -> R:
    """``work(*args)`` in a child process; its result, or its exception raised here.

    ``work`` and its arguments must pickle (a module-level function; ``functools.partial`` of
    one). A child that dies without answering (killed, crashed) is a ``CatalogueError``; a
    KeyboardInterrupt here ends the child before it propagates.
    """
    context = multiprocessing.get_context("spawn")
    scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=scratch_parent))
    answers, answer_end = context.Pipe(duplex=False)
    lifeline_end, lifeline = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main,
        args=(
            answer_end,
            lifeline_end,
            work,
            args,
            scratch,
            logging.getLogger().getEffectiveLevel(),
            os.getpid(),
        ),
        name=f"openarc-build-{label}",
    )
    try:
        process.start()
        answer_end.close()
        lifeline_end.close()
        result: R = _answer(label, answers, process)
        return result
    except KeyboardInterrupt:
        logger.info("%s: interrupted; stopping the build", label)
        raise
    finally:
        with interrupts_held():  # a second Ctrl-C waits for the child's end and the removal
            _end(label, process)
            answers.close()
            lifeline.close()
            shutil.rmtree(scratch, ignore_errors=True)


def _answer(label: str, answers: Connection, process: BaseProcess) -> Any:
    """Wait for the child's answer, or its end, within the deadline."""
    ready = wait([answers, process.sentinel], timeout=BUILD_PROCESS_DEADLINE_S)
    if not ready:
        hours = BUILD_PROCESS_DEADLINE_S / 3600
        raise CatalogueError(f"{label}: the build did not finish within {hours:.0f} h; it was stopped")
    if answers in ready or answers.poll():
        try:
            kind, payload, child_traceback = pickle.loads(answers.recv_bytes())
        except EOFError:
            pass  # it died while answering
        else:
            process.join(_END_GRACE_S)  # it ends by itself once it has answered
            if kind == "done":
                return payload
            logger.debug("%s: the build failed in its process:\n%s", label, child_traceback)
            raise payload
    process.join(_END_GRACE_S)
    raise CatalogueError(f"{label}: the build's process {_death(process.exitcode)}; nothing was kept")


def _death(exitcode: int | None) -> str:
    """How a child that never answered ended, in words."""
    if exitcode is None:
        return "stopped answering"
    if exitcode >= 0:
        return f"exited with code {exitcode} without an answer"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    if name == "SIGKILL":
        return "was killed (SIGKILL: out of memory, most likely)"
    return f"crashed ({name})"


def _end(label: str, process: BaseProcess) -> None:
    """Make sure the child is gone: a build that is still running is terminated, then killed."""
    if process.pid is None:
        return  # never started
    if process.is_alive():
        process.terminate()
        process.join(_END_GRACE_S)
    if process.is_alive():
        logger.warning("%s: the build's process ignored SIGTERM; killing it", label)
        process.kill()
        process.join(_END_GRACE_S)


# ----- the child process -----------------------------------------------------------------------


def _child_main(
    answers: Connection, lifeline: Connection, work: Callable[..., Any], args: tuple[Any, ...],
    scratch: Path, log_level: int, caller_pid: int,
) -> None:  # fmt: skip
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides what a Ctrl-C ends
    os.dup2(2, 1)  # stdout carries the command's result; converters print progress
    logging.basicConfig(level=log_level, stream=sys.stderr, format=_LOG_FORMAT, datefmt="%H:%M:%S")
    _killed_with_the_caller(caller_pid)
    _exit_with_the_caller(lifeline)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    try:
        message: tuple[str, Any, str] = ("done", work(*args), "")
    except Exception as exc:  # every failure goes back to the caller, which raises it
        message = ("failed", exc, traceback.format_exc())
    except BaseException as exc:  # a library's sys.exit() or KeyboardInterrupt: not the caller's own
        ended = CatalogueError(f"the build ended early, with {repr(exc)[:200]}")
        message = ("failed", ended, traceback.format_exc())
    answers.send_bytes(_pickled(message))


def _pickled(message: tuple[str, Any, str]) -> bytes:
    """The answer as bytes; an exception that does not pickle goes as a CatalogueError with its text.

    Read back here first: an exception whose constructor takes other arguments than it keeps in
    ``args`` pickles, but fails to unpickle, and the caller must not be the one to find that out.
    """
    try:
        data = pickle.dumps(message)
        pickle.loads(data)
        return data
    except Exception:
        kind, payload, child_traceback = message
        if kind == "done":
            payload = CatalogueError(f"the build's result could not be sent back: {type(payload).__name__}")
        else:
            payload = CatalogueError(short_reason(payload))
        return pickle.dumps(("failed", payload, child_traceback))


def _killed_with_the_caller(caller_pid: int) -> None:
    """Linux: the kernel kills this process when the caller's ends, even while native code holds
    the GIL and the lifeline's thread cannot run (an export's serialisation, say)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != caller_pid:  # it ended before the request above was made
        os._exit(70)


def _exit_with_the_caller(lifeline: Connection) -> None:
    """End this process when the caller's is gone: the lifeline's other end closes with it."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv()
        os._exit(70)

    threading.Thread(target=watch, name="openarc-build-lifeline", daemon=True).start()
