"""One settings object, built at the edge (the CLI) from flags and ``OPENARC_*`` variables.

Every field is a flag ``--field-name`` and a variable ``OPENARC_FIELD_NAME``; a flag beats the
variable, the variable beats the default. No other module reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import InvalidRequestError
from .schema import MAX_MODEL_NAME, MODEL_NAME_PATTERN, ModelType, RuntimeValue

__all__ = ["ENV_PREFIX", "ConfiguredModel", "Settings", "default_models_dir", "load_config_file"]

ENV_PREFIX = "OPENARC_"


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The models directory when none is configured: under the user's cache ($XDG_CACHE_HOME)."""
    cache_root = (environ or {}).get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_root) / "openarc-mcp" / "models"


class Settings(BaseModel):
    """Server settings. Field descriptions double as ``--help`` text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: Path = Field(
        default_factory=default_models_dir,
        description="Folder of prepared models (catalogue and your own).",
    )
    device: str = Field(default="CPU", description="Default OpenVINO device: CPU, GPU, NPU, AUTO, ...")
    config: Path | None = Field(
        default=None, description="TOML file with [[models]] to load at start (name, path, type, ...)."
    )
    preload: list[str] = Field(
        default_factory=list,
        description="Prepared model names to load at start, comma-separated; loads run in the background "
        "(over stdio, from when the handshake is answered).",
    )
    auto_load: bool = Field(
        default=True, description="Load a prepared model on its first use by a tool (the call waits)."
    )
    queue_depth: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=64, description="Requests that may wait per model before callers get a 'busy' error."
    )
    device_concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        default=2,
        description="Inference calls running at once per device, across models (a continuously batching "
        "LLM is bounded by its own max_concurrent_requests instead).",
    )
    request_timeout: Annotated[float, Field(gt=0)] = Field(
        default=600.0,
        description="Seconds a request may take from the model's queue on, queueing included, before it "
        "fails (waits for a media slot or a load have deadlines of their own).",
    )
    load_timeout: Annotated[float, Field(gt=0)] = Field(
        default=900.0, description="Seconds a tool call waits for a model to load."
    )
    default_max_tokens: Annotated[int, Field(ge=1, le=131_072)] = Field(
        default=512, description="max_tokens of generate when the caller gives none."
    )
    progress_interval: Annotated[float, Field(gt=0, le=5)] = Field(
        default=0.1, description="Seconds between progress notifications carrying partial text."
    )
    batch_max_items: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=64, description="Most texts one coalesced embedding call carries (1 turns coalescing off)."
    )
    batch_wait: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.002,
        description="Seconds a forming embed batch waits for the next request; each that joins restarts "
        "the wait (up to 10 times this in all). A lone request runs at once unless requests overlapped "
        "in the last second.",
    )
    max_texts: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=2048, description="Most texts (or documents) one embed or rerank call may carry."
    )
    max_text_chars: Annotated[int, Field(ge=1)] = Field(
        default=100_000, description="Most characters in one text, query or document."
    )
    max_total_chars: Annotated[int, Field(ge=1)] = Field(
        default=4_000_000, description="Most characters in all texts of one embed or rerank call."
    )
    output_dir: Path | None = Field(
        default=None,
        description="Folder that speak may write audio files to; none given: 'outputs' beside the models "
        "directory.",
    )
    max_inline_audio_bytes: Annotated[int, Field(ge=0)] = Field(
        default=800_000,
        description="Largest audio returned inline; longer results are written to a file in output_dir.",
    )
    max_speak_chars: Annotated[int, Field(ge=1)] = Field(
        default=4000, description="Most characters one speak call may synthesise."
    )
    max_media_bytes: Annotated[int, Field(ge=1)] = Field(
        default=100_000_000,
        description="Largest audio or image file (or decoded base64) a tool accepts, in bytes.",
    )
    max_audio_seconds: Annotated[float, Field(gt=0)] = Field(
        default=7200.0, description="Longest audio transcribe accepts, in seconds."
    )
    max_image_pixels: Annotated[int, Field(ge=1)] = Field(
        default=40_000_000, description="Most pixels (width x height) of one image describe_image accepts."
    )
    max_images: Annotated[int, Field(ge=1, le=256)] = Field(
        default=8, description="Most images one describe_image call may carry."
    )
    media_in_flight: Annotated[int, Field(ge=1, le=256)] = Field(
        default=4,
        description="Calls holding decoded images or audio at once, across models (decoded, queued or "
        "running); more wait, within request_timeout. Bounds the memory media takes: a call may hold "
        "max_images x max_image_pixels x 3 bytes, or max_audio_seconds of 16 kHz floats.",
    )
    transport: Literal["stdio", "http"] = Field(
        default="stdio",
        description="How 'serve' talks: stdio (MCP for desktop hosts) or http (MCP streamable HTTP at /mcp, "
        "SSE at /sse, OpenAI-compatible REST under /v1).",
    )
    direct_tool_calls: bool = Field(
        default=True,
        description="Over stdio, serve tool calls straight from the wire instead of the MCP SDK's "
        "per-request path (every tool: those that use their request context use it only to report "
        "progress): same answers and progress, less work per call, but no SDK OpenTelemetry span for them.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP server binds; anything but loopback needs an API key.",
    )
    port: Annotated[int, Field(ge=0, le=65535)] = Field(default=8000, description="Port of the HTTP server.")
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key every HTTP route but /healthz requires (Authorization: Bearer KEY).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="More Host header names HTTP clients may use, comma-separated (name or name:port; "
        "'*' for any, only with an API key). Loopback names and the bound address are always allowed.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the HTTP server (e.g. https://app.example.com), "
        "comma-separated; CORS is answered for exactly these. Loopback origins are always allowed.",
    )
    media_roots: list[str] = Field(
        default_factory=list,
        description="Folders whose audio and image files tools may read by path, comma-separated. None "
        "given: over stdio any readable file; over HTTP no file at all (callers send the data).",
    )
    model_roots: list[str] = Field(
        default_factory=list,
        description="Folders besides models_dir that load_model may load a model_path from, "
        "comma-separated. Models in the --config file may lie anywhere.",
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=16 * 1024 * 1024,
        description="Largest JSON request body over HTTP, in bytes (audio uploads: max_media_bytes).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of the stderr log (DEBUG, INFO, WARNING, ERROR)."
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, value: list[str]) -> list[str]:
        """Each origin as a browser's ``Origin`` header spells it (CORS compares them as strings):
        scheme and host in lower case, no trailing slash, no default port."""
        if "*" in value:
            raise ValueError(
                "allowed_origins cannot be '*': list the browser origins that may call the server"
            )
        return [_browser_origin(origin) for origin in value]

    @field_validator("models_dir", "output_dir", mode="before")
    @classmethod
    def _home_expanded(cls, value: object) -> object:
        """``~`` as a shell would read it (hosts' JSON configs pass it as typed); empty is no folder."""
        if isinstance(value, str | Path):
            if not str(value).strip():
                raise ValueError("an empty path is no folder; give one, or leave the setting out")
            return Path(value).expanduser()
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _browser_origin(value: str) -> str:
    """``value`` (say ``HTTP://App.Example.com:443/``) as browsers send an origin, or a clear error."""
    import re
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    extra = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or not host or extra or port == -1:
        raise ValueError(
            f"'{value}' is not a browser origin: give scheme://host[:port], e.g. https://app.example.com"
        )
    named = f"[{host}]" if ":" in host else host
    default = _DEFAULT_PORTS.get(scheme)  # browsers leave it out; an extension's scheme has none
    return f"{scheme}://{named}" + (f":{port}" if port is not None and port != default else "")


class ConfiguredModel(BaseModel):
    """One ``[[models]]`` entry of the config file."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built only when there is a file

    name: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME, pattern=MODEL_NAME_PATTERN)]
    path: Path | None = None
    type: ModelType | None = None
    device: str | None = None
    engine: str | None = None
    runtime_config: dict[str, RuntimeValue] = Field(default_factory=dict)


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    models: list[ConfiguredModel] = Field(default_factory=list)


def load_config_file(path: Path) -> list[ConfiguredModel]:
    """Read the models listed in a TOML config file; errors name the file and the problem."""
    import tomllib  # only with a config file

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequestError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        models = _ConfigFile.model_validate(raw).models
    except ValidationError as exc:
        raise InvalidRequestError(f"config file {path}: {_config_problems(exc)}") from exc
    names = [model.name for model in models]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # each would fail at load with "name already in use", the first one's load kept
        raise InvalidRequestError(f"config file {path}: {', '.join(twice)} listed more than once")
    folder = path.expanduser().resolve().parent  # shown whole in errors: "rel/none" said too little
    return [_relative_to(model, folder) for model in models]


def _config_problems(exc: ValidationError) -> str:
    """pydantic's errors of a config file, one line each, placed as in the file (``models[0].name``)."""
    problems = []
    for error in exc.errors(include_url=False):
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
        problems.append(f"{where.lstrip('.') or 'the file'}: {error['msg']}")
    return "; ".join(problems)


def _relative_to(model: ConfiguredModel, folder: Path) -> ConfiguredModel:
    """A relative model path in a config file means relative to the file, not to the cwd."""
    if model.path is None or model.path.expanduser().is_absolute():
        return model
    return model.model_copy(update={"path": folder / model.path})
