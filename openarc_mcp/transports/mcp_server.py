"""The MCP surface: tools and resources over ``MCPServer``, mapped onto ``OpenArcApp`` calls.

Errors are mapped in one place (``_tool_errors``): a ``UserError`` becomes a ``ToolError`` whose
text the agent can act on; a ``ServerFault`` is logged and reported generically.
"""

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import AudioContent, CallToolResult, TextContent, ToolAnnotations
from mcp_types import SERVER_INFO_META_KEY
from mcp_types.methods import serialize_server_result
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, Strict

from .. import __version__
from ..app import OpenArcApp, Progress
from ..audio_out import MIME_TYPES
from ..errors import ModelNotFoundError, ServerFault, UserError
from ..inputs import MAX_STOP_STRINGS, stop_strings
from ..schema import (
    MAX_MODEL_NAME,
    MAX_SCHEMA_CHARS,
    MODEL_NAME_PATTERN,
    SCHEMA_COMPILE_BUDGET_S,
    UNENFORCED_KEYWORDS,
    AudioFormat,
    ChatMessage,
    EmbedResult,
    GenerateResult,
    GenerationOptions,
    LoadRequest,
    ModelRecord,
    ModelType,
    RerankResult,
    RuntimeValue,
    SpeakResult,
    TranscribeResult,
    VisionMessage,
    inline_refs,
)
from .tool_arguments import plain_refusals

__all__ = [
    "add_tools",
    "build_mcp_server",
    "publish_inline_schemas",
    "shaped_refusal",
    "unknown_arguments_result",
]

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
openarc-mcp runs local OpenVINO models on this machine, offline.
Read openarc://models to see which models exist and whether they are loaded. Tools: `generate`
(a local LLM answers a prompt or a chat), `describe_image` (a vision model answers about images),
`embed` (vectors for search and similarity), `rerank` (order documents by relevance to a query),
`transcribe` (speech to text), `speak` (text to speech audio). Name the model, or
leave `model` out when exactly one model of the needed type is loaded. {loading} Use
load_model/unload_model to manage memory; openarc://devices lists the compute devices."""

_AUTO_LOAD = "Prepared models load on first use (that call takes a few seconds longer)."
_NO_AUTO_LOAD = "Auto-load is off here: load a model with load_model before a tool uses it."

MAX_PROMPT_CHARS = 1_000_000
DEFAULT_IMAGE_PROMPT = "Describe this image."

# generation parameters shared by generate and describe_image
MaxTokens = Annotated[
    int | None,
    Strict(),
    Field(ge=1, le=131_072, description="Most tokens to generate. Default: the server's default_max_tokens."),
]
Temperature = Annotated[
    float | None,
    Strict(),
    Field(
        ge=0,
        le=2,
        description="Sampling temperature; 0 means greedy (repeatable while the call decodes alone), and "
        "then top_p, top_k and seed are refused (they would have no effect). Default: the model's own.",
    ),
]
TopP = Annotated[
    float | None, Strict(), Field(gt=0, le=1, description="Nucleus sampling mass; turns sampling on.")
]
TopK = Annotated[
    int | None,
    Strict(),
    Field(ge=1, le=100_000, description="Sample among the k likeliest tokens; turns sampling on."),
]
RepetitionPenalty = Annotated[
    float | None,
    Strict(),
    Field(gt=0, le=10, description="Above 1 discourages repeating tokens; 1 is neutral."),
]
StopStrings = Annotated[
    str | list[str] | None,
    Field(description=f"Up to {MAX_STOP_STRINGS} strings that end the generation; not included in text."),
]
Seed = Annotated[
    int | None,
    Strict(),
    Field(
        ge=0,
        le=2**63 - 1,
        description=(
            "Random seed for sampling: the same seed and arguments repeat the text while the call decodes "
            "alone on the model. Calls decoding beside it can change the text, and so can a prompt served "
            "from the prefix cache on CPUs that compute in bf16 (load the model with runtime_config "
            '{"prefix_caching": false} to rule that out).'
        ),
    ),
]

