"""Serving MCP over stdio: the transport desktop hosts launch.

The wire is read and written here, not by the SDK's ``stdio_server``, for two reasons:

- Every line is answered. The SDK's transport drops lines it cannot parse without a word, so a host
  that sent a malformed request would wait for an answer forever. Here a line that is not JSON gets
  ``-32700 Parse error``; JSON that is not a valid JSON-RPC message gets ``-32600 Invalid Request``
  (with the request's id when it has one); lines longer than the limit are discarded as they arrive
  and answered the same way, with their id when their first 4 KB show it (``wire_lines.py``).
  Invalid notifications and responses are logged, not answered (a notification has no id; a
  response's id is one of the server's own, and an error under it could pass for an answer).
- Bursts stay cheap. stdin is read in chunks, not lines, and each line is parsed once; a pipe or
  socket is read from the event loop once it is readable (no thread hop), anything else (a file, a
  terminal) by a thread. Answers that are ready together go out in one write (one thread hop per
  batch, not two per message). 64 concurrent calls cost a few milliseconds of transport, not tens.
- Answers leave as soon as they are ready. When stdout is a pipe with room for a whole answer and
  nothing else is being written, the answer is written at once from the event loop (a write that
  cannot block: no thread hop); the host reads and parses the first answers of a burst while the
  server still computes the later ones, instead of receiving all of them in one write at the end.

While serving, fd 0 reads EOF for everyone but the wire (child processes cannot take the host's
input); ``openarc-mcp serve`` has already moved fd 1 to stderr, so only the wire reaches the host.
"""

from __future__ import annotations

import array
import json
import logging
import os
import signal
import stat
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import anyio
import mcp_types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import MCPServer
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED, RequestId

from .. import heap
from ..app import OpenArcApp
from ..settings import Settings
from .direct_calls import DirectToolCalls
from .mcp_server import add_tools, build_mcp_server
from .wire_lines import (
    HEAD_BYTES,
    INTERNAL_ERROR,
    UNENCODABLE,
    Oversized,
    Parsed,
    Withheld,
    error_answer,
    oversized_answer,
    parse_line,
    top_level_id,
)

__all__ = ["HANDSHAKE_WAIT", "serve_server_on_stdio", "serve_stdio"]

logger = logging.getLogger(__name__)

_LINE_OVERHEAD = 1024 * 1024  # JSON around the largest base64 payload a line may carry
_READ_CHUNK = 1024 * 1024
_PARSED_ON_A_THREAD = 1024 * 1024  # lines this long (base64 media) are parsed off the event loop
_OUTGOING_CAPACITY = 256  # messages waiting for stdout before the server waits for the host to read
_WRITE_BATCH_BYTES = 4 * 1024 * 1024  # answers joined into one write, at most
_CANCELLED = "notifications/cancelled"
_DRAIN_S = 10.0  # how long answers still queued at the end may take to reach the host
HANDSHAKE_WAIT = 2.0
"""Seconds after the start at which a host that has not completed the handshake is taken as ready
(``serve_stdio`` then registers the tools and starts the models configured to preload)."""

Outgoing = SessionMessage | bytes
"""What goes to stdout: the SDK's messages, and this module's own error answers (encoded)."""


async def serve_stdio(settings: Settings) -> None:
    """Serve on stdin/stdout until the host closes stdin (or SIGTERM/SIGINT).

    The tools are registered, and models configured to preload begin loading in the background,
    once the handshake is answered (before any other request is dispatched): the handshake waits
    for neither, nor shares the process with the models' imports and compiling.
    """
    async with OpenArcApp(settings, defer_preloads=True) as app:
        server = build_mcp_server(app, with_tools=False)

        def after_handshake() -> None:
            add_tools(server, app)  # before any request that could use them is dispatched
            app.start_preloads()

        logger.info("openarc-mcp serving over stdio; models in %s", settings.models_dir)
        line_limit = settings.max_media_bytes * 4 // 3 + _LINE_OVERHEAD
        with heap.managing():
            await serve_server_on_stdio(server, line_limit, settings.direct_tool_calls, after_handshake)


async def serve_server_on_stdio(
    server: MCPServer,
    line_limit: int,
    direct_tool_calls: bool = True,
    on_handshake: Callable[[], None] | None = None,
) -> None:
    """Serve an SDK server on this process's stdin/stdout with this transport (lines over
    ``line_limit`` bytes are refused) until stdin ends or a signal; ``direct_tool_calls``: see
    ``direct_calls.py``. ``on_handshake`` is called once: when the answer to ``initialize`` has
    been written, when a host that skips the handshake sends its first request, or
    ``HANDSHAKE_WAIT`` seconds after the start, whichever comes first."""
    with _claimed_stdin() as stdin_fd:
        await _serve_wire(
            server, stdin_fd, sys.stdout.buffer, line_limit, direct_tool_calls, _Once(on_handshake)
        )


