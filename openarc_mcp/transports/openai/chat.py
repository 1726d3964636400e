"""``POST /v1/chat/completions`` and ``POST /v1/completions``: text generation, plain or streamed.

Chats with ``image_url`` parts, or addressed to a VLM, go to ``describe_image``; others to the
LLM. ``response_format`` 'json_object' and 'json_schema' constrain the text to JSON (the schema
is enforced, ``strict`` or not); ``tools`` are called as ``tools.py`` says. Parameters openarc-mcp
cannot honour (``n`` > 1, ``logprobs``, ...) are refused with a 400 naming them, never ignored.
Streams are server-sent events ending in ``[DONE]``; a client that disconnects stops the generation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...app import OpenArcApp, Progress
from ...errors import OpenArcError, UnusableSchemaError
from ...inputs import stop_strings
from ...schema import ChatMessage, ContentPart, GenerateResult, GenerationOptions, ImagePart, ModelType
from ...schema import VisionMessage as VisionChatMessage
from .errors import APIError, error_for
from .requests import parse_body
from .streaming import Emit, EventStream, until_disconnected
from .tools import (
    ToolCalls,
    ToolChoice,
    ToolDefinition,
    ToolUse,
    cut_answer,
    made_calls,
    rendered_calls,
    rendered_result,
    tool_use,
)

__all__ = ["chat_completions", "completions"]

Run = Callable[[Progress | None], Awaitable[GenerateResult]]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None
    include_obfuscation: Literal[False] | None = Field(
        default=None, description="Streams are not padded against size side channels: only false is accepted."
    )


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema is enforced whatever ``strict`` says."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str | None, Field(max_length=64)] = None
    description: str | None = None
    json_schema: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    json_schema: JsonSchemaFormat | None = None


class SamplingParameters(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int | None, Field(ge=1, le=131_072)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=1, le=100_000)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0, le=10)] = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    stop: str | list[str] | None = None
    seed: Annotated[int | None, Field(ge=-(2**63), le=2**63 - 1)] = None  # OpenAI's int64
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(default=None, description="Accepted for compatibility; not used.")


class ChatMessageIn(BaseModel):
    """A message of the chat; also an assistant message as the ``openai`` client hands it back
    (``messages.append(reply.choices[0].message)``), with the fields it carries."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, description="Accepted for compatibility; not used.")
    tool_call_id: str | None = None
    tool_calls: ToolCalls | None = None
    refusal: str | None = None
    annotations: list[Any] | None = Field(default=None, description="Of a reply: not sent to the model.")
    parsed: Any = Field(default=None, description="Of a reply (the client's parse()): not sent to the model.")
    audio: None = None
    function_call: None = None


class ChatCompletionRequest(SamplingParameters):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=131_072)] = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDefinition] | None, Field(max_length=128)] = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(SamplingParameters):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


async def chat_completions(request: Request, app: OpenArcApp) -> Response:
    """``POST /v1/chat/completions``."""
    body = await parse_body(request, ChatCompletionRequest)
    _refuse_unsupported_chat(body)
    tools = tool_use(body.tools, body.tool_choice, body.parallel_tool_calls)
    schema = tools.reply_schema() if tools else _response_schema(body.response_format)
    options = _options(body, app, body.max_completion_tokens, schema)
    run = _chat_run(body, app, options, tools, await app.model_type_of(body.model))
    created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        chunks = _ChatChunks(ident, created, body.model)
        if tools:
            return EventStream(
                lambda emit: _stream_tool_reply(emit, run, tools, chunks, _include_usage(body))
            )
        return EventStream(lambda emit: _stream(emit, run, chunks, _include_usage(body)))
    result = await until_disconnected(request, lambda: _answer(run, "tools" if tools else "response_format"))
    message, finish_reason = _assistant_message(result, tools)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return JSONResponse(_envelope(ident, "chat.completion", created, result, [choice]))


