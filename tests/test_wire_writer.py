"""The stdio transport's writer (``stdio.Wire``): an answer is written at once from the event loop
only when that cannot block and cannot mix with another write; everything else goes through its
thread, and a closed stdout is reported, not hidden."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import anyio
import pytest

from openarc_mcp.transports.stdio import Wire

pytestmark = pytest.mark.anyio


@pytest.fixture
def pipe() -> Iterator[tuple[int, IO[bytes]]]:
    """A pipe: its read end, and its write end as the binary stdout the transport writes to."""
    reader, writer = os.pipe()
    stdout = os.fdopen(writer, "wb")
    yield reader, stdout
    stdout.close()
    os.close(reader)


def _read_all(fd: int, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        data += os.read(fd, count - len(data))
    return bytes(data)


async def test_an_answer_that_fits_is_written_at_once(pipe: tuple[int, IO[bytes]]) -> None:
    reader, stdout = pipe
    wire = Wire(stdout)
    assert wire.write_now(b'{"id": 1}\n')
    assert wire.write_now(b"x" * 60_000 + b"\n")  # room for it in an empty 64 KiB pipe
    assert _read_all(reader, 10 + 60_001) == b'{"id": 1}\n' + b"x" * 60_000 + b"\n"


async def test_an_answer_that_does_not_fit_is_left_to_the_thread(pipe: tuple[int, IO[bytes]]) -> None:
    reader, stdout = pipe
    wire = Wire(stdout)
    assert wire.write_now(b"a" * 60_000)
    assert not wire.write_now(b"b" * 10_000)  # it would block until the host reads
    drained = threading.Thread(target=lambda: _read_all(reader, 60_000))
    drained.start()
    with anyio.fail_after(10):
        await wire.write(b"b" * 10_000)
    drained.join()
    assert _read_all(reader, 10_000) == b"b" * 10_000


async def test_lines_that_fill_the_pipe_by_pages_are_never_written_at_once(
    pipe: tuple[int, IO[bytes]],
) -> None:
    """Linux keeps a pipe's data in page-sized slots, and a line that cannot join the last page's
    free space takes a new one: 1,000-byte lines fill a 64 KiB pipe at 64,000 bytes, where counting
    bytes would let a 65th line through to block the event loop. The pipe's write end is non-blocking
    here, so such a write fails (and shows) instead of hanging. Lines written at once stop before the
    pipe is full, and the room the host frees by reading is found again."""
    reader, stdout = pipe
    os.set_blocking(stdout.fileno(), False)
    wire = Wire(stdout)
    line = b"y" * 999 + b"\n"
    written = 0
    while wire.write_now(line):
        written += len(line)
    assert wire._fd is not None, "a write failed: one was let through that did not fit"
    assert written >= 16 * len(line)  # one page each at least: the count is not refusing early
    assert _read_all(reader, written) == line * (written // len(line))  # the host catches up
    assert wire.write_now(line)  # the room it freed is seen


async def test_a_thread_write_counts_against_the_room(pipe: tuple[int, IO[bytes]]) -> None:
    reader, stdout = pipe
    wire = Wire(stdout)
    with anyio.fail_after(10):
        await wire.write(b"z" * 50_000)  # 13 pages, +1 for a buffered write's second call
    assert not wire.write_now(b"w" * 10_000)  # counted at most: 14 + 3 pages, more than the 16 it has
    assert _read_all(reader, 50_000) == b"z" * 50_000
    assert wire.write_now(b"w" * 10_000)


class _GatedStdout(io.RawIOBase):
    """A pipe's write end whose writes wait for a gate: a thread write held under way while the
    pipe itself still has room."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.gate = threading.Event()
        self.entered = threading.Event()

    def fileno(self) -> int:
        return self.fd

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.entered.set()
        self.gate.wait(10)
        return os.write(self.fd, data)


async def test_nothing_is_written_at_once_while_the_thread_writes() -> None:
    """While a thread write is under way, an answer must wait for it even though the pipe has room,
    or its bytes could land inside the other write."""
    reader, writer = os.pipe()
    stdout = _GatedStdout(writer)
    wire = Wire(cast(IO[bytes], stdout))
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(wire.write, b"first\n")
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(stdout.entered.wait)
            assert not wire.write_now(b"second\n")
            stdout.gate.set()
        assert wire.write_now(b"third\n")  # the thread write is done
        assert _read_all(reader, 12) == b"first\nthird\n"
    finally:
        os.close(reader)
        os.close(writer)


async def test_a_file_or_terminal_always_takes_the_thread(tmp_path: Path) -> None:
    with (tmp_path / "out").open("wb") as stdout:
        wire = Wire(stdout)
        assert not wire.write_now(b"line\n")
        await wire.write(b"line\n")
    assert (tmp_path / "out").read_bytes() == b"line\n"


async def test_a_closed_stdout_is_reported_by_the_thread() -> None:
    reader, writer = os.pipe()
    os.close(reader)  # the host is gone
    stdout = os.fdopen(writer, "wb")
    wire = Wire(stdout)
    assert not wire.write_now(b"line\n")  # EPIPE: left to the thread ...
    with pytest.raises(OSError):
        await wire.write(b"line\n")  # ... whose failure stops serving
    assert not wire.write_now(b"line\n")
    with pytest.raises(OSError):
        stdout.close()  # the unwritten line is still in its buffer


def test_an_answer_that_cannot_be_encoded_is_an_internal_error_under_its_id() -> None:
    """Text holding a lone surrogate (a folder name that is not UTF-8, say) cannot be JSON; the
    answer becomes an error under its id on both paths, and the server keeps serving."""
    import json

    import mcp_types
    from mcp.shared.message import SessionMessage
    from mcp_types import ErrorData

    from openarc_mcp.transports import direct_calls, stdio

    odd = SessionMessage(mcp_types.JSONRPCResponse(jsonrpc="2.0", id=7, result={"text": "emb\udcff"}))
    answer = json.loads(stdio._encoded_or_refused(odd))
    assert answer["id"] == 7 and answer["error"]["code"] == -32603, answer
    line = direct_calls._encoded_answer(8, {"content": [{"type": "text", "text": "emb\udcff"}]})
    assert json.loads(line)["error"]["code"] == -32603
    fine = direct_calls._encoded_answer(9, ErrorData(code=-32000, message="Connection closed"))
    assert json.loads(fine)["error"]["message"] == "Connection closed"


def test_a_folder_whose_name_is_no_model_name_is_not_listed(tmp_path: Path) -> None:
    from openarc_mcp.library.store import LibraryModel, list_models, write_metadata
    from openarc_mcp.schema import ModelType

    for name in (b"emb\xff", b"good-one"):
        folder = Path(os.fsdecode(bytes(tmp_path) + b"/" + name))
        folder.mkdir()
        model = LibraryModel(name="x", model_type=ModelType.EMBEDDING, source="a test")
        write_metadata(folder, model)
    assert [model.name for model in list_models(tmp_path)] == ["good-one"]