async def _serve_wire(
    server: MCPServer,
    stdin_fd: int,
    stdout: IO[bytes],
    limit: int,
    direct_tool_calls: bool,
    handshake: _Once,
) -> None:
    """Run ``server`` on the wire until stdin ends or a signal; answers queued by then go out first."""
    to_server, from_host = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_host, outgoing = anyio.create_memory_object_stream[Outgoing](_OUTGOING_CAPACITY)
    wire = Wire(stdout)
    direct = DirectToolCalls(server, to_host.clone(), enabled=direct_tool_calls, write_now=wire.write_now)
    lowlevel = server._lowlevel_server  # the SDK runs custom streams at this level
    written = anyio.Event()
    reading = _Reading()
    ledger = _Ledger()
    async with anyio.create_task_group() as group:
        group.start_soon(_stop_on_signals, reading, group.cancel_scope)
        group.start_soon(handshake.at_latest, HANDSHAKE_WAIT)
        group.start_soon(
            _write_messages, outgoing, wire, group.cancel_scope, written, direct, handshake, ledger
        )
        group.start_soon(
            _read_messages, stdin_fd, limit, to_server, to_host.clone(), direct, handshake, reading, ledger
        )
        async with to_host:
            await lowlevel.run(from_host, to_host, lowlevel.create_initialization_options())
        with anyio.move_on_after(_DRAIN_S):
            await written.wait()
            await _answer_left_open(ledger, wire)
        group.cancel_scope.cancel()


class _Ledger:
    """The requests handed to the SDK, until their answers are written. The SDK can leave one
    unanswered at shutdown (its answer's write cancelled once begun: a request in an uncancellable
    thread, an unload); those are answered ``Connection closed`` here, as the others are."""

    def __init__(self) -> None:
        self._open: Counter[RequestId] = Counter()  # ids as the SDK correlates them ("7" is 7)
        self._asked: dict[RequestId, RequestId] = {}  # each id as the host sent it

    def note(self, message: mcp_types.JSONRPCMessage) -> None:
        """Enter a request the SDK will serve; a cancelled one leaves (it is never answered)."""
        if isinstance(message, mcp_types.JSONRPCRequest):
            self.asked(message.id)
        elif isinstance(message, mcp_types.JSONRPCNotification) and message.method == _CANCELLED:
            cancelled = cancelled_request_id_from_params(message.params)
            if cancelled is not None:
                self.closed(cancelled)

    def asked(self, request_id: RequestId) -> None:
        key = coerce_request_id(request_id)
        self._open[key] += 1
        self._asked[key] = request_id

    def answered(self, message: mcp_types.JSONRPCMessage) -> None:
        """Note an answer written (a response or an error under a request's id)."""
        if isinstance(message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError) and message.id is not None:
            self.closed(message.id)

    def closed(self, request_id: RequestId) -> None:
        """Forget one request of this id: answered, or cancelled by the host (never to be answered)."""
        key = coerce_request_id(request_id)
        if self._open[key] > 0:
            self._open[key] -= 1

    def unanswered(self) -> list[RequestId]:
        return [self._asked[key] for key, count in self._open.items() for _ in range(count)]


async def _answer_left_open(ledger: _Ledger, wire: Wire) -> None:
    left = ledger.unanswered()
    if not left:
        return
    logger.info("%d request(s) the SDK left unanswered at the end: answered 'Connection closed'", len(left))
    data = b"".join(_encode(error_answer(ident, CONNECTION_CLOSED, "Connection closed")) for ident in left)
    try:
        await wire.write(data)
    except OSError as exc:
        logger.debug("could not answer them: %s", exc)


class _Reading:
    """Reading stdin, until ``stop()``: then the lines end as if stdin had (a read under way is cut)."""

    def __init__(self) -> None:
        self.stopped = False
        self._scope: anyio.CancelScope | None = None

    async def next_chunk(self, read_chunk: Callable[[], Awaitable[bytes]]) -> bytes:
        """The next chunk, or ``b""`` once stopped (as at the end of stdin)."""
        if self.stopped:
            return b""
        with anyio.CancelScope() as self._scope:
            chunk = await read_chunk()
            self.stopped = not chunk  # stdin ended: a signal now stops at once (the drain is under way)
            return chunk
        return b""  # stopped while it waited

    def stop(self) -> None:
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()