JsonSchema = Annotated[
    dict[str, Any] | None,
    Field(
        description="Constrain the text to JSON matching this JSON Schema (an object): e.g. "
        '{"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}, '
        '"required": ["city", "population"]}; {"type": "object"} for any JSON object. Sampling is '
        "constrained token by token, so the text parses and matches unless finish_reason is 'length' "
        "(then it is cut short: raise max_tokens, or bound the schema with maxLength, maxItems, enum). "
        "Say in the prompt what the fields mean: the schema decides the shape, the prompt the content. "
        f"{', '.join(UNENFORCED_KEYWORDS)} are refused (the engine does not hold to them: use enum); so is a "
        "schema the engine cannot use (e.g. a pattern with lookbehind), with the reason, one over "
        f"{MAX_SCHEMA_CHARS // 1024} KiB as compact JSON, one whose grammar takes over "
        f"{SCHEMA_COMPILE_BUDGET_S:g} s to compile (long maxLength values, thousands of properties), and "
        "stop strings given with it.",
    ),
]


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """Map the application's exceptions onto MCP tool errors (the one place that does)."""
    try:
        yield
    except UserError as exc:
        raise ToolError(str(exc)) from exc
    except ServerFault as exc:
        logger.error("server fault: %s", exc)
        raise ToolError(f"{exc} (a server-side fault; details are in the server's log)") from exc


class _ProgressReporter:
    """Adapts the app's progress callbacks to MCP progress notifications (increasing values).

    The app reports two kinds: status lines (value ``None``: a model loading) and, for the text
    tools, generated text (value: pieces so far). With ``text_only`` a status line is sent without
    its message, so that a caller joining the messages gets exactly the text; the notification
    still tells it the call is alive (a client may reset its timeout on progress)."""

    def __init__(self, ctx: Context, total: float | None = None, *, text_only: bool = False) -> None:
        self._ctx = ctx
        self._total = total
        self._text_only = text_only
        self._last = 0.0

    async def __call__(self, message: str, value: float | None) -> None:
        self._last = max(self._last + 1, value or 0.0)
        shown = None if self._text_only and value is None else message
        await self._ctx.report_progress(self._last, self._total, shown)


def _progress(ctx: Context, total: float | None = None, *, text_only: bool = False) -> Progress:
    return _ProgressReporter(ctx, total, text_only=text_only)


PROGRESS_ONLY_CONTEXT = frozenset({"load_model", "generate", "describe_image"})
"""Tools whose ``Context`` serves only ``report_progress`` (through ``_progress``): the stdio wire
may serve them with a context that sends progress notifications and nothing else."""


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def _dump(models: list[BaseModel] | BaseModel) -> Any:
    if isinstance(models, list):
        return [m.model_dump(mode="json", exclude_none=True) for m in models]
    return models.model_dump(mode="json", exclude_none=True)


def unknown_arguments_result(server: MCPServer, name: str, arguments: Any) -> CallToolResult | None:
    """The error result for ``tools/call`` arguments the tool does not have (the SDK would drop them
    silently), or ``None`` when there are none or the tool is unknown (the SDK answers that)."""
    tool = server._tool_manager.get_tool(name)  # the SDK has no public lookup of one tool
    if tool is None or not isinstance(arguments, dict):
        return None
    known = set(tool.parameters.get("properties", {}))
    unknown = set(arguments) - known
    if not unknown:
        return None
    text = f"unknown argument(s) {', '.join(sorted(unknown))}; this tool takes: {', '.join(sorted(known))}"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


class _UnknownArguments(ServerMiddleware[Any]):
    """Refuses unknown ``tools/call`` arguments on the SDK's path (see ``unknown_arguments_result``)."""

    def __init__(self) -> None:
        self.server: MCPServer | None = None

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params
        if (
            ctx.method == "tools/call"
            and isinstance(params, dict)
            and self.server is not None
            and _handshake_done(ctx)  # before it, the SDK refuses every call alike (-32602)
        ):
            refusal = unknown_arguments_result(self.server, str(params.get("name")), params.get("arguments"))
            if refusal is not None:
                stamp = self.server._lowlevel_server.server_info_stamp  # the SDK's stamp, its private server
                return shaped_refusal(refusal, ctx.protocol_version, stamp)
        return await call_next(ctx)


