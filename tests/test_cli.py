"""The command line: help everywhere, settings from flags and OPENARC_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openarc_mcp.cli import build_parser, settings_from

from .conftest import EMBEDDER, LLM


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "openarc_mcp", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize(
    "command",
    [(), ("serve",), ("models",), ("models", "prepare"), ("models", "list"), ("demo",), ("devices",)],
)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    completed = _run(*command, "--help")
    assert completed.returncode == 0
    assert "usage: openarc-mcp" in completed.stdout
    assert "OPENARC_MODELS_DIR" in completed.stdout or command == ("models",)


def test_flag_beats_variable_beats_default() -> None:
    parser = build_parser()
    environ = {"OPENARC_DEVICE": "GPU", "OPENARC_QUEUE_DEPTH": "3", "OPENARC_PRELOAD": "a, b"}
    settings = settings_from(parser.parse_args(["serve", "--device", "NPU"]), environ)
    assert settings.device == "NPU"
    assert settings.queue_depth == 3
    assert settings.preload == ["a", "b"]
    assert settings_from(parser.parse_args([]), {}).device == "CPU"


def test_boolean_variable_and_flag() -> None:
    parser = build_parser()
    assert settings_from(parser.parse_args([]), {"OPENARC_AUTO_LOAD": "false"}).auto_load is False
    assert settings_from(parser.parse_args(["--auto-load"]), {"OPENARC_AUTO_LOAD": "0"}).auto_load is True


def test_invalid_setting_exits_with_a_message() -> None:
    completed = _run("serve", "--queue-depth", "0")
    assert completed.returncode == 2
    assert "--queue-depth / OPENARC_QUEUE_DEPTH" in completed.stderr
    assert completed.stdout == ""


def test_models_list_shows_the_prepared_model(models_dir: Path) -> None:
    completed = _run("models", "list", "--json", "--models-dir", str(models_dir))
    assert completed.returncode == 0, completed.stderr
    rows = {row["name"]: row for row in json.loads(completed.stdout)}
    assert rows[LLM]["state"] == "prepared"
    assert rows[LLM]["type"] == "llm"


def test_prepare_unknown_name_fails_clearly(tmp_path: Path) -> None:
    completed = _run("models", "prepare", "gpt-17", "--models-dir", str(tmp_path))
    assert completed.returncode == 1
    assert "not in the catalogue: gpt-17" in completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_devices_command_prints_json() -> None:
    completed = _run("devices")
    assert completed.returncode == 0, completed.stderr
    assert "CPU" in {device["name"] for device in json.loads(completed.stdout)}


def test_bad_config_file_stops_the_server_with_its_reason(tmp_path: Path) -> None:
    config = tmp_path / "openarc.toml"
    config.write_text('[[models]]\nname = "x"\ncolour = "blue"\n')
    completed = subprocess.run(
        [sys.executable, "-m", "openarc_mcp", "serve", "--config", str(config)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert "colour" in completed.stderr and str(config) in completed.stderr
    assert completed.stdout == ""


def test_settings_flags_work_before_and_after_the_command() -> None:
    parser = build_parser()
    assert settings_from(parser.parse_args(["--queue-depth", "4", "serve"]), {}).queue_depth == 4
    assert settings_from(parser.parse_args(["serve", "--queue-depth", "5"]), {}).queue_depth == 5
    listing = settings_from(parser.parse_args(["--models-dir", "/m", "models", "list"]), {})
    assert listing.models_dir == Path("/m")


def test_models_dir_follows_xdg_cache_home() -> None:
    settings = settings_from(build_parser().parse_args([]), {"XDG_CACHE_HOME": "/xdg"})
    assert settings.models_dir == Path("/xdg/openarc-mcp/models")


def test_log_level_is_case_insensitive() -> None:
    assert settings_from(build_parser().parse_args([]), {"OPENARC_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_relative_model_path_in_config_is_relative_to_the_file(tmp_path: Path) -> None:
    from openarc_mcp.settings import load_config_file

    config = tmp_path / "conf" / "openarc.toml"
    config.parent.mkdir()
    config.write_text('[[models]]\nname = "m"\npath = "../weights/m"\ntype = "llm"\n')
    (model,) = load_config_file(config)
    assert model.path == config.parent / "../weights/m"


def test_a_config_files_problems_are_placed_as_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openarc_mcp.errors import InvalidRequestError
    from openarc_mcp.settings import load_config_file

    config = tmp_path / "openarc.toml"
    config.write_text('[[models]]\nname = "m"\n[[models]]\npath = "x"\ncolour = 1\n')
    with pytest.raises(InvalidRequestError) as refused:
        load_config_file(config)
    assert str(refused.value).endswith(  # not pydantic's report, naming its own _ConfigFile
        "models[1].name: Field required; models[1].colour: Extra inputs are not permitted"
    )
    config.write_text('[[models]]\nname = "m"\n[[models]]\nname = "m"\n')
    with pytest.raises(InvalidRequestError, match="m listed more than once"):
        load_config_file(config)
    config.write_text('[[models]]\nname = "m"\npath = "weights/m"\n')
    monkeypatch.chdir(tmp_path)  # a config file named relatively: its models' paths are shown whole
    (model,) = load_config_file(Path("openarc.toml"))
    assert model.path is not None and model.path == tmp_path.resolve() / "weights/m"


def test_demo_runs_every_tool_end_to_end(models_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENARC_")}
    env |= {"OPENARC_MODELS_DIR": str(models_dir), "OPENARC_OUTPUT_DIR": str(tmp_path)}
    completed = _run("demo", env=env, timeout=400)
    assert completed.returncode == 0, _server_trouble(completed.stderr)
    out = completed.stdout
    assert "answer: The capital of France is Paris." in out
    assert '== generate held to a JSON Schema ({city, country})\n   answer: {"city":"Paris",' in out
    assert "== rerank" in out and "16 concurrent one-text embed calls answered" in out
    assert (
        "== speak (kokoro-82m" in out
        and "== transcribe (whisper-base-int8) of that file: 'The capital" in out
    )


def _server_trouble(stderr: str) -> str:
    """What the server logged about a failure (a native crash's stacks, errors), then the tail."""
    marks = ("Fatal Python error", "Segmentation fault", "Thread 0x", "File ", "ERROR", "Traceback")
    lines = [line for line in stderr.splitlines() if line.lstrip().startswith(marks)]
    return "\n".join(lines[:80]) + "\n----- tail -----\n" + stderr[-3000:]


def test_inspect_in_a_fresh_process_reads_the_tokenizer_graphs(models_dir: Path) -> None:
    """A fresh process has not loaded OpenVINO's tokenizer operations (in this test process other
    tests have): `models inspect` must register them itself."""
    completed = _run("models", "inspect", EMBEDDER, "--models-dir", str(models_dir))
    assert completed.returncode == 0, completed.stderr[-2000:]
    graphs = json.loads(completed.stdout)["graphs"]
    assert {"openvino_model.xml", "openvino_tokenizer.xml"} <= set(graphs), graphs
    assert graphs["openvino_tokenizer.xml"]["inputs"], graphs["openvino_tokenizer.xml"]


_BUILD_LOG = "OPENARC_TEST_BUILD_LOG"


def _needs_the_extra(wheels: dict[str, Path], output: Path) -> str:
    """A catalogue build step (module-level: builds run in a child process) that cannot build."""
    from openarc_mcp.errors import CatalogueError

    raise CatalogueError("building it needs the 'convert' extra (torch, optimum-intel)")


def _slow_build(wheels: dict[str, Path], output: Path) -> str:
    """A catalogue build step that takes a second and notes each build in the file $OPENARC_TEST_BUILD_LOG."""
    import time

    with Path(os.environ[_BUILD_LOG]).open("a") as log:
        log.write("built\n")
    time.sleep(1.0)
    (output / "weights.bin").write_bytes(b"w")
    return "fp32"


def test_prepare_goes_on_past_a_model_that_cannot_be_prepared(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain install cannot build the models that need the 'convert' extra: preparing everything
    must still prepare the rest, then say which were not prepared and why."""
    from openarc_mcp.errors import CatalogueError
    from openarc_mcp.library import catalogue, prepare
    from openarc_mcp.schema import ModelType

    broken = catalogue.CatalogueEntry(
        name="aaa-broken", model_type=ModelType.LLM, description="", license="", packages=(),
        build=_needs_the_extra, origin="a test",
    )  # fmt: skip
    monkeypatch.setitem(catalogue.CATALOGUE, broken.name, broken)
    (tmp_path / LLM).symlink_to(models_dir / LLM)  # prepared already
    outcome = prepare.prepare_each([broken.name, LLM], tmp_path)
    assert [model.name for model in outcome.prepared] == [LLM]
    assert "'convert' extra" in outcome.failed[broken.name]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".lock", LLM]  # nothing half-made left
    with pytest.raises(CatalogueError, match="not prepared: aaa-broken: building it needs"):
        prepare.prepare_models([broken.name, LLM], tmp_path)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"OPENARC_MODELS_DIR": ""}, "--models-dir / OPENARC_MODELS_DIR: Value error, an empty path"),
        ({"OPENARC_PORT": "eighty"}, "--port / OPENARC_PORT: Input should be a valid integer"),
        ({"OPENARC_AUTO_LOAD": "maybe"}, "--auto-load / OPENARC_AUTO_LOAD: expected a boolean (true/false)"),
    ],
)
def test_bad_settings_name_their_flag_and_variable(env: dict[str, str], words: str) -> None:
    completed = _run("models", "list", env={**os.environ, **env})
    assert completed.returncode == 2 and words in completed.stderr, completed.stderr
    assert "errors.pydantic.dev" not in completed.stderr


def test_a_home_relative_models_dir_is_expanded(tmp_path: Path) -> None:
    from openarc_mcp.settings import Settings

    settings = Settings(models_dir="~/models-here", output_dir="~/speech")  # type: ignore[arg-type]
    assert settings.models_dir == Path.home() / "models-here"
    assert settings.output_dir == Path.home() / "speech"


def test_a_cached_wheel_is_used_only_when_its_sha256_matches_the_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged, cut or replaced wheel in the download cache is downloaded again, by pip in
    hash-checking mode; a wheel pip brings that does not match is refused and deleted."""
    import hashlib
    import subprocess

    from openarc_mcp.errors import CatalogueError
    from openarc_mcp.library import wheels

    good = b"PK the real wheel's bytes"
    pin = wheels.PackagePin("pkg", "1.0", hashlib.sha256(good).hexdigest())
    cached = tmp_path / "pkg-1.0-py3-none-any.whl"
    downloads: list[str] = []
    served = [good]

    def pip(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        requirements = Path(command[command.index("-r") + 1]).read_text()
        downloads.append(requirements.strip())
        assert "--require-hashes" in command
        cached.write_bytes(served[0])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", pip)
    cached.write_bytes(good)
    assert wheels.download_wheel(pin, tmp_path) == cached and downloads == []  # the cached copy
    cached.write_bytes(good[:-3])  # cut short
    assert wheels.download_wheel(pin, tmp_path) == cached and cached.read_bytes() == good
    assert downloads == [f"pkg==1.0 --hash=sha256:{pin.sha256}"]
    served[0] = b"PK another file in the same version"
    cached.unlink()
    with pytest.raises(CatalogueError, match=r"no wheel of pkg==1\.0 .* has its sha256"):
        wheels.download_wheel(pin, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # nothing kept, no scratch left
    served[0] = good  # beside a stale file of the same version, the one with the pinned hash is found
    stale = tmp_path / "pkg-1.0-py2.py3-none-any.whl"
    stale.write_bytes(b"PK an older download")
    assert wheels.download_wheel(pin, tmp_path) == cached and not stale.exists()


def test_the_catalogue_pins_every_wheel_it_uses() -> None:
    from openarc_mcp.library.catalogue import CATALOGUE, PINS

    used = {pin for entry in CATALOGUE.values() for pin in entry.packages}
    assert used == set(PINS.values())
    assert all(len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0 for pin in used)


def test_two_preparations_of_one_model_at_once_build_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts running `models prepare` (or `demo`) at once: the second waits for the first and
    finds the model prepared, instead of building it again and racing to put it in place."""
    import threading

    from openarc_mcp.library import catalogue, prepare
    from openarc_mcp.schema import ModelType

    builds = tmp_path.parent / f"{tmp_path.name}-builds"  # outside the library
    monkeypatch.setenv(_BUILD_LOG, str(builds))
    entry = catalogue.CatalogueEntry(
        name="slow-one", model_type=ModelType.EMBEDDING, description="", license="", packages=(),
        build=_slow_build, origin="a test",
    )  # fmt: skip
    monkeypatch.setitem(catalogue.CATALOGUE, entry.name, entry)
    outcomes: list[prepare.Preparation] = []

    def run() -> None:
        outcomes.append(prepare.prepare_each([entry.name], tmp_path))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert builds.read_text().splitlines() == ["built"]
    assert len(outcomes) == 2
    assert all(not outcome.failed and outcome.prepared[0].name == "slow-one" for outcome in outcomes)


def test_demo_takes_the_model_it_documents() -> None:
    """argparse read "--model" as an ambiguous abbreviation of the top-level "--models-dir" and
    "--model-roots" before the demo's own "--model" could take it."""
    from openarc_mcp.cli import build_parser

    parsed = build_parser().parse_args(["demo", "--model", "smollm2-135m-instruct", "--prompt", "Hi"])
    assert (parsed.model, parsed.prompt) == ("smollm2-135m-instruct", "Hi")
    assert build_parser().parse_args(["demo", "--model=x"]).model == "x"
