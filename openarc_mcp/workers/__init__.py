"""The worker layer: one anyio worker per model, the only place that calls engines."""

from .worker import ModelWorker, ProgressSink, Work

__all__ = ["ModelWorker", "ProgressSink", "Work"]