def shaped_refusal(
    refusal: CallToolResult, version: str, server_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A refusal as the SDK shapes a tool's result for the connection's protocol version (a result
    a middleware returns is sent as it is, so it must be shaped here: no fields the version lacks;
    on a 2026-era connection, ``resultType`` and the ``serverInfo`` stamp of ``_meta`` its results
    carry)."""
    dumped = refusal.model_dump(by_alias=True, mode="json", exclude_none=True)
    shaped = serialize_server_result("tools/call", version, dumped)
    if version in MODERN_PROTOCOL_VERSIONS:
        shaped.setdefault("resultType", "complete")
        if server_info is not None:
            shaped["_meta"] = {**shaped.get("_meta", {}), SERVER_INFO_META_KEY: server_info}
    return shaped


def _handshake_done(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the connection's handshake let requests through (the SDK keeps that on its
    connection, which the context reaches only through the session's private attribute; without
    it, whether the host's initialize was recorded)."""
    connection = getattr(ctx.session, "_connection", None)
    if connection is not None and hasattr(connection, "initialize_accepted"):
        return bool(connection.initialize_accepted)
    return ctx.session.client_params is not None  # public: the host's initialize was recorded


def _wav_seconds(size: int) -> int:
    """Seconds of speech that ``size`` bytes of WAV hold (Kokoro: 24 kHz, 16-bit mono)."""
    return round(size / (24_000 * 2))


def _media_sources(app: OpenArcApp, kind: str) -> str:
    """How a caller of this server may send media: what tool descriptions say, as the server checks it."""
    data = f"base64 data, or a data:{kind}/...;base64, URL"
    roots = app.media_roots()
    if roots is None:
        return f"a file path on the server's machine (preferred), {data}"
    if not roots:
        return f"{data} (this server reads no files for its callers: file paths are refused)"
    folders = ", ".join(str(root) for root in roots)
    return f"a file path inside {folders} on the server's machine (preferred), {data}"


def _body_limit_note(app: OpenArcApp) -> str:
    """Over HTTP, base64 media must also fit in one request body."""
    if app.settings.transport != "http":
        return ""
    limit = app.settings.max_body_bytes
    return f" Sent as base64, the whole request must fit in {limit} bytes (about {limit * 3 // 4} of media)."


def build_mcp_server(app: OpenArcApp, *, with_tools: bool = True) -> MCPServer:
    """An ``MCPServer`` whose tools and resources call ``app``; it holds no state of its own.

    ``with_tools=False`` leaves the tools and resources to ``add_tools`` (the stdio transport adds
    them once the handshake is answered: registering them, ~40 ms of schema building, does not
    change the answer to ``initialize``)."""
    argument_check = _UnknownArguments()
    server = MCPServer(
        name="openarc-mcp",
        title="OpenArc MCP: local OpenVINO models",
        instructions=INSTRUCTIONS.format(loading=_AUTO_LOAD if app.settings.auto_load else _NO_AUTO_LOAD),
        version=__version__,
        log_level=app.settings.log_level,
        middleware=[argument_check],
    )
    argument_check.server = server
    if with_tools:
        add_tools(server, app)
    return server


def add_tools(server: MCPServer, app: OpenArcApp) -> None:
    """Register the tools and resources on a server built ``with_tools=False``."""
    _add_model_tools(server, app)
    _add_generate_tool(server, app)
    _add_retrieval_tools(server, app)
    _add_speech_tools(server, app)
    _add_resources(server, app)
    publish_inline_schemas(server)
    plain_refusals(server)


def publish_inline_schemas(server: MCPServer) -> None:
    """Publish every tool's input and output schema without ``$ref``/``$defs`` (see ``inline_refs``).

    The SDK derives them from the signatures with references to shared definitions; its Tool
    records read both fields live, so replacing them changes what ``tools/list`` says, nothing else
    (arguments and results are still validated by their pydantic models)."""
    for tool in server._tool_manager.list_tools():  # the SDK has no public setter
        tool.parameters = inline_refs(tool.parameters)
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = inline_refs(tool.fn_metadata.output_schema)


def _add_model_tools(server: MCPServer, app: OpenArcApp) -> None:
    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    )
    async def load_model(
        ctx: Context,
        model_name: Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_MODEL_NAME,
                pattern=MODEL_NAME_PATTERN,
                description="Name to register the model under; tools take it as 'model'. For a prepared "
                "model (see openarc://models) its name alone is enough.",
            ),
        ],
        model_path: Annotated[
            str | None,
            Field(
                description="Local OpenVINO model folder, or a .gguf file for an LLM, inside the server's "
                "models directory (a relative path is taken there) or its --model-roots. "
                "Omit for a prepared model."
            ),
        ] = None,
        model_type: Annotated[
            ModelType | None,
            Field(description="What the model does. Omit for a prepared model; required with model_path."),
        ] = None,
        device: Annotated[
            str | None,
            Field(
                description="OpenVINO device: CPU, GPU, GPU.1, NPU, AUTO, ... (any case; one not on "
                "this machine is refused, naming those it has: openarc://devices). Default: the server's."
            ),
        ] = None,
        engine: Annotated[
            str | None, Field(description="Engine for the model type; default 'genai' (OpenVINO GenAI).")
        ] = None,
        runtime_config: Annotated[
            dict[str, RuntimeValue] | None,
            Field(
                description="OpenVINO properties (upper case) for compilation, e.g. "
                '{"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": "/tmp/ov-cache"}, and engine options '
                "(lower case). LLM: batching (true: concurrent calls decode together; false: one at a "
                "time), max_concurrent_requests, kv_cache_gb, max_batched_tokens, prefix_caching. "
                "Embedding: pooling, normalize, max_length, query_instruction, document_instruction. "
                "Reranker: max_length. Whisper: word_timestamps (false: built without word timings; "
                "default: with them on the CPU when the model has alignment heads). TTS, VLM: none."
            ),
        ] = None,
    ) -> ModelRecord:
        """Load a model into memory so tools can use it, and wait until it is ready.

        Returns the model's record: name, model_type, engine, device, status ('loaded') and
        load_time_s. A name already in use is an error (unload it first); a failed load can be
        retried under the same name. Loading takes seconds; progress is reported while it runs.
        """
        request = LoadRequest(
            model_name=model_name,
            model_path=Path(model_path) if model_path else None,
            model_type=model_type,
            device=device,
            engine=engine,
            runtime_config=runtime_config or {},
        )
        with _tool_errors():
            return await app.load_model(request, _progress(ctx))

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
    )
    async def unload_model(
        model_name: Annotated[str, Field(min_length=1, description="Name of a loaded model.")],
    ) -> ModelRecord:
        """Unload a model and free its memory.

        Requests still waiting for the model, or running on it, are answered with an error.
        Returns the model's record with its final status ('unloaded').
        """
        with _tool_errors():
            return await app.unload_model(model_name)


