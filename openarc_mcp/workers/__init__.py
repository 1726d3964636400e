"""The worker layer: one anyio worker per model, the only place that calls engines."""

from .worker import BatchPart, BatchSettings, ModelWorker, ProgressSink, Work

__all__ = ["BatchPart", "BatchSettings", "ModelWorker", "ProgressSink", "Work"]