def _assistant_message(result: GenerateResult, tools: ToolUse | None) -> tuple[dict[str, Any], str]:
    """The reply as OpenAI's assistant message, and its finish reason ('tool_calls' for calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
    if tools is None:
        return message, result.finish_reason
    if result.finish_reason != "stop":  # cut short: the answer as far as it got, or a call's raw text
        answer = cut_answer(result.text)
        message["content"] = result.text if answer is None else answer
        return message, result.finish_reason
    content, calls = tools.read_reply(result.text)
    message["content"] = content
    if calls is None:
        return message, "stop"
    return message | {"tool_calls": calls}, "tool_calls"


async def completions(request: Request, app: OpenArcApp) -> Response:
    """``POST /v1/completions``: continue a raw prompt (no chat template)."""
    body = await parse_body(request, CompletionRequest)
    _refuse_unsupported_completion(body)
    prompt = _single_prompt(body.prompt)
    options = _options(body, app, None)

    async def run(progress: Progress | None) -> GenerateResult:
        return await app.complete(body.model, prompt, options, progress)

    created, ident = int(time.time()), f"cmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        chunks = _TextChunks(ident, created, body.model)
        return EventStream(lambda emit: _stream(emit, run, chunks, _include_usage(body)))
    result = await until_disconnected(request, lambda: _answer(run))
    choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
    return JSONResponse(_envelope(ident, "text_completion", created, result, [choice]))


# ----- requests --------------------------------------------------------------------------------


def _refuse_unsupported_common(body: SamplingParameters) -> None:
    if body.n not in (None, 1):
        raise APIError(400, "'n' must be 1: openarc-mcp returns one choice per request", "n")
    if body.logprobs not in (None, False, 0):
        raise APIError(400, "'logprobs' is not supported by openarc-mcp", "logprobs")
    if body.logit_bias:
        raise APIError(400, "'logit_bias' is not supported by openarc-mcp", "logit_bias")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "'stream_options' is only allowed with 'stream': true", "stream_options")


def _refuse_unsupported_chat(body: ChatCompletionRequest) -> None:
    _refuse_unsupported_common(body)
    if body.top_logprobs not in (None, 0):
        raise APIError(400, "'top_logprobs' is not supported by openarc-mcp", "top_logprobs")
    _response_schema(body.response_format)  # refuses a format it cannot honour
    calling = bool(body.tools) and body.tool_choice != "none"
    json_format = _response_schema(body.response_format) is not None
    if calling and json_format:
        raise APIError(400, "give tools or a JSON response_format, not both", "response_format")
    if (calling or json_format) and body.stop:
        raise APIError(
            400, "'stop' cannot go with tools or a JSON response_format: it would cut the JSON short", "stop"
        )
    if body.max_tokens and body.max_completion_tokens and body.max_tokens != body.max_completion_tokens:
        raise APIError(
            400, "give one of 'max_tokens' and 'max_completion_tokens', not both", "max_completion_tokens"
        )


def _refuse_unsupported_completion(body: CompletionRequest) -> None:
    _refuse_unsupported_common(body)
    if body.echo:
        raise APIError(400, "'echo' is not supported by openarc-mcp", "echo")
    if body.best_of not in (None, 1):
        raise APIError(400, "'best_of' must be 1", "best_of")
    if body.suffix:
        raise APIError(400, "'suffix' (insertion) is not supported by openarc-mcp", "suffix")


def _single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise APIError(400, f"'prompt' must be one string; got a list of {len(prompt)}", "prompt")
    return prompt[0]


def _response_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema the text must match: none for 'text', any object for 'json_object'."""
    if response_format is None or response_format.type == "text":
        if response_format is not None and response_format.json_schema is not None:
            raise APIError(
                400, "'json_schema' goes with response_format type 'json_schema'", "response_format"
            )
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.type != "json_schema":
        raise APIError(
            400,
            f"response_format '{response_format.type}' is not supported; "
            "use 'text', 'json_object' or 'json_schema'",
            "response_format",
        )
    if response_format.json_schema is None or response_format.json_schema.json_schema is None:
        raise APIError(
            400,
            "response_format 'json_schema' needs json_schema: {name, schema: {...JSON Schema...}}",
            "response_format",
        )
    return response_format.json_schema.json_schema


