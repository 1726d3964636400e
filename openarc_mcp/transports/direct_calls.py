"""``tools/call`` served straight from the stdio wire, for tools that need nothing of the request
but a way to report progress.

Why: every request the SDK serves passes its per-request path (a relay stream for era routing, a
dispatcher task with its cancel scope, a session and request context, surface validation, an
OpenTelemetry span, the middleware chain, a context object, the result sieved per protocol
version), about 0.4-0.6 ms of Python per call on this project's machines. On two cores that an
embedding batch already fills, 64 one-text ``embed`` calls spent as long in that path as in the
model. A call to a tool that takes no ``Context`` (``embed``, ``rerank``, ``transcribe``,
``speak``, ``unload_model``) needs none of it, and the tools that take one (``generate``,
``describe_image``, ``load_model``) use it only to report progress (``PROGRESS_ONLY_CONTEXT``; a
test holds them to it): they get a context here that sends ``notifications/progress`` against the
caller's token as the SDK's does, and nothing else. So the wire hands these calls to the SDK's own tool
object here (its argument validation, its wrapping of failures), maps failures to error results as
``MCPServer``'s handler does, and shapes the result with the SDK's serializer for the negotiated
version, its structured content carried over rather than dumped, checked and dumped again (for an
``embed`` call that was three passes over 384 floats: ~45 µs a call, ~3 ms of a 64-call burst).
A ``CallToolResult`` a tool returns is not checked against its output schema again here: this
project's tools build its structured content from their declared output model.

What stays the same (tests/test_direct_calls.py compares the answers of both paths): results and
errors byte for byte, progress notifications (the same lines, all before the call's answer, none
after it), unknown arguments refused, a cancelled request never answered and its work stopped,
requests still running when stdin ends answered ``-32000 Connection closed``. What is left
out: the SDK's OpenTelemetry span per call (a no-op unless an exporter is installed), and the second
output check of results the tools built from their output models.

Only calls on a connection that completed the ``initialize`` handshake qualify, and only while
fewer than ``MAX_IN_FLIGHT`` run here; anything else (other methods, other tools, the 2026-07-28
per-request envelope, params the SDK would refuse) goes to the SDK unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params, progress_token_from_params
from mcp.shared.message import SessionMessage
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    CallToolRequestParams,
    CallToolResult,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    ProgressToken,
    RequestId,
    TextContent,
)
from mcp_types.methods import serialize_server_result, validate_client_request
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from pydantic_core import to_json

from .mcp_server import PROGRESS_ONLY_CONTEXT, shaped_refusal, unknown_arguments_result
from .wire_lines import UNENCODABLE

__all__ = ["MAX_IN_FLIGHT", "DirectToolCalls"]

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 1024
"""Calls served here at once; more go to the SDK's path (whose workers still bound each model's queue)."""

_TOOLS_CALL = "tools/call"
_PROGRESS = "notifications/progress"
_LEGACY_META = frozenset({"progressToken"})
_SHUTDOWN_WRITE_S = 2.0
_CONNECTION_CLOSED = ErrorData(code=CONNECTION_CLOSED, message="Connection closed")
_UNENCODABLE = ErrorData(code=INTERNAL_ERROR, message=UNENCODABLE)
_DRAIN_S = 10.0  # how long answers of calls still under way at the end may wait for the host to read


class DirectToolCalls:
    """Serves qualifying ``tools/call`` requests of one stdio connection beside the SDK."""

    def __init__(
        self,
        server: MCPServer,
        to_host: MemoryObjectSendStream[Any],
        enabled: bool = True,
        write_now: Callable[[bytes], bool] | None = None,
    ) -> None:
        """``enabled=False`` leaves every call to the SDK (``--no-direct-tool-calls``); ``write_now``
        writes an answer at once when it can (else it joins ``to_host``'s queue)."""
        self._server = server
        self._to_host = to_host
        self._write_now = write_now
        self._group: TaskGroup | None = None
        self._enabled = enabled
        self._tools: frozenset[str] | None = None  # looked up at the first call: tools may come later
        self._initialize_ids: set[RequestId] = set()
        self._version: str | None = None
        self._running: dict[RequestId, _Call] = {}

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Serve calls while inside; on the way out, calls still running stop and are answered
        ``Connection closed`` (stdin ended), as the SDK answers its own, and ``to_host`` closes."""
        async with self._to_host, anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                for call in self._running.values():
                    call.scope.cancel()
                # a host that no longer reads must not keep the server from exiting
                group.cancel_scope.deadline = anyio.current_time() + _DRAIN_S

    def take(self, request: JSONRPCRequest) -> bool:
        """Serve ``request`` here if it qualifies (answered later); ``False`` leaves it to the SDK."""
        if request.method == "initialize":
            self._initialize_ids.add(request.id)
            return False
        params = self._qualifying_params(request)
        if params is None:
            return False
        assert self._group is not None, "take() outside serving()"
        logger.debug("tools/call %s (id %r) served directly", params.name, request.id)
        call = _Call(request.id, params, progress_token_from_params(request.params), self._version)
        self._running[coerce_request_id(request.id)] = call
        self._group.start_soon(self._serve, call, name=_TOOLS_CALL)  # named: no name lookup per call
        return True

    def cancel(self, notification: JSONRPCNotification) -> bool:
        """Stop the call a ``notifications/cancelled`` names if it runs here (it will not be answered)."""
        if notification.method != "notifications/cancelled":
            return False
        request_id = cancelled_request_id_from_params(notification.params)
        call = self._running.get(coerce_request_id(request_id)) if request_id is not None else None
        if call is None:
            return False
        call.cancelled_by_peer = True
        call.scope.cancel()
        return True

    def observe(self, message: SessionMessage) -> None:
        """Learn the negotiated protocol version from the SDK's answer to an ``initialize``. The SDK
        negotiates again at every ``initialize`` it accepts, so the latest accepted one sets it here too."""
        answer = message.message
        if not isinstance(answer, JSONRPCResponse | JSONRPCError) or answer.id not in self._initialize_ids:
            return
        self._initialize_ids.discard(answer.id)
        if isinstance(answer, JSONRPCResponse) and answer.result.get("protocolVersion") in (
            HANDSHAKE_PROTOCOL_VERSIONS
        ):
            self._version = str(answer.result["protocolVersion"])

    @property
    def version(self) -> str | None:
        """The handshake's protocol version once ``initialize`` has been answered, else ``None``."""
        return self._version

    @property
    def awaiting_initialize(self) -> bool:
        """Whether an ``initialize`` went to the SDK and is not answered yet: calls then go to the SDK
        too, which serves them after it, under the version it negotiates."""
        return bool(self._initialize_ids)

    def _qualifying_params(self, request: JSONRPCRequest) -> CallToolRequestParams | None:
        if (
            request.method != _TOOLS_CALL
            or self._version is None
            or self._initialize_ids
            or len(self._running) >= MAX_IN_FLIGHT
            or coerce_request_id(request.id) in self._running
            or not isinstance(request.params, dict)
            or not isinstance(name := request.params.get("name"), str)  # a list or an object: not hashable
            or name not in self._served_tools()
            or not _legacy_meta(request.params)
        ):
            return None
        try:
            validate_client_request(_TOOLS_CALL, self._version, request.params)
            return CallToolRequestParams.model_validate(request.params, by_name=False)
        except (ValidationError, KeyError, ValueError):
            return None  # the SDK's path answers with its own error

    def _served_tools(self) -> frozenset[str]:
        """The tools served here: those that take no ``Context``, and those that use it only to report
        progress (none when turned off)."""
        if self._tools is None:
            tools = self._server._tool_manager.list_tools() if self._enabled else []
            self._tools = frozenset(
                tool.name
                for tool in tools
                if (tool.context_kwarg is None or tool.name in PROGRESS_ONLY_CONTEXT)
                and not tool.resolved_params
            )
        return self._tools

    async def _serve(self, call: _Call) -> None:
        answered = False
        try:
            with call.scope:
                message = await self._answer(call.params, _ProgressContext(call, self._send), call.version)
            call.progress_open = False  # as the SDK's request context closes: later progress is dropped
            if not call.scope.cancel_called:
                answered = True
                await self._send(call, _encoded_answer(call.request_id, message))
        finally:
            call.progress_open = False
            del self._running[coerce_request_id(call.request_id)]
            if not answered and not call.cancelled_by_peer:  # stdin ended or the server stops
                with anyio.move_on_after(_SHUTDOWN_WRITE_S, shield=True):
                    await self._send(call, _answer_line(call.request_id, _CONNECTION_CLOSED))

    async def _answer(
        self,
        params: CallToolRequestParams,
        context: _ProgressContext | None = None,
        version: str | None = None,
    ) -> dict[str, Any] | ErrorData:
        """The SDK's answer: a refusal of unknown arguments as its middleware gives it, else the
        tool's result shaped for the version, or its JSON-RPC error. ``context`` is what a
        progress-only tool gets as its ``Context``; ``version`` the one in force when the call
        arrived (the SDK answers a call in it, whatever a later ``initialize`` negotiates)."""
        version = version or self._version or ""
        refusal = unknown_arguments_result(self._server, params.name, params.arguments)
        if refusal is not None:
            return shaped_refusal(refusal, version)
        try:
            result = await self._run_tool(params, context)
            return _shaped(result, version)
        except MCPError as exc:
            return exc.error
        except Exception:  # a server fault (tool failures are results by now)
            logger.exception("tool %r: its result could not be sent", params.name)
            return ErrorData(code=INTERNAL_ERROR, message="Handler returned an invalid result")

    async def _run_tool(
        self, params: CallToolRequestParams, context: _ProgressContext | None
    ) -> CallToolResult:
        """The SDK's tool object runs the call (arguments checked, failures wrapped as it wraps them);
        its failures become error results as ``MCPServer``'s handler makes them. A ``CallToolResult``
        the tool returns is taken as it is: this project's tools build its structured content from
        their declared output model, which the SDK's path would check again (a whole vector per
        embed call); other return values go through the SDK's conversion and check."""
        tool = self._server._tool_manager.get_tool(params.name)
        if tool is None:  # only registered tools qualify; removed since: as the SDK answers
            return _error_result(ToolError(f"Unknown tool: {params.name}"))
        try:
            # The tool's Context, for the progress-only tools; others take none (the SDK passes it unused).
            result = await tool.run(
                params.arguments or {}, cast(Any, context if tool.context_kwarg else None)
            )
            if isinstance(result, CallToolResult):
                return result
            try:
                return cast(CallToolResult, tool.fn_metadata.convert_result(result))
            except Exception as exc:
                raise UnexpectedToolError(f"Error executing tool {tool.name}") from exc
        except MCPError:
            raise
        except Exception as exc:
            _log_tool_failure(params.name, exc)
            return _error_result(exc)

    async def _send(self, call: _Call, line: bytes) -> None:
        """Write ``line`` at once when it can be, else queue it; once one line of a call is queued, the
        call's later lines queue behind it (its progress never arrives after its answer)."""
        if not call.queued and self._write_now is not None and self._write_now(line):
            return
        call.queued = True
        try:
            await self._to_host.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.debug("dropped a message of request %r: the host's stdout is closed", call.request_id)


class _Call:
    """One call served here: its id, params, progress token, protocol version and cancel scope."""

    def __init__(
        self,
        request_id: RequestId,
        params: CallToolRequestParams,
        progress_token: ProgressToken | None,
        version: str | None,
    ) -> None:
        self.request_id = request_id
        self.params = params
        self.version = version
        self.progress_token = progress_token
        self.progress_open = True
        self.scope = anyio.CancelScope()
        self.cancelled_by_peer = False
        self.queued = False


class _ProgressContext:
    """What a progress-only tool uses of its ``Context``: ``report_progress``, sent as the SDK sends it
    (``notifications/progress`` against the caller's token; nothing without one, or after the answer)."""

    def __init__(self, call: _Call, send: Callable[[_Call, bytes], Awaitable[None]]) -> None:
        self._call = call
        self._send = send

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress for this call, if the caller gave a progress token."""
        call = self._call
        if call.progress_token is None or not call.progress_open:
            return
        await self._send(call, _progress_line(call.progress_token, progress, total, message))


def _legacy_meta(params: Mapping[str, Any]) -> bool:
    """Whether ``_meta`` is absent or holds only what handshake-era requests carry."""
    meta = params.get("_meta")
    return meta is None or (isinstance(meta, dict) and set(meta) <= _LEGACY_META)


def _log_tool_failure(name: str, exc: Exception) -> None:
    """Logged as ``MCPServer`` logs a failed tool call: a crash with its traceback, a refusal briefly,
    refused arguments by field name only (their values are the caller's data)."""
    if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
        if isinstance(exc.__cause__, ValidationError):
            fields = sorted({".".join(map(str, error["loc"])) for error in exc.__cause__.errors()})
            logger.info("tool %r rejected arguments: %r", name, fields)
        else:
            logger.info("tool %r failed: %r", name, str(exc))
    else:
        logger.error("tool %r raised an unexpected exception", name, exc_info=exc)


def _error_result(exc: Exception) -> CallToolResult:
    """The error result ``MCPServer`` answers for a tool's failure: its message, nothing else."""
    return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)


def _shaped(result: CallToolResult, version: str) -> dict[str, Any]:
    """``result`` as the SDK's serializer shapes it for ``version``, with its structured content
    carried over as it is (already JSON-shaped) rather than dumped, checked and dumped again: the
    same answer, one pass over a vector instead of three."""
    structured = result.structured_content
    if structured is None:
        return serialize_server_result(_TOOLS_CALL, version, _dump(result))
    light = result.model_copy(update={"structured_content": {}})
    shaped = serialize_server_result(_TOOLS_CALL, version, _dump(light))
    if "structuredContent" in shaped:
        shaped["structuredContent"] = structured
    return shaped


def _dump(result: Any) -> dict[str, Any]:
    return cast(dict[str, Any], result.model_dump(by_alias=True, mode="json", exclude_none=True))


def _encoded_answer(request_id: RequestId, answer: dict[str, Any] | ErrorData) -> bytes:
    """``_answer_line``; an answer that cannot be encoded (text holding a lone surrogate, say) is
    an internal error instead: one odd answer must not end the connection."""
    try:
        return _answer_line(request_id, answer)
    except Exception:
        logger.exception("the answer to request %r could not be encoded", request_id)
        return _answer_line(request_id, _UNENCODABLE)


def _answer_line(request_id: RequestId, answer: dict[str, Any] | ErrorData) -> bytes:
    """The JSON-RPC answer as the line the wire writes, encoded here (in the call's own task) from
    the already JSON-shaped result: what the SDK's path writes, without a second model around it."""
    envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if isinstance(answer, ErrorData):
        envelope["error"] = _dump(answer)
    else:
        envelope["result"] = answer
    return to_json(envelope, inf_nan_mode="null") + b"\n"  # as the SDK encodes: no NaN on the wire


def _progress_line(token: ProgressToken, progress: float, total: float | None, message: str | None) -> bytes:
    """The ``notifications/progress`` line the SDK writes for ``report_progress`` (the same bytes)."""
    params: dict[str, Any] = {"progressToken": token, "progress": progress}
    if total is not None:
        params["total"] = total
    if message is not None:
        params["message"] = message
    return to_json({"jsonrpc": "2.0", "method": _PROGRESS, "params": params}) + b"\n"