async def _stop_on_signals(reading: _Reading, serving: anyio.CancelScope) -> None:
    """SIGTERM or SIGINT (a host quitting, Ctrl-C) ends serving as a closed stdin does: nothing more
    is read, requests still running are answered ``Connection closed``, answers go out, models are
    freed, exit 0. A second signal stops at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            if reading.stopped:
                logger.info("%s received with input already ended: stopping now", signal.Signals(number).name)
                serving.cancel()
                return
            logger.info(
                "%s received: stopping (requests still running are answered)", signal.Signals(number).name
            )
            reading.stop()


@contextmanager
def _claimed_stdin() -> Iterator[int]:
    """The wire's stdin on a private descriptor; fd 0 reads EOF for everyone else meanwhile (child
    processes). The CLI has already moved stdout: ``sys.stdout`` is the wire, fd 1 goes to stderr."""
    private = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
        yield private  # never closed: a reader thread may still block on it
    finally:
        os.close(devnull)
        os.dup2(private, 0)


async def _read_messages(
    fd: int,
    limit: int,
    to_server: MemoryObjectSendStream[SessionMessage | Exception],
    to_host: MemoryObjectSendStream[Outgoing],
    direct: DirectToolCalls,
    handshake: _Once,
    reading: _Reading,
    ledger: _Ledger,
) -> None:
    """Valid messages go to the server, or to ``direct`` when it serves them; the others are answered
    here and never reach the SDK. A request other than ``initialize`` completes the handshake."""
    parser = anyio.CapacityLimiter(1)  # its own thread: not one that inference may have taken
    async with to_server, to_host, direct.serving():
        async for raw in _lines(fd, limit, reading):
            if isinstance(raw, Oversized):
                answer = oversized_answer(raw, limit)
                if isinstance(answer, Withheld):
                    logger.warning("dropped %s", answer.reason)
                else:
                    await to_host.send(_encode(answer))
                continue
            understood = (
                _understood(raw)
                if len(raw) < _PARSED_ON_A_THREAD
                else await anyio.to_thread.run_sync(_understood, raw, limiter=parser)  # 2-3 ms a MB
            )
            if understood is None:
                continue
            if isinstance(understood, Withheld):
                logger.warning("dropped an invalid notification or response: %s", understood.reason)
                continue
            if isinstance(understood, mcp_types.JSONRPCRequest) and understood.method != "initialize":
                handshake()
            if isinstance(understood, dict):
                await to_host.send(_encode(understood))
            elif not _served_directly(understood, direct):
                ledger.note(understood)
                await to_server.send(SessionMessage(understood))


def _understood(raw: bytes) -> Parsed | None:
    """What a line holds (``parse_line``); ``None`` for a blank line."""
    line = raw.decode("utf-8", errors="replace")
    return _parsed(line) if line.strip() else None


async def _lines(fd: int, limit: int, reading: _Reading | None = None) -> AsyncIterator[bytes | Oversized]:
    """The lines read from ``fd`` (without their newline) until it ends or ``reading`` stops;
    ``Oversized`` for one over ``limit`` bytes, which is discarded as it arrives but for its head
    (where its id is)."""
    pending = bytearray()
    skipping = False
    read_chunk = _chunk_reader(fd)
    reading = reading or _Reading()
    while chunk := await reading.next_chunk(read_chunk):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if skipping:
                skipping = False
            else:
                pending += chunk[start:end]
                yield bytes(pending) if len(pending) <= limit else Oversized(bytes(pending[:HEAD_BYTES]))
                pending.clear()
            start = end + 1
        if not skipping:
            pending += chunk[start:]
            if len(pending) > limit:
                head = bytes(pending[:HEAD_BYTES])
                pending.clear()
                skipping = True
                yield Oversized(head)
    if pending:
        yield bytes(pending)


def _chunk_reader(fd: int) -> Callable[[], Awaitable[bytes]]:
    """Reads the next chunk of ``fd`` (``b""`` at its end). A pipe or a socket is read on the event
    loop: it waits until the descriptor is readable, and then a read cannot block (nobody else reads
    it), so a request costs no thread hop. A file or a terminal, or a loop that cannot watch
    descriptors, is read by a thread."""

    async def on_a_thread() -> bytes:
        return await anyio.to_thread.run_sync(_read_chunk, fd, abandon_on_cancel=True)

    if not _pollable(fd):
        return on_a_thread
    loop_can_watch = True

    async def on_the_loop() -> bytes:
        nonlocal loop_can_watch
        if loop_can_watch:
            try:
                await anyio.wait_readable(fd)
            except NotImplementedError:  # e.g. asyncio's proactor loop on Windows
                loop_can_watch = False
            else:
                return _read_chunk(fd)
        return await on_a_thread()

    return on_the_loop


def _read_chunk(fd: int) -> bytes:
    """The next chunk of ``fd``; ``b""`` at its end, and when the host reset it (a socket whose peer
    closed with our answers unread): either way the input has ended."""
    try:
        return os.read(fd, _READ_CHUNK)
    except OSError as exc:
        logger.warning("reading stdin failed (%s): taken as its end", exc)
        return b""


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _parsed(line: str) -> Parsed:
    """``parse_line``, and should it fail on some line nobody foresaw, an internal error answered for
    that line (with its id when it shows one): one odd line must not end the connection."""
    try:
        return parse_line(line)
    except Exception:
        logger.exception("a line could not be parsed; answered as an internal error")
        return error_answer(
            top_level_id(line[:HEAD_BYTES]),
            INTERNAL_ERROR,
            "Internal error: the server could not read this message (its log says why)",
        )


def _served_directly(message: mcp_types.JSONRPCMessage, direct: DirectToolCalls) -> bool:
    """Whether ``direct`` serves ``message``; should it fail on one, the SDK's path serves it."""
    try:
        if isinstance(message, mcp_types.JSONRPCRequest):
            return direct.take(message)
        return isinstance(message, mcp_types.JSONRPCNotification) and direct.cancel(message)
    except Exception:
        logger.exception("the direct path failed on a message; the SDK serves it")
        return False


