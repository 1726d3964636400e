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


def test_a_build_ends_with_its_caller(tmp_path: Path) -> None:
    """A caller killed outright (no cleanup of its own) does not leave its build running."""
    pid_file = tmp_path / "build.pid"
    caller = textwrap.dedent(
        f"""
        from pathlib import Path
        from openarc_mcp.library.build_process import run_build
        from tests.test_build_process import _sleeping
        run_build("m", Path({str(tmp_path)!r}), _sleeping, Path({str(pid_file)!r}))
        """
    )
    process = subprocess.Popen([sys.executable, "-c", caller], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None, "the build never started"
        time.sleep(0.05)
    build_pid = int(pid_file.read_text())
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 10
    while _running(build_pid):
        assert time.monotonic() < deadline, "the build outlived its caller"
        time.sleep(0.05)


def test_an_interrupt_stops_the_build_at_once(tmp_path: Path) -> None:
    """Ctrl-C in the caller: the build (here asleep for ten minutes) is ended, its scratch removed."""
    pid_file = tmp_path / "build.pid"
    caller = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from openarc_mcp.library.build_process import run_build
        from tests.test_build_process import _sleeping
        try:
            run_build("m", Path({str(tmp_path)!r}), _sleeping, Path({str(pid_file)!r}))
        except KeyboardInterrupt:
            sys.exit(130)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", caller], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None, "the build never started"
        time.sleep(0.05)
    build_pid = int(pid_file.read_text())
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 130
    assert not _running(build_pid)
    assert [path.name for path in tmp_path.iterdir()] == ["build.pid"]  # the scratch folder is gone


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
