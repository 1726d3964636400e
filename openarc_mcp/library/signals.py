"""Signals around half-made models: ending signals become exceptions, and cleanup is not cut short.

Python turns Ctrl-C (SIGINT) into KeyboardInterrupt, so ``finally`` blocks remove what a build
left; SIGTERM (a service stop, ``timeout``) and SIGHUP (a closed terminal) end the process on the
spot by default, and nothing is removed. While a model is being written, ``ending_signals_raise``
makes them raise ``SystemExit(128 + signal)`` instead (the exit status a shell reports for them).
``interrupts_held`` holds all three while cleanup runs, then delivers the first one.

Python lets only the main thread set handlers; elsewhere both are no-ops, as are signals a
process ignores or handles itself (a host's own handler is never replaced).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["ending_signals_raise", "interrupts_held"]

_ENDING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


@contextlib.contextmanager
def ending_signals_raise() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` where their default would end
    the process outright."""

    def ending(number: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + number)

    with _handled(_ENDING, ending, only_replacing_default=True):
        yield


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Inside, SIGINT, SIGTERM and SIGHUP are noted, not acted on; the first is raised again on
    leaving (through the handler it had), so a second Ctrl-C cannot cut a cleanup short."""
    held: list[int] = []

    def hold(number: int, frame: FrameType | None) -> None:
        held.append(number)

    try:
        with _handled((signal.SIGINT, *_ENDING), hold, only_replacing_default=False):
            yield
    finally:
        if held:
            signal.raise_signal(held[0])


@contextlib.contextmanager
def _handled(
    numbers: tuple[int, ...], handler: Callable[[int, FrameType | None], None], only_replacing_default: bool
) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, _Handler] = {}
    for number in numbers:
        current = signal.getsignal(number)
        if current in (signal.SIG_IGN, None) or (only_replacing_default and current is not signal.SIG_DFL):
            continue
        previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