async def _write_messages(
    outgoing: MemoryObjectReceiveStream[Outgoing],
    wire: Wire,
    serving: anyio.CancelScope,
    written: anyio.Event,
    direct: DirectToolCalls,
    handshake: _Once,
    ledger: _Ledger,
) -> None:
    """Write what is queued for the host, joining what is ready together into one write; once the
    answer to ``initialize`` is out, the handshake is complete."""
    try:
        async with outgoing:
            async for first in outgoing:
                data = _joined(first, outgoing, direct, ledger)
                if not wire.write_now(data):
                    await wire.write(data)
                if direct.version is not None:
                    handshake()
    except OSError as exc:
        logger.warning("the host closed stdout (%s): stopping", exc)
        wire.abandon()
        serving.cancel()
    finally:
        written.set()


def _joined(
    first: Outgoing, outgoing: MemoryObjectReceiveStream[Outgoing], direct: DirectToolCalls, ledger: _Ledger
) -> bytes:
    """``first`` and the messages queued behind it (up to a size), encoded as lines; an answer to
    ``initialize`` among them opens ``direct``'s path, or sets the version it answers in."""
    parts: list[bytes] = []
    size = 0
    message = first
    while True:
        if direct.awaiting_initialize and isinstance(message, SessionMessage):
            direct.observe(message)
        if isinstance(message, SessionMessage):
            ledger.answered(message.message)
        parts.append(_encoded_or_refused(message))
        size += len(parts[-1])
        if size >= _WRITE_BATCH_BYTES:
            break
        try:
            message = outgoing.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return b"".join(parts)


def _encoded_or_refused(message: Outgoing) -> bytes:
    """``_encode``; an answer that cannot be encoded (text holding a lone surrogate, say) becomes an
    internal error under its id, and a notification that cannot be is dropped, logged: one odd
    message must not end the connection."""
    try:
        return _encode(message)
    except Exception:
        assert isinstance(message, SessionMessage)  # bytes are encoded already
        inner = message.message
        logger.exception("a message to the host could not be encoded")
        if isinstance(inner, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
            refusal = error_answer(inner.id, INTERNAL_ERROR, UNENCODABLE)
            return _encode(refusal)
        return b""


def _encode(message: Outgoing | dict[str, Any]) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, dict):
        return json.dumps(message).encode() + b"\n"
    return message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


def _write(stdout: IO[bytes], data: bytes) -> None:
    stdout.write(data)
    stdout.flush()


