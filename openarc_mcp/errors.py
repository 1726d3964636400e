"""The exception tree of openarc-mcp.

Transports map these to their wire (MCP ``ToolError``, later HTTP statuses) in one place each;
nothing here knows about any transport::

    OpenArcError
    ├── UserError                 the caller can fix it; its message says how
    │   ├── InvalidRequestError   an argument is wrong or missing
    │   ├── ModelNotFoundError    no model of that name (lists the known ones)
    │   ├── ModelChoiceError      no model named and none or several of the needed type loaded
    │   ├── ModelTypeError        the named model is of another type than the tool needs
    │   ├── ModelNotReadyError    the model is loading, failed or unloading
    │   │   └── ModelFailedError  it failed, and stays so until it is loaded again
    │   ├── ModelExistsError      load under a name already in use
    │   ├── ModelPathError        a model path is missing or is not a model folder
    │   ├── ModelLoadError        the engine could not load the model (its reason included)
    │   ├── UnknownEngineError    no engine of that name for the model type
    │   ├── ServerBusyError       the model's queue is full; retry later
    │   ├── RequestTimeoutError   the request did not finish before its deadline
    │   ├── ModelUnloadedError    the model was unloaded before the request finished
    │   └── CatalogueError        an unknown catalogue entry, or a preparation that cannot work
    └── ServerFault               a fault of the server or engine; logged, reported generically
        └── EngineFault           the engine raised while serving one request
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "CatalogueError",
    "EngineFault",
    "InvalidRequestError",
    "ModelChoiceError",
    "ModelExistsError",
    "ModelFailedError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelPathError",
    "ModelTypeError",
    "ModelUnloadedError",
    "OpenArcError",
    "RequestTimeoutError",
    "ServerBusyError",
    "ServerFault",
    "UnknownEngineError",
    "UserError",
    "short_reason",
]


class OpenArcError(Exception):
    """Base of every error raised on purpose by openarc-mcp."""


class UserError(OpenArcError):
    """Raised when the caller can fix the problem; the message says how."""


class InvalidRequestError(UserError):
    """Raised when an argument is wrong, missing or out of range."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        """The argument at fault, where the error knows it (transports name it: HTTP's ``param``)."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its argument (errors from an engine's process cross a pipe)."""
        return type(self), (str(self), self.argument)


class UnusableSchemaError(InvalidRequestError):
    """Raised when a ``json_schema`` is one the engine cannot constrain generation to."""


class ModelNotFoundError(UserError):
    """Raised when no model of the given name is known."""


class ModelChoiceError(UserError):
    """Raised when no model is named and the choice is not unique."""


class ModelTypeError(UserError):
    """Raised when a tool is called on a model of another type."""


class ModelNotReadyError(UserError):
    """Raised when the model is loading, failed to load, or is unloading."""


class ModelFailedError(ModelNotReadyError):
    """Raised when the model failed to load (or its process ended) and stays so until loaded again."""


class ModelExistsError(UserError):
    """Raised when a model is loaded under a name that is already in use."""


class ModelPathError(UserError):
    """Raised when a model path does not exist or does not hold a model."""


class ModelLoadError(UserError):
    """Raised when the engine could not construct the model."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        """The load's argument at fault when the load was refused for the caller's mistake (a device
        not on this machine, an unknown ``runtime_config`` option), ``None`` for other failures."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its argument."""
        return type(self), (str(self), self.argument)


class UnknownEngineError(UserError):
    """Raised when no engine of the given name serves the model type."""


class ServerBusyError(UserError):
    """Raised when a model's request queue is full."""


class RequestTimeoutError(UserError):
    """Raised when a request does not finish before its deadline."""


class ModelUnloadedError(UserError):
    """Raised to requests still pending when their model is unloaded."""


class CatalogueError(UserError):
    """Raised for an unknown catalogue entry or a preparation that cannot proceed."""


class ServerFault(OpenArcError):
    """Raised for faults of the server itself; details go to the log, not the caller."""


class EngineFault(ServerFault):
    """Raised when an engine fails while serving one request; the model stays loaded."""


_SOURCE_LOCATIONS = re.compile(r"^(?:\w+: )?(?:Exception from \S+:\d+:\s*)+")
"""OpenVINO's "Exception from src/.../config.cpp:88:" lines (one per layer the error crossed,
after the exception's type where it crossed a process as text), which say nothing to a caller."""


def short_reason(exc: BaseException, lines: int = 3) -> str:
    """The first lines of a native library's error, without C++ source locations (for messages)."""
    text_lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [_SOURCE_LOCATIONS.sub("", line) for line in text_lines]
    useful = [line for line in said if line and not line.startswith(("Check '", "/", "src/"))] or text_lines
    return (" ".join(useful[:lines]) or type(exc).__name__)[:500]