def _options(
    body: SamplingParameters,
    app: OpenArcApp,
    max_completion: int | None,
    json_schema: dict[str, Any] | None = None,
) -> GenerationOptions:
    try:
        stop = stop_strings(body.stop)
    except OpenArcError as exc:
        raise error_for(exc, "stop") from exc
    return GenerationOptions(
        max_tokens=max_completion or body.max_tokens or app.settings.default_max_tokens,
        temperature=body.temperature,
        top_p=None if body.top_p == 1 else body.top_p,  # 1 is no nucleus cut: the same as none
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        stop=stop,
        seed=None if body.seed is None else body.seed % 2**63,  # a negative seed as the engine's unsigned
        json_schema=json_schema,
    )


def _include_usage(body: SamplingParameters) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _chat_run(
    body: ChatCompletionRequest,
    app: OpenArcApp,
    options: GenerationOptions,
    tools: ToolUse | None,
    model_type: ModelType | None,
) -> Run:
    """The app call for this chat: the VLM for images (or a model of ``model_type`` VLM), else the LLM."""
    has_images = any(
        isinstance(part, ImagePart)
        for m in body.messages
        if isinstance(m.content, list)
        for part in m.content
    )
    if has_images or model_type is ModelType.VLM:
        if tools is not None:
            raise APIError(400, "tools cannot be given to a vision model", "tools")
        vision = [_vision_message(m, index) for index, m in enumerate(body.messages)]

        async def describe(progress: Progress | None) -> GenerateResult:
            return await app.describe_image(
                body.model, [], None, vision, options, progress, require_image=False
            )

        return describe
    chat = _text_chat(body.messages)
    if tools is not None:
        chat = _with_instructions(chat, tools.instructions())

    async def generate(progress: Progress | None) -> GenerateResult:
        return await app.generate(body.model, None, chat, options, progress)

    return generate


def _with_instructions(chat: list[ChatMessage], instructions: str) -> list[ChatMessage]:
    """The chat with the function instructions at the end of its system message (or as one)."""
    if chat and chat[0].role == "system":
        first = ChatMessage(role="system", content=f"{chat[0].content}\n\n{instructions}")
        return [first, *chat[1:]]
    return [ChatMessage(role="system", content=instructions), *chat]


def _text_chat(messages: list[ChatMessageIn]) -> list[ChatMessage]:
    """The chat for an LLM: earlier tool calls rendered as the model is asked to write them, and
    each tool result with the call it answers."""
    calls: dict[str, dict[str, Any]] = {}  # the calls of earlier assistant messages, by id
    return [_text_message(message, index, calls) for index, message in enumerate(messages)]


def _text_message(message: ChatMessageIn, index: int, calls: dict[str, dict[str, Any]]) -> ChatMessage:
    role = "system" if message.role == "developer" else message.role
    if isinstance(message.content, list):
        content = "".join(part.text for part in message.content if not isinstance(part, ImagePart))
    else:  # an assistant's refusal (a reply handed back) is what it said
        content = message.content or message.refusal or ""
    if message.tool_calls:  # the calls as the model is asked to write them, after any text
        if role != "assistant":
            raise APIError(400, "only assistant messages carry tool_calls", f"messages.{index}.tool_calls")
        made = made_calls(message.tool_calls, index)
        calls.update((call.id, rendered) for call, rendered in zip(message.tool_calls, made, strict=True))
        content = f"{content}\n{rendered_calls(made)}" if content else rendered_calls(made)
    if role == "tool":
        content = _tool_result(message, index, calls, content)
    elif message.tool_call_id is not None:
        raise APIError(400, "only tool messages carry tool_call_id", f"messages.{index}.tool_call_id")
    return ChatMessage(role=role, content=content)


def _tool_result(message: ChatMessageIn, index: int, calls: dict[str, dict[str, Any]], content: str) -> str:
    param = f"messages.{index}.tool_call_id"
    if message.tool_call_id is None:
        raise APIError(
            400, "a tool message needs the tool_call_id of the call it answers", param, "missing_parameter"
        )
    call = calls.get(message.tool_call_id)
    if call is None:
        raise APIError(
            400,
            f"tool_call_id '{message.tool_call_id}' answers no call of an earlier assistant message",
            param,
        )
    return rendered_result(call, content)