class Wire:
    """The host's stdout: written by a thread (the host may be slow to read), or at once from the
    event loop when that cannot block.

    ``write_now`` writes only when no thread write is under way (bytes of two writes never mix)
    and stdout is a pipe with room for all of the data (a blocking write that fits does not wait);
    otherwise it leaves the data to ``write``. A terminal, a file or a full pipe always takes the
    thread. After a failed write everything takes the thread, whose ``OSError`` stops serving.

    Room is counted in the pipe's pages, not bytes: Linux keeps a pipe's data in page-sized slots,
    and a write that cannot join the last page's free space takes new pages, so a pipe can refuse a
    write while holding fewer bytes than its capacity (1,000-byte lines fill 16 pages at 64,000
    bytes). Each write of n bytes takes at most ``ceil(n / page)`` new pages; the writes the host has
    not read wholly (the pipe's unread bytes are the newest ones written) bound the pages in use.
    """

    def __init__(self, stdout: IO[bytes]) -> None:
        self._stdout = stdout
        self._fd, capacity = _pipe_of(stdout)
        self._slots = max(1, capacity // _PAGE)
        self._busy = False
        self._unread_writes: deque[tuple[int, int]] = deque()
        """(bytes, most pages taken) of each write the host may not have read wholly, oldest first."""
        self._bytes = 0
        self._pages = 0
        if self._fd is not None and (unread := _unread(self._fd)):
            self._count(unread, self._slots)  # written before: its pages unknown, so all of them

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` now if that cannot block; ``False`` leaves it to ``write``."""
        if self._busy or self._fd is None:
            return False
        pages = _pages(len(data))
        if self._pages + pages > self._slots:
            self._forget_read(_unread(self._fd))
            if self._pages + pages > self._slots:
                return False
        view = memoryview(data)
        try:
            while view:  # one write unless a signal splits it
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # the host closed stdout: the thread's write fails too and stops serving
            logger.debug("writing to stdout failed (%s): leaving it to the thread", exc)
            self._fd = None
            return False
        self._count(len(data), pages)
        return True

    def abandon(self) -> None:
        """The host is gone: what stdout still buffers (a failed write leaves it there) has nowhere
        to go. Its descriptor is pointed at /dev/null, so that the flush at the interpreter's exit
        does not fail too (Python would then exit with status 120 instead of 0)."""
        self._fd = None
        try:
            descriptor = self._stdout.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
        except (OSError, ValueError, AttributeError) as exc:
            logger.debug("stdout left as it is: %s", exc)
            return
        try:
            os.dup2(devnull, descriptor)
        finally:
            os.close(devnull)

    async def write(self, data: bytes) -> None:
        """Write ``data`` from a thread; ``write_now`` waits its turn meanwhile."""
        self._busy = True
        self._count(len(data), _pages(len(data)) + 1)  # a buffered write may take two calls
        await anyio.to_thread.run_sync(_write, self._stdout, data, abandon_on_cancel=True)
        self._busy = False  # not reset when cancelled: the abandoned thread may still be writing

    def _count(self, size: int, pages: int) -> None:
        self._unread_writes.append((size, pages))
        self._bytes += size
        self._pages += pages

    def _forget_read(self, unread: int) -> None:
        """Drop the writes the host has read wholly: all but those holding the newest ``unread`` bytes."""
        while self._unread_writes and self._bytes - self._unread_writes[0][0] >= unread:
            size, pages = self._unread_writes.popleft()
            self._bytes -= size
            self._pages -= pages


def _pages(size: int) -> int:
    """The most new pipe pages a write of ``size`` bytes takes."""
    return -(-size // _PAGE)


class _Once:
    """Calls ``callback`` the first time it is called (or ``at_latest`` ends), never again."""

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback

    def __call__(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    async def at_latest(self, seconds: float) -> None:
        """Call it ``seconds`` from now if nothing has before."""
        await anyio.sleep(seconds)
        self()


_F_GETPIPE_SZ = 1032  # Linux fcntl
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _pipe_of(stdout: IO[bytes]) -> tuple[int | None, int]:
    """The descriptor of ``stdout`` and its pipe's capacity, or ``(None, 0)`` when it is not a pipe
    whose unread bytes can be asked for (then every write takes the thread)."""
    try:
        fd = stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None, 0
        import fcntl

        capacity = int(fcntl.fcntl(fd, _F_GETPIPE_SZ))
        _unread(fd)
    except (OSError, ValueError, AttributeError, ImportError) as exc:  # no fileno, not Linux
        logger.debug("answers go through a thread only: %s", exc)
        return None, 0
    stdout.flush()
    return fd, capacity


def _unread(fd: int) -> int:
    """Bytes written to the pipe that the host has not read yet."""
    import fcntl
    import termios

    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]