def _add_generate_tool(server: MCPServer, app: OpenArcApp) -> None:
    default_max = app.settings.default_max_tokens

    @server.tool(
        annotations=ToolAnnotations(  # not read-only: it may load a prepared model on first use
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def generate(
        ctx: Context,
        prompt: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=MAX_PROMPT_CHARS,
                description="A single user message; the model's chat template is applied. "
                "Give this or 'messages', not both.",
            ),
        ] = None,
        messages: Annotated[
            list[ChatMessage] | None,
            Field(
                min_length=1,
                max_length=1000,
                description="A chat: [{role: system|user|assistant|tool, content: text}], ending with a "
                "user (or tool) message.",
            ),
        ] = None,
        model: Annotated[
            str | None,
            Field(description="Name of an LLM (see openarc://models). Optional when exactly one is loaded."),
        ] = None,
        max_tokens: MaxTokens = None,
        temperature: Temperature = None,
        top_p: TopP = None,
        top_k: TopK = None,
        repetition_penalty: RepetitionPenalty = None,
        stop: StopStrings = None,
        seed: Seed = None,
        json_schema: JsonSchema = None,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Generate text with a local LLM, from a prompt or a chat.

        Returns the text, plus structured {text, finish_reason ('stop' | 'length'), usage:
        {prompt_tokens, completion_tokens}, metrics: {ttft_ms, tokens_per_second, total_ms}, model}.
        When the caller asks for progress, each notification's message carries the text generated
        since the previous one (joined, they are the text); while the model loads on first use,
        notifications come without a message. Cancelling the request stops generation. Concurrent
        calls on one model decode together (continuous batching, by default for model folders on
        CPU and GPU; a .gguf file, other devices or runtime_config {"batching": false} serve one
        call at a time).
        """
        with _tool_errors():
            options = _options(
                max_tokens or default_max,
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                stop,
                seed,
                json_schema,
            )
            result = await app.generate(
                model, prompt, messages, options, _progress(ctx, float(options.max_tokens), text_only=True)
            )
        return _text_result(result)

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def describe_image(
        ctx: Context,
        image: Annotated[
            str | list[str] | None,
            Field(
                description=f"The image: {_media_sources(app, 'image')}; or a list of them for several "
                "images. PNG, JPEG, WebP or GIF (first frame); at most "
                f"{app.settings.max_images} images, each at most {app.settings.max_image_pixels} pixels and "
                f"{app.settings.max_media_bytes} bytes.{_body_limit_note(app)} "
                "http(s) URLs are refused: the server is offline."
            ),
        ] = None,
        prompt: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=MAX_PROMPT_CHARS,
                description="What to do with the image(s); default 'Describe this image.' when no "
                "messages are given. Give this or 'messages', not both.",
            ),
        ] = None,
        messages: Annotated[
            list[VisionMessage] | None,
            Field(
                min_length=1,
                max_length=1000,
                description="An OpenAI-style chat instead of prompt: [{role: system|user|assistant, "
                "content: text or [{type: 'text', text} | {type: 'image_url', image_url: {url}}]}], ending "
                "with a user message; the last message's images sit where their parts are, earlier "
                "turns' images and 'image' images open it (the model sees every image with the last "
                "message).",
            ),
        ] = None,
        model: Annotated[
            str | None,
            Field(description="Name of a VLM (see openarc://models). Optional when exactly one is loaded."),
        ] = None,
        max_tokens: MaxTokens = None,
        temperature: Temperature = None,
        top_p: TopP = None,
        top_k: TopK = None,
        repetition_penalty: RepetitionPenalty = None,
        stop: StopStrings = None,
        seed: Seed = None,
        json_schema: JsonSchema = None,
    ) -> Annotated[CallToolResult, GenerateResult]:
        """Describe or answer questions about images with a local vision-language model (VLM).

        Returns the text, plus structured {text, finish_reason ('stop' | 'length'), usage, metrics,
        model}, as generate does; progress notifications carry partial text (none while the model
        loads), and cancelling the request stops generation.
        """
        images = [image] if isinstance(image, str) else list(image or [])
        if prompt is None and messages is None:
            prompt = DEFAULT_IMAGE_PROMPT
        with _tool_errors():
            options = _options(
                max_tokens or default_max,
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                stop,
                seed,
                json_schema,
            )
            progress = _progress(ctx, float(options.max_tokens), text_only=True)
            result = await app.describe_image(model, images, prompt, messages, options, progress)
        return _text_result(result)


def _options(
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float | None,
    stop: str | list[str] | None,
    seed: int | None,
    json_schema: dict[str, Any] | None,
) -> GenerationOptions:
    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        stop=stop_strings(stop),
        seed=seed,
        json_schema=json_schema,
    )


def _text_result(result: GenerateResult) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=result.text)],
        structured_content=result.model_dump(mode="json"),
    )


def _add_retrieval_tools(server: MCPServer, app: OpenArcApp) -> None:
    limits = app.settings
    read_only = ToolAnnotations(  # not read-only: they may load a prepared model on first use
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )

    @server.tool(annotations=read_only)
    async def embed(
        texts: Annotated[
            str | list[str],
            Field(
                description=f"A text or a list of texts (at most {limits.max_texts}, each at most "
                f"{limits.max_text_chars} characters and {limits.max_total_chars} in all, none empty)."
            ),
        ],
        model: Annotated[
            str | None,
            Field(
                description="Name of an embedding model (see openarc://models). "
                "Optional when exactly one is loaded."
            ),
        ] = None,
        input_type: Annotated[
            Literal["document", "query"],
            Field(
                description="'query' for search queries, 'document' for texts to search; applies the "
                "model's instruction for that kind when it has one."
            ),
        ] = "document",
        dimensions: Annotated[
            int | None,
            Strict(),
            Field(ge=1, description="Keep only the first N dimensions, re-normalised (Matryoshka style)."),
        ] = None,
    ) -> Annotated[CallToolResult, EmbedResult]:
        """Turn texts into embedding vectors with a local model, for search, clustering or similarity.

        Returns structured {embeddings: [[float]] in input order, dimensions, model, usage:
        {prompt_tokens}}; the text block only summarises them. Vectors are unit length when the
        model normalises (cosine similarity = dot product). Texts longer than the model's maximum
        length are truncated by the model, as in sentence-transformers.
        """
        with _tool_errors():
            result = await app.embed(model, texts, input_type, dimensions)
        summary = (
            f"{len(result.embeddings)} embedding(s) of {result.dimensions} dimensions from {result.model}"
        )
        return CallToolResult(
            content=[TextContent(type="text", text=summary)],
            structured_content=result.model_dump(mode="json"),
        )

    @server.tool(annotations=read_only)
    async def rerank(
        query: Annotated[str, Field(min_length=1, description="What the documents should be relevant to.")],
        documents: Annotated[
            list[str],
            Field(
                min_length=1,
                description=f"Texts to rank (at most {limits.max_texts}, each at most "
                f"{limits.max_text_chars} characters and {limits.max_total_chars} in all, none empty).",
            ),
        ],
        model: Annotated[
            str | None,
            Field(
                description="Name of a reranker model (see openarc://models). "
                "Optional when exactly one is loaded."
            ),
        ] = None,
        top_n: Annotated[
            int | None, Strict(), Field(ge=1, description="Return only the best N; default: every document.")
        ] = None,
    ) -> RerankResult:
        """Rank documents by relevance to a query with a local reranker model.

        Returns {results: [{index, relevance_score (0..1, higher is better), document}], model},
        best first; index is the document's position in the input list. A (query, document) pair
        longer than the model's maximum length is cut, document first, as cross-encoders do.
        """
        with _tool_errors():
            return await app.rerank(model, query, documents, top_n)


def _add_speech_tools(server: MCPServer, app: OpenArcApp) -> None:
    settings = app.settings

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    )
    async def transcribe(
        audio: Annotated[
            str,
            Field(
                min_length=1,
                description=f"The audio: {_media_sources(app, 'audio')}. Any format soundfile reads "
                "(wav, flac, ogg, ...); stereo is mixed down, any sample rate resampled. "
                f"At most {settings.max_media_bytes} bytes and {settings.max_audio_seconds:g} s."
                f"{_body_limit_note(app)}",
            ),
        ],
        model: Annotated[
            str | None,
            Field(
                description="Name of a Whisper model (see openarc://models). "
                "Optional when exactly one is loaded."
            ),
        ] = None,
        language: Annotated[
            str | None,
            Field(description="Language of the speech, e.g. 'en'; default: detected (multilingual models)."),
        ] = None,
        task: Annotated[
            Literal["transcribe", "translate"],
            Field(
                description="'translate' gives English text from other languages (multilingual models only)."
            ),
        ] = "transcribe",
        timestamps: Annotated[bool, Strict(), Field(description="Also return timed segments.")] = False,
        word_timestamps: Annotated[
            bool,
            Strict(),
            Field(
                description="Also return every word with its start and end (transcribe only; the "
                "call takes ~20% longer)."
            ),
        ] = False,
        prompt: Annotated[
            str | None,
            Field(
                max_length=1000,
                description="Text that guides spelling and style (names, terms); past 223 tokens only "
                "its end is used (half the model's 448-token window).",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, TranscribeResult]:
        """Transcribe speech to text with a local Whisper model; audio of any length.

        Returns the transcript as text plus structured {text, language, duration_s, segments:
        [{start, end, text}] (with timestamps), words: [{word, start, end}] (with
        word_timestamps), model}. Silent audio (below -60 dBFS) gives empty text.
        """
        with _tool_errors():
            result = await app.transcribe(
                model, audio, language, task, timestamps, prompt, words=word_timestamps
            )
        return CallToolResult(
            content=[TextContent(type="text", text=result.text)],
            structured_content=result.model_dump(mode="json"),
        )

    inline_limit = settings.max_inline_audio_bytes

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    )
    async def speak(
        text: Annotated[
            str,
            Field(
                min_length=1,
                max_length=settings.max_speak_chars,
                description="What to say. All of it is spoken, across sentences and lines.",
            ),
        ],
        model: Annotated[
            str | None,
            Field(
                description="Name of a TTS model (see openarc://models). Optional when exactly one is loaded."
            ),
        ] = None,
        voice: Annotated[
            str | None,
            Field(
                min_length=1,
                description="A voice of the model (listed in openarc://models/{model}); default: its first.",
            ),
        ] = None,
        speed: Annotated[
            float, Strict(), Field(ge=0.5, le=2.0, description="Speaking rate, 1.0 is normal.")
        ] = 1.0,
        language: Annotated[Literal["en-us", "en-gb"], Field(description="Pronunciation.")] = "en-us",
        format: Annotated[
            AudioFormat, Field(description="Audio file format: wav, flac, ogg (Vorbis), mp3, opus (in Ogg).")
        ] = "wav",
        output_path: Annotated[
            str | None,
            Field(
                description="Also write the audio to this file, relative to (and confined to) the server's "
                f"output directory ({app.output_dir}); its extension must match format. Audio over "
                f"{inline_limit} bytes (about {_wav_seconds(inline_limit)} s of WAV) is written there "
                "instead of returned inline"
                + ("; files are on the server's machine." if settings.transport == "http" else ".")
            ),
        ] = None,
    ) -> Annotated[CallToolResult, SpeakResult]:
        """Turn text into speech with a local model (Kokoro, 24 kHz mono).

        Returns an audio block (WAV by default) plus structured {sample_rate, duration_s, voice,
        format, bytes, path, inline, model}. Audio larger than the inline limit (see output_path) is
        written to a file in the output directory instead, and `path` says where.
        """
        with _tool_errors():
            result, data = await app.speak(model, text, voice, speed, language, format, output_path)
        summary = f"{result.duration_s:.2f} s of speech ({result.voice}, {result.format})"
        content: list[TextContent | AudioContent] = [TextContent(type="text", text=summary)]
        if data is not None:
            encoded = base64.b64encode(data).decode("ascii")
            content.append(AudioContent(type="audio", data=encoded, mime_type=MIME_TYPES[result.format]))
        if result.path:
            content[0] = TextContent(type="text", text=f"{summary}, written to {result.path}")
        return CallToolResult(content=list(content), structured_content=result.model_dump(mode="json"))


def _add_resources(server: MCPServer, app: OpenArcApp) -> None:
    @server.resource(
        "openarc://models",
        name="models",
        title="Models",
        description="Every model: loaded, loading, failed, prepared (available) and in the catalogue "
        "(not_prepared), with type, device, status and request counters.",
        mime_type="application/json",
    )
    async def models() -> str:
        return _json_text(_dump(list(await app.list_models())))

    @server.resource(
        "openarc://models/{name}",
        name="model",
        title="One model",
        description="One model: how it was loaded, status, counters, last metrics, queue, metadata.",
        mime_type="application/json",
    )
    async def model(name: str) -> str:
        try:
            return _json_text(_dump(await app.model_details(name)))
        except ModelNotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from exc

    @server.resource(
        "openarc://devices",
        name="devices",
        title="Devices",
        description="OpenVINO devices on this machine (CPU, GPU, NPU, ...), full names, key properties.",
        mime_type="application/json",
    )
    async def devices() -> str:
        return _json_text(_dump(list(await app.list_devices())))