def _vision_message(message: ChatMessageIn, index: int) -> VisionChatMessage:
    role = "system" if message.role == "developer" else message.role
    if role == "tool" or message.tool_calls:
        raise APIError(400, "tool messages cannot be sent to a vision model", f"messages.{index}.role")
    return VisionChatMessage(role=role, content=message.content or "")


# ----- responses -------------------------------------------------------------------------------


async def _answer(run: Run, schema_from: str = "response_format") -> GenerateResult:
    try:
        return await run(None)
    except OpenArcError as exc:
        raise _api_error(exc, schema_from) from exc


def _api_error(exc: OpenArcError, schema_from: str = "response_format") -> APIError:
    """``error_for``; a schema's error names where the schema came from (response_format or tools)."""
    if not isinstance(exc, UnusableSchemaError):
        return error_for(exc)
    if schema_from == "tools":
        return APIError(400, f"the tools cannot be used: {exc}", "tools")
    return error_for(exc, schema_from)


def _usage(result: GenerateResult) -> dict[str, int]:
    usage = result.usage
    total = usage.prompt_tokens + usage.completion_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": total,
    }


def _envelope(
    ident: str, kind: str, created: int, result: GenerateResult, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": kind,
        "created": created,
        "model": result.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": _usage(result),
        "metrics": result.metrics.model_dump(),
    }


class _ChatChunks:
    """Builds ``chat.completion.chunk`` events."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        self._head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        self._role_sent = False

    def delta(self, text: str) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": text}
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", "content": text}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def tool_calls(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        self._role_sent = True
        delta = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"index": index, **call} for index, call in enumerate(calls)],
        }
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def finish(self, reason: str) -> dict[str, Any]:
        delta: dict[str, Any] = {} if self._role_sent else {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}])

    def usage(self, result: GenerateResult) -> dict[str, Any]:
        return self._chunk([], _usage(result))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        return {**self._head, "system_fingerprint": None, "choices": choices, "usage": usage}


class _TextChunks:
    """Builds streamed ``text_completion`` events."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        self._head = {"id": ident, "object": "text_completion", "created": created, "model": model}

    def delta(self, text: str) -> dict[str, Any]:
        return self._chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}])

    def finish(self, reason: str) -> dict[str, Any]:
        return self._chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}])

    def usage(self, result: GenerateResult) -> dict[str, Any]:
        return self._chunk([], _usage(result))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        return {**self._head, "choices": choices, "usage": usage}


async def _stream_tool_reply(
    emit: Emit, run: Run, tools: ToolUse, chunks: _ChatChunks, include_usage: bool
) -> None:
    """A reply under tools streams whole once it is known (a call's JSON is only usable complete)."""
    try:
        result = await run(None)
    except OpenArcError as exc:
        raise _api_error(exc, "tools") from exc
    message, finish_reason = _assistant_message(result, tools)
    if "tool_calls" in message:
        await emit(chunks.tool_calls(message["tool_calls"]))
    else:
        await emit(chunks.delta(message["content"] or ""))
    await emit(chunks.finish(finish_reason))
    if include_usage:
        await emit(chunks.usage(result))
    await emit("[DONE]")


async def _stream(emit: Emit, run: Run, chunks: _ChatChunks | _TextChunks, include_usage: bool) -> None:
    """Stream a generation: text deltas as they come, then the finish reason, usage and [DONE]."""
    streamed: list[str] = []

    async def on_progress(message: str, value: float | None) -> None:
        if value is None:  # a status line (the model is loading), not generated text
            return
        streamed.append(message)
        await emit(chunks.delta(message))

    try:
        result = await run(on_progress)
    except OpenArcError as exc:
        raise _api_error(exc) from exc
    sent = "".join(streamed)
    if result.text.startswith(sent) and len(result.text) > len(sent):
        await emit(chunks.delta(result.text[len(sent) :]))  # text the last progress tick had not carried
    await emit(chunks.finish(result.finish_reason))
    if include_usage:
        await emit(chunks.usage(result))
    await emit("[DONE]")
