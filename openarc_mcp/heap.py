"""Keeping the garbage collector's full passes short while serving.

A serving process holds a large, long-lived heap: the MCP SDK, pydantic's schemas, OpenVINO and
GenAI's bindings, the tools' models (about 114,000 objects the collector tracks once an embedding
model is loaded). CPython's full collection walks all of them; measured over stdio, it ran every
~10 bursts of 64 embed calls and each pass stopped the event loop for ~60 ms (the burst took
140-180 ms instead of ~90). Next to none of those objects become garbage while the process serves,
so the serving commands move them out of the collector's view (``gc.freeze``) once start-up is
done and again after each model load; a full pass then walks only what requests created since.

Frozen objects are still freed by reference counting; only cycles among them are not collected.
So settling first collects the young generations (the garbage of requests in flight), and an
unload resettles the heap: every object goes back to the collector, a full collection frees the
unloaded model's objects that sit in reference cycles (one ~60 ms pause per unload), and what
survives is frozen again. In-process users of the app (tests, benchmarks, a program embedding the
app) are left alone: nothing happens outside ``managing()``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["managed", "managing", "resettle", "settle"]

logger = logging.getLogger(__name__)


class _Policy:
    enabled = False


@contextmanager
def managing() -> Iterator[None]:
    """Take charge of this process's heap while inside (the serving commands do): settle it now and
    after each load; on the way out every object goes back to the collector."""
    _Policy.enabled = True
    settle()
    try:
        yield
    finally:
        _Policy.enabled = False
        gc.unfreeze()


def managed() -> bool:
    """Whether the heap is being managed (inside ``managing()``)."""
    return _Policy.enabled


def settle() -> None:
    """Exempt what is alive now from the collector's passes (after start-up, after each load)."""
    if _Policy.enabled:
        gc.collect(1)
        gc.freeze()
        if logger.isEnabledFor(logging.DEBUG):  # counting walks every frozen object: ~10 ms
            logger.debug("heap settled: %d objects out of the collector's passes", gc.get_freeze_count())


def resettle() -> None:
    """After an unload: collect everything, so the unloaded model's objects in reference cycles are
    freed, then settle what survives."""
    if _Policy.enabled:
        gc.unfreeze()
        gc.collect()
        settle()
