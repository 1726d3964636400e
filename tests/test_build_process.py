"""Builds run in a child process the caller owns: a crash or an interrupt there leaves nothing half
made, its temporary files stay in the models directory, and it does not outlive its caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from openarc_mcp.errors import CatalogueError
from openarc_mcp.library.build_process import run_build
from openarc_mcp.library.store import staged_model_dir

# ----- build steps: module-level, as the child imports them -------------------------------------


def _killed(output: Path) -> str:
    (output / "openvino_model.bin").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return "fp32"


def _aborted(output: Path) -> str:
    (output / "openvino_model.bin").write_bytes(b"half")
    os.abort()  # as a native library's std::terminate does


def _temporary_files_in_the_library(output: Path) -> str:
    scratch = Path(tempfile.mkdtemp())
    (scratch / "export.xml").write_text("an export's temporary copy")
    if scratch.parent.parent != output.parent or os.environ["TMPDIR"] != str(scratch.parent):
        raise CatalogueError(f"temporary files went to {scratch}")
    (output / "openvino_model.bin").write_bytes(b"whole")
    return "fp32"


def _failing_with_an_unpicklable_error(output: Path) -> str:
    class LocalError(Exception):  # a class pickle cannot find by name
        pass

    raise LocalError("the converter's own words")


class _TwoPartError(Exception):
    def __init__(self, what: str, why: str) -> None:  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{what}: {why}")


def _failing_with_an_error_that_does_not_unpickle(output: Path) -> str:
    raise _TwoPartError("the export", "the converter's own words")


def _sleeping(pid_file: Path) -> str:
    pid_file.write_text(str(os.getpid()))
    time.sleep(600)
    return "never"


def _sleeping_in_native_code(pid_file: Path) -> str:
    """Asleep in C with the GIL held, as an export's serialisation is: no Python thread runs."""
    import ctypes

    pid_file.write_text(str(os.getpid()))
    ctypes.PyDLL(None).sleep(600)
    return "never"


def _sleeping_through_sigterm(pid_file: Path) -> str:
    """A build slow to end: it ignores SIGTERM, so the caller's cleanup waits for its kill."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return _sleeping(pid_file)


def _exiting(output: Path) -> str:
    sys.exit(0)  # a library's own sys.exit: neither a success nor the caller's exit


# ----- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "words"), [(_killed, "SIGKILL: out of memory"), (_aborted, "crashed (SIGABRT)")]
)
def test_a_build_process_that_dies_is_an_error_and_leaves_nothing(
    tmp_path: Path, step: Callable[[Path], str], words: str
) -> None:
    dying = pytest.raises(CatalogueError, match=r"m: the build's process .*nothing was kept")
    with dying as caught, staged_model_dir(tmp_path, "m") as staging:
        run_build("m", tmp_path, step, staging)
    assert words in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_go_beside_the_staging_folder_and_are_removed(tmp_path: Path) -> None:
    with staged_model_dir(tmp_path, "m") as staging:
        assert run_build("m", tmp_path, _temporary_files_in_the_library, staging) == "fp32"
    assert [path.name for path in tmp_path.iterdir()] == ["m"]
    assert [path.name for path in (tmp_path / "m").iterdir()] == ["openvino_model.bin"]


@pytest.mark.parametrize(
    "step", [_failing_with_an_unpicklable_error, _failing_with_an_error_that_does_not_unpickle]
)
def test_an_error_that_does_not_pickle_arrives_as_its_text(
    tmp_path: Path, step: Callable[[Path], str]
) -> None:
    with pytest.raises(CatalogueError, match="the converter's own words"):
        run_build("m", tmp_path, step, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_library_exit_in_the_build_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"the build ended early, with SystemExit\(0\)"):
        run_build("m", tmp_path, _exiting, tmp_path)


def test_a_build_ends_with_its_caller_even_in_native_code(tmp_path: Path) -> None:
    """A caller killed outright (no cleanup of its own) does not leave its build running, even
    one in native code that holds the GIL (no thread of the build's own can act then)."""
    caller, build_pid = _caller_with_a_build(tmp_path, "_sleeping_in_native_code")
    caller.kill()
    caller.wait(10)
    deadline = time.monotonic() + 10
    while _running(build_pid):
        assert time.monotonic() < deadline, "the build outlived its caller"
        time.sleep(0.05)


@pytest.mark.parametrize(("signals", "status"), [(["SIGINT"], 130), (["SIGTERM"], 143), (["SIGHUP"], 129)])
def test_an_interrupt_or_a_stop_ends_the_build_and_leaves_nothing(
    tmp_path: Path, signals: list[str], status: int
) -> None:
    """Ctrl-C, a service stop (SIGTERM) or a closed terminal (SIGHUP) in the caller: the build
    (asleep for ten minutes) is ended, and the staging and scratch folders are removed."""
    caller, build_pid = _caller_with_a_build(tmp_path, "_sleeping")
    caller.send_signal(getattr(signal, signals[0]))
    assert caller.wait(20) == status
    assert not _running(build_pid)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["build.pid", "models"]
    assert list((tmp_path / "models").iterdir()) == []


def test_a_second_interrupt_waits_for_the_cleanup(tmp_path: Path) -> None:
    """Ctrl-C twice: the second, while the caller waits for a build slow to end, is held until
    the build is ended and its folders removed, then ends the caller."""
    caller, build_pid = _caller_with_a_build(tmp_path, "_sleeping_through_sigterm")
    caller.send_signal(signal.SIGINT)
    time.sleep(0.5)  # inside the cleanup: the build ignores SIGTERM, it is killed after 2 s
    caller.send_signal(signal.SIGINT)
    assert caller.wait(30) == 130
    assert not _running(build_pid)
    assert list((tmp_path / "models").iterdir()) == []


def _caller_with_a_build(tmp_path: Path, step: str) -> tuple[subprocess.Popen[bytes], int]:
    """A process that stages a model and runs ``step`` as its build; with the build's pid once it runs."""
    pid_file, models = tmp_path / "build.pid", tmp_path / "models"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from openarc_mcp.library import build_process
        from openarc_mcp.library.store import staged_model_dir
        from tests.test_build_process import {step}
        build_process._END_GRACE_S = 2.0
        try:
            with staged_model_dir(Path({str(models)!r}), "m") as staging:
                build_process.run_build("m", Path({str(models)!r}), {step}, Path({str(pid_file)!r}))
        except KeyboardInterrupt:
            sys.exit(130)
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and caller.poll() is None, "the build never started"
        time.sleep(0.05)
    return caller, int(pid_file.read_text())


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
