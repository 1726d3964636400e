"""Engines: one OpenVINO GenAI pipeline per model type, behind the small ``Engine`` protocol.

Engines take plain arguments and return plain results; they know nothing of transports, workers
or settings, so they can be tested and benchmarked alone. Importing this package does not import
OpenVINO: each engine module imports it when a model is constructed.
"""

from .base import Engine, StopFlag, TextSink

__all__ = ["Engine", "StopFlag", "TextSink"]
