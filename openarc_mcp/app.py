"""The application object: owns the model registry and the workers, for every transport.

Transports hold a reference to one ``OpenArcApp`` and call its methods; state never lives in an
MCP lifespan (which runs once per SSE connection). Enter it with ``async with``: it runs the
workers and background loads in its own task group, and stops them on exit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import anyio
from anyio import CapacityLimiter
from anyio.abc import TaskGroup
from pydantic import ValidationError

from . import heap
from .audio_out import SpeechEncoding, output_target, write_audio
from .errors import (
    InvalidRequestError,
    ModelChoiceError,
    ModelExistsError,
    ModelFailedError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelPathError,
    ModelTypeError,
    ModelUnloadedError,
    OpenArcError,
    RequestTimeoutError,
    short_reason,
)
from .inputs import (
    VisionChat,
    chat_input,
    check_dimensions,
    check_sampling,
    check_text,
    rerank_top_n,
    text_list,
    truncate_dimensions,
    vision_chat,
)
from .library import CATALOGUE, LibraryModel, find_model, list_models, model_at
from .media import Audio, check_media_size, decode_audio, decode_image, read_media_bytes
from .registry import ModelEntry, ModelRegistry, check_model_path, confine_model_path, resolve_engine
from .schema import (
    AudioFormat,
    ChatMessage,
    DeviceInfo,
    EmbeddingUsage,
    EmbedResult,
    GenerateResult,
    GenerationOptions,
    LoadRequest,
    ModelDetails,
    ModelRecord,
    ModelSpec,
    ModelStatus,
    ModelType,
    RerankItem,
    RerankResult,
    SpeakResult,
    TranscribeResult,
    TranscriptSegment,
    TranscriptWord,
    VisionMessage,
)
from .settings import ConfiguredModel, Settings, load_config_file
from .workers import BatchPart, BatchSettings, ModelWorker, Work
from .workers.tasks import (
    describe_engine,
    describe_image_work,
    embed_alone,
    embed_many,
    generate_work,
    rerank_work,
    speak_work,
    transcribe_work,
)

if TYPE_CHECKING:  # numpy and the engines are imported where used: the server starts without them
    import numpy as np

    from .engines.embedding import EmbeddingOutput, InputType
    from .engines.generation import GenerationOutput
    from .engines.rerank import RerankOutput
    from .engines.tts import Speech
    from .engines.whisper import Transcript

__all__ = ["OpenArcApp", "Progress"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Progress = Callable[[str, float | None], Awaitable[None]]
"""Receives ``(message, progress_value_or_None)`` while a request waits or streams."""

_STATUS_INTERVAL = 1.0  # seconds between "still loading" progress messages
_SHUTDOWN_TIMEOUT = 2.0  # seconds shutdown waits for running requests to stop
_STOPPED_LOADING = "the server stopped while the model was loading"
_CLOSE_AT_EXIT = 10.0  # seconds leaving the app waits for its engines to close (their processes to end)
_UNLOAD_WAIT = 30.0  # seconds an unload waits for the running request to stop before freeing
BUILD_DEADLINE = 3660.0
"""Seconds an engine may take to build before its load fails and the device's load slot is freed
(engines in a process of their own are killed a minute before: ``isolated.READY_DEADLINE``; a
thread cannot be, and is left to finish, its result dropped)."""
_LOAD_TOOLS = "the load_model tool, or POST /v1/models/load over HTTP"
_LOAD_AGAIN = f"load it again to retry ({_LOAD_TOOLS})"
_COALESCED = (ModelType.EMBEDDING,)  # types whose concurrent requests share engine calls


class OpenArcApp:
    """One process's models and workers, shared by every transport and connection."""

    def __init__(self, settings: Settings, *, defer_preloads: bool = False) -> None:
        """``defer_preloads``: models configured to load at start wait for ``start_preloads()``
        (the stdio transport calls it once the handshake is answered), else they start on entry."""
        self.settings = settings
        self._defer_preloads = defer_preloads
        self._pending_preloads: list[LoadRequest] = []
        self.registry = ModelRegistry()
        self._device_limiters: dict[str, CapacityLimiter] = {}
        self._load_limiters: dict[str, CapacityLimiter] = {}
        self._media_slots = anyio.Semaphore(settings.media_in_flight, max_value=settings.media_in_flight)
        self._task_group: TaskGroup | None = None
        self._startup_names: list[str] = []
        self.constructions_in_flight = 0  # engines being built, those of models unloaded meanwhile too
        self._stopping = False

    async def __aenter__(self) -> Self:
        preloads = self._preload_requests()  # a bad config file fails here, before anything starts
        self._stopping = False
        self._startup_names = [request.model_name for request in preloads]
        self._pending_preloads = preloads
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if not self._defer_preloads:
            self.start_preloads()
        return self

    def start_preloads(self) -> None:
        """Begin loading the models configured to load at start (once; later calls, and calls once
        the app has stopped, do nothing)."""
        if self._task_group is None:
            return
        preloads, self._pending_preloads = self._pending_preloads, []
        for request in preloads:
            self._tasks().start_soon(self._preload, request)

    def stopping(self) -> bool:
        """Whether the app is being left: loads that finish from now on free their engines (a
        method, not a property: it changes across an await, which type checkers do not assume)."""
        return self._stopping

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        task_group = self._tasks()
        self._stopping = True  # a load that finishes from now on frees its engine (see _construct)
        with anyio.CancelScope(shield=True):
            await self._stop_workers()
            await self._close_engines()
        task_group.cancel_scope.cancel()
        self._task_group = None
        return await task_group.__aexit__(exc_type, exc, tb)

    # ----- load / unload -------------------------------------------------------------------

    async def load_model(
        self, request: LoadRequest, progress: Progress | None = None, *, any_path: bool = False
    ) -> ModelRecord:
        """Load a model and wait until it is ready (the load goes on if the caller leaves).

        A caller's ``model_path`` must lie in the models directory or ``--model-roots`` (a relative
        one is taken inside the models directory); only the operator's own configuration
        (``any_path``) may name a folder elsewhere.
        """
        if request.model_path is not None and not any_path:
            # '~' is the server's home for a local host; a remote caller is told nothing of it
            given = request.model_path
            inside_models_dir = self.settings.models_dir / (
                given if self.settings.transport == "http" else given.expanduser()
            )
            request = request.model_copy(update={"model_path": inside_models_dir})
            confine_model_path(inside_models_dir, self.model_roots())
        spec, library = self._spec_for(request)
        engine_name, kind = resolve_engine(spec.model_type, spec.engine)
        check_model_path(spec, kind)
        extra = {"source": library.source, "description": library.description} if library else {}
        tasks = self._tasks()  # before the name is claimed: a stopped app must not leave it 'loading'
        self._notice_ended_processes()  # a model whose process died frees its name
        entry = self.registry.begin_load(spec, engine_name, extra)
        tasks.start_soon(self._construct, entry, kind.factory)
        return await self._await_settled(entry, progress)

    async def unload_model(self, name: str) -> ModelRecord:
        """Unload a model: queued and running requests get an error, then memory is freed.

        Runs to the end even if the caller goes away, so a model is never left 'unloading'. A model
        still loading is forgotten at once; its engine is closed when its construction returns.
        """
        entry = self.registry.begin_unload(name)
        with anyio.CancelScope(shield=True):
            try:
                if entry.worker is not None:
                    await _close_worker(entry.worker)
            finally:
                self.registry.finish_unload(entry)
                heap.resettle()  # nothing here holds the worker now: its cycles can be collected
        return entry.record

    # ----- inference -----------------------------------------------------------------------

    async def generate(
        self,
        model: str | None,
        prompt: str | None,
        messages: list[ChatMessage] | None,
        options: GenerationOptions,
        progress: Progress | None = None,
    ) -> GenerateResult:
        """Generate text for a prompt or a chat on an LLM."""
        chat = chat_input(prompt, messages)
        check_sampling(options)
        entry = await self._ready_entry(model, ModelType.LLM, progress)
        work = partial(generate_work, chat, options)
        return _generated(entry, await self._run(entry, work, progress))

    async def complete(
        self, model: str | None, prompt: str, options: GenerationOptions, progress: Progress | None = None
    ) -> GenerateResult:
        """Continue a raw prompt on an LLM, without its chat template (OpenAI's legacy completions)."""
        if not prompt:
            raise InvalidRequestError("'prompt' is empty; give the text to continue")
        check_sampling(options)
        entry = await self._ready_entry(model, ModelType.LLM, progress)
        work = partial(generate_work, prompt, options, raw=True)
        return _generated(entry, await self._run(entry, work, progress))

    async def describe_image(
        self,
        model: str | None,
        images: list[str],
        prompt: str | None,
        messages: list[VisionMessage] | None,
        options: GenerationOptions,
        progress: Progress | None = None,
        *,
        require_image: bool = True,
    ) -> GenerateResult:
        """Answer a prompt or a chat about one or more images with a VLM (a chat without images
        too, unless ``require_image``: a chat API's text turns to a vision model)."""
        chat = vision_chat(prompt, messages, images, self.settings.max_images, require_image)
        check_sampling(options)
        await self._refuse_unknown(model)
        async with self._media_slot("describe_image"):
            pixels = await anyio.to_thread.run_sync(self._decode_images, chat)
            entry = await self._ready_entry(model, ModelType.VLM, progress)
            work = partial(describe_image_work, chat.messages, pixels, options)
            return _generated(entry, await self._run(entry, work, progress))

    @contextlib.asynccontextmanager
    async def _media_slot(self, tool: str) -> AsyncIterator[None]:
        """One of ``media_in_flight`` slots, held while a call's decoded media lives (decoded, queued,
        running): the memory media takes is bounded, however many such calls arrive at once."""
        timeout = self.settings.request_timeout
        acquired = False
        with anyio.move_on_after(timeout):
            await self._media_slots.acquire()
            acquired = True
        if not acquired:
            raise RequestTimeoutError(
                f"{tool}: {self.settings.media_in_flight} calls with media were being served and none "
                f"finished within {timeout:g} s; retry later"
            )
        try:
            yield
        finally:
            self._media_slots.release()

    def _decode_images(self, chat: VisionChat) -> list[np.ndarray]:
        """Every image of a chat as RGB pixels (blocking: runs in a thread)."""
        limits, roots = self.settings, self.media_roots()
        return [
            decode_image(
                read_media_bytes(source, name, limits.max_media_bytes, roots), name, limits.max_image_pixels
            )
            for source, name in zip(chat.images, chat.image_names, strict=True)
        ]

    async def embed(
        self,
        model: str | None,
        texts: str | list[str],
        input_type: InputType,
        dimensions: int | None,
        field: str = "texts",
    ) -> EmbedResult:
        """Embed texts (the argument ``field`` to the caller); concurrent calls on one model are
        coalesced into shared engine calls."""
        from .engines.embedding import EmbeddingEngine  # imported already once a model has loaded

        items = text_list(texts, field, self.settings)
        entry = await self._ready_entry(model, ModelType.EMBEDDING, None)
        engine = entry.worker.engine if entry.worker else None
        if isinstance(engine, EmbeddingEngine):
            check_dimensions(dimensions, engine.dimensions)  # before the work, not after it
        run_many = partial(embed_many, input_type)
        key = ("embed", engine.prefix(input_type) if isinstance(engine, EmbeddingEngine) else input_type)
        batch = BatchPart(key=key, items=items, run=run_many)
        output: EmbeddingOutput = await self._run(entry, partial(embed_alone, run_many, items), None, batch)
        native = len(output.vectors[0])
        return EmbedResult(
            embeddings=truncate_dimensions(output.vectors, dimensions, native),
            dimensions=dimensions or native,
            model=entry.spec.name,
            usage=EmbeddingUsage(prompt_tokens=sum(output.token_counts)),
        )

    async def rerank(
        self, model: str | None, query: str, documents: list[str], top_n: int | None
    ) -> RerankResult:
        """Rank documents by relevance to the query, best first."""
        check_text(query, "'query'", self.settings)
        items = text_list(documents, "documents", self.settings)
        keep = rerank_top_n(top_n, len(items))
        entry = await self._ready_entry(model, ModelType.RERANKER, None)
        output: RerankOutput = await self._run(entry, partial(rerank_work, query, items), None)
        results = [
            RerankItem(index=index, relevance_score=score, document=items[index])
            for index, score in output.ranking[:keep]
        ]
        return RerankResult(results=results, model=entry.spec.name)

    async def speak(
        self,
        model: str | None,
        text: str,
        voice: str | None,
        speed: float,
        language: str,
        audio_format: AudioFormat,
        output_path: str | None,
    ) -> tuple[SpeakResult, bytes | None]:
        """Synthesise speech; returns the result and the audio to send inline (None if too large)."""
        target = output_target(output_path, self.output_dir, audio_format)
        speech, data, name = await self.synthesize(model, text, voice, speed, language, audio_format)
        inline = len(data) <= self.settings.max_inline_audio_bytes
        path = None
        if target is not None or not inline:
            path = await anyio.to_thread.run_sync(write_audio, data, target, self.output_dir, audio_format)
        result = SpeakResult(
            sample_rate=speech.sample_rate,
            duration_s=round(speech.duration_s, 3),
            voice=speech.voice,
            format=audio_format,
            bytes=len(data),
            path=str(path) if path else None,
            inline=inline,
            model=name,
        )
        return result, data if inline else None

    async def synthesize(
        self,
        model: str | None,
        text: str,
        voice: str | None,
        speed: float,
        language: str,
        encoding: SpeechEncoding,
        field: str = "text",
    ) -> tuple[Speech, bytes, str]:
        """Speech for ``text`` (the argument ``field`` to the caller) encoded as asked, with the name
        of the model that spoke."""
        check_text(text, f"'{field}'", self.settings, self.settings.max_speak_chars, argument=field)
        entry = await self._ready_entry(model, ModelType.TTS, None)
        work = partial(speak_work, text, voice, language, speed, encoding)
        speech, data = await self._run(entry, work, None)
        return speech, data, entry.spec.name

    async def transcribe(
        self,
        model: str | None,
        audio: str | bytes,
        language: str | None,
        task: Literal["transcribe", "translate"],
        timestamps: bool,
        prompt: str | None,
        *,
        words: bool = False,
        field: str = "audio",
    ) -> TranscribeResult:
        """Speech to text (or to English) with a Whisper model; audio of any length.

        ``timestamps`` adds timed segments, ``words`` timed words. ``audio`` is a file's content, or
        a path / base64 / data URL to read it from; errors about it name it ``field``, as the
        caller knows it.
        """
        from .engines.whisper import SAMPLE_RATE as WHISPER_RATE

        settings = self.settings
        await self._refuse_unknown(model)
        async with self._media_slot("transcribe"):
            if isinstance(audio, bytes):
                data = check_media_size(audio, field, settings.max_media_bytes)
            else:
                data = await anyio.to_thread.run_sync(
                    read_media_bytes, audio, field, settings.max_media_bytes, self.media_roots()
                )
            decoded: Audio = await anyio.to_thread.run_sync(
                decode_audio, data, field, WHISPER_RATE, settings.max_audio_seconds
            )
            del data
            entry = await self._ready_entry(model, ModelType.WHISPER, None)
            work = partial(transcribe_work, decoded.samples, language, task, timestamps, prompt, words)
            transcript: Transcript = await self._run(entry, work, None)
        segments = [TranscriptSegment(start=s.start, end=s.end, text=s.text) for s in transcript.segments]
        return TranscribeResult(
            text=transcript.text,
            language=transcript.language,
            duration_s=round(decoded.duration_s, 3),
            segments=segments,
            words=[TranscriptWord(word=w.word, start=w.start, end=w.end) for w in transcript.words],
            model=entry.spec.name,
        )

    def media_roots(self) -> list[Path] | None:
        """Folders media paths must lie in; ``None``: any file (stdio without --media-roots)."""
        roots = [Path(root).expanduser().resolve() for root in self.settings.media_roots]
        if roots or self.settings.transport == "stdio":
            return roots or None
        return []  # HTTP callers are remote: no server file unless the operator names folders

    def model_roots(self) -> list[Path]:
        """Folders a caller's ``model_path`` may lie in: the models directory and --model-roots."""
        folders = [self.settings.models_dir, *map(Path, self.settings.model_roots)]
        return [folder.expanduser().resolve() for folder in folders]

    @property
    def output_dir(self) -> Path:
        """Where speak may write files."""
        return self.settings.output_dir or self.settings.models_dir.parent / "outputs"

    # ----- views ---------------------------------------------------------------------------

    async def list_models(self) -> list[ModelRecord]:
        """Every model this server knows: loaded or loading, prepared, and in the catalogue."""
        library = await self._prepared_models()
        self._notice_ended_processes()
        records = {entry.spec.name: entry.record for entry in self.registry.entries()}
        for model in library:
            records.setdefault(model.name, _available_record(model))
        for name in CATALOGUE:
            records.setdefault(name, _catalogue_record(name))
        return [records[name] for name in sorted(records)]

    async def model_details(self, name: str) -> ModelDetails:
        """One model in full; unknown names are a clear error."""
        library = await self._prepared_model(name)
        self._notice_ended_processes()
        entry = self.registry.get(name)
        meta = library.model_dump(mode="json") if library else None
        if entry is not None:
            worker = entry.worker
            return ModelDetails(
                record=entry.record,
                spec=entry.spec,
                queued_requests=worker.queued if worker else 0,
                running_requests=worker.running if worker else 0,
                cancelled_requests=worker.cancelled if worker else 0,
                engine=describe_engine(worker.engine) if worker else None,
                batching=asdict(worker.batch_stats)
                if worker and entry.spec.model_type in _COALESCED
                else None,
                library=meta,
            )
        records = await self.list_models()
        record = next((r for r in records if r.name == name), None)
        if record is None:
            raise ModelNotFoundError(f"no model named '{name}'; known: {_usable_names(records)}")
        return ModelDetails(record=record, library=meta)

    async def _prepared_models(self) -> list[LibraryModel]:
        """Every prepared model's metadata, read in a thread: a folder each, never on the event loop."""
        return await anyio.to_thread.run_sync(list_models, self.settings.models_dir)

    async def _prepared_model(self, name: str) -> LibraryModel | None:
        """One prepared model's metadata, if there is such a model (read in a thread)."""
        return await anyio.to_thread.run_sync(find_model, self.settings.models_dir, name)

    async def model_type_of(self, name: str) -> ModelType | None:
        """The type of a loaded or prepared model; ``None`` for a name this server does not know."""
        entry = self.registry.get(name)
        if entry is not None:
            return entry.spec.model_type
        library = await self._prepared_model(name)
        return library.model_type if library is not None else None

    def startup_status(self) -> dict[str, ModelRecord | None]:
        """The models configured to load at start (preload, config file) and where each one is."""
        self._notice_ended_processes()
        return {name: self._record_of(name) for name in self._startup_names}

    def _record_of(self, name: str) -> ModelRecord | None:
        entry = self.registry.get(name)
        return entry.record if entry is not None else None

    async def list_devices(self) -> list[DeviceInfo]:
        """OpenVINO's devices; queried in a thread (the first call imports OpenVINO)."""
        from .engines.devices import list_devices

        return await anyio.to_thread.run_sync(list_devices)

    # ----- internals -----------------------------------------------------------------------

    def _tasks(self) -> TaskGroup:
        if self._task_group is None:
            raise RuntimeError("OpenArcApp is not running; use 'async with OpenArcApp(...)'")
        return self._task_group

    def _limiter(self, device: str) -> CapacityLimiter:
        """Inference calls at once on a device, across its models."""
        return _limiter_for(self._device_limiters, device, self.settings.device_concurrency)

    def _load_limiter(self, device: str) -> CapacityLimiter:
        """One model construction at a time per device, so a slow one never blocks another device."""
        return _limiter_for(self._load_limiters, device, 1)

    def _spec_for(self, request: LoadRequest) -> tuple[ModelSpec, LibraryModel | None]:
        library = find_model(self.settings.models_dir, request.model_name)
        path, model_type = request.model_path, request.model_type
        if library is not None and path is not None and path != library.path:
            library = None  # a path of the caller's own: the library's metadata does not describe it
        if library is None and path is not None:  # a prepared folder under another name
            library = model_at(path)
        if library is not None:
            path, model_type = path or library.path, model_type or library.model_type
            if model_type is not library.model_type:  # its engine would fail deep in OpenVINO
                raise InvalidRequestError(
                    f"model '{request.model_name}' is a prepared '{library.model_type}' model, not "
                    f"'{model_type}'; leave model_type out (it is read from the library)",
                    "model_type",
                )
        if path is not None and model_type is None and not _exists(path):
            raise ModelPathError(f"model path {path} does not exist")  # before asking for its type
        if path is None or model_type is None:
            raise InvalidRequestError(_no_library_model_message(request.model_name, path is None))
        try:
            spec = ModelSpec(
                name=request.model_name,
                path=path.expanduser(),
                model_type=model_type,
                device=request.device or self.settings.device,
                engine=request.engine,
                runtime_config=request.runtime_config,
            )
        except RuntimeError as exc:  # expanduser of an unknown user
            raise ModelPathError(f"model path {path}: {exc}") from exc
        except ValidationError as exc:
            raise InvalidRequestError(f"cannot load '{request.model_name}': {_first_problem(exc)}") from exc
        return spec, library

    async def _construct(self, entry: ModelEntry, factory: Callable[..., Any]) -> None:
        spec = entry.spec
        started = time.perf_counter()
        logger.info(
            "loading model '%s' (%s) from %s on %s", spec.name, spec.model_type, spec.path, spec.device
        )
        self.constructions_in_flight += 1
        try:
            async with self._load_limiter(spec.device):  # the device's load slot, then the thread
                if self.registry.get(spec.name) is not entry:  # unloaded while it waited: never built
                    logger.info("model '%s' was unloaded before its load began", spec.name)
                    return
                if self.stopping():  # its turn came as the server stops: nobody will use it
                    self.registry.fail_load(entry, _STOPPED_LOADING)
                    return
                engine = await _built_within(factory, spec)
            if self.registry.get(spec.name) is not entry:  # unloaded while it was loading
                logger.info("model '%s' finished loading after it was unloaded; freeing it", spec.name)
                await anyio.to_thread.run_sync(engine.close)
                return
            if self.stopping():  # the app's exit has listed the engines it closes: this one is not
                logger.info("model '%s' finished loading as the server stops; freeing it", spec.name)
                self.registry.fail_load(entry, _STOPPED_LOADING)  # its waiters are answered
                with anyio.move_on_after(_CLOSE_AT_EXIT):  # as the exit's own closes: never a hang
                    await anyio.to_thread.run_sync(_close_engine, [engine], abandon_on_cancel=True)
                return
        except Exception as exc:
            if isinstance(exc, InvalidRequestError):  # the caller's mistake (an unknown option): no traceback
                logger.warning("model '%s' failed to load: %s", spec.name, exc)
            else:
                logger.exception("model '%s' failed to load", spec.name)
            reason = short_reason(exc)
            self.registry.fail_load(entry, reason, _argument_at_fault(exc, spec, reason))
            return
        finally:
            self.constructions_in_flight -= 1
        batching = BatchSettings(self.settings.batch_max_items, self.settings.batch_wait)
        limiter = self._limiter(spec.device)
        worker = ModelWorker(spec.name, engine, limiter, self.settings.queue_depth, batching)
        self._tasks().start_soon(_logged, worker.serve, f"the worker of model '{spec.name}'")
        seconds = time.perf_counter() - started
        self.registry.finish_load(entry, worker, seconds)
        heap.settle()
        logger.info("model '%s' loaded in %.1f s", spec.name, seconds)

    async def _await_settled(self, entry: ModelEntry, progress: Progress | None) -> ModelRecord:
        name, timeout = entry.spec.name, self.settings.load_timeout
        started = anyio.current_time()
        with anyio.move_on_after(timeout):
            while not entry.settled.is_set():
                with anyio.move_on_after(_STATUS_INTERVAL):
                    await entry.settled.wait()
                if progress is not None and not entry.settled.is_set():
                    waited = anyio.current_time() - started
                    await progress(f"loading model '{name}' ({waited:.0f} s)", None)
        if not entry.settled.is_set():
            raise RequestTimeoutError(
                f"model '{name}' is still loading after {timeout:g} s; the load goes on in the "
                f"background: its status is in openarc://models/{name} (GET /v1/models/{name} over HTTP)"
            )
        if entry.record.status is ModelStatus.FAILED:
            raise ModelLoadError(
                f"could not load model '{name}': {entry.record.error}", entry.refused_argument
            )
        if entry.record.status is ModelStatus.UNLOADED:
            raise ModelUnloadedError(f"model '{name}' was unloaded while it was loading")
        return entry.record

    async def _ready_entry(
        self, name: str | None, needed: ModelType, progress: Progress | None
    ) -> ModelEntry:
        """The loaded entry for an inference call, loading a prepared model on first use."""
        self._notice_ended_processes()
        name = name or await self._only_loaded(needed)
        entry = self.registry.get(name)
        if entry is None:
            entry = await self._first_use(name, needed, progress)
        _check_type(entry, needed)
        if entry.ended and entry.record.status is ModelStatus.FAILED and self.settings.auto_load:
            entry = await self._load_again(entry, progress)
        if entry.record.status is ModelStatus.LOADING:
            with contextlib.suppress(ModelLoadError):  # reported below, with what to do about it
                await self._await_settled(entry, progress)
        status = entry.record.status
        if status is ModelStatus.FAILED:
            raise ModelFailedError(f"model '{name}' failed: {entry.record.error}; {_LOAD_AGAIN}")
        if status is not ModelStatus.LOADED or entry.worker is None:
            raise ModelNotReadyError(
                f"model '{name}' is {status}; load it again once that is done "
                f"(its status: openarc://models/{name}, or GET /v1/models/{name} over HTTP)"
            )
        return entry

    async def _first_use(self, name: str, needed: ModelType, progress: Progress | None) -> ModelEntry:
        library = await self._prepared_model(name)
        if library is None or not self.settings.auto_load:
            raise ModelNotFoundError(await self._not_found_message(name, library is not None))
        if library.model_type is not needed:
            raise ModelTypeError(
                f"model '{name}' is of type '{library.model_type}'; "
                f"this call needs a model of type '{needed}'"
            )
        if progress is not None:
            await progress(f"loading model '{name}' on first use", None)
        with contextlib.suppress(ModelExistsError):  # another call started loading it: wait below
            await self.load_model(LoadRequest(model_name=name), progress)
        entry = self.registry.get(name)
        if entry is None:
            raise ModelNotFoundError(await self._not_found_message(name, True))
        return entry

    async def _load_again(self, entry: ModelEntry, progress: Progress | None) -> ModelEntry:
        """Load a model that ended (see ``_notice_ended_processes``) once more, as it was loaded
        (auto-load: the call waits).

        Nothing is awaited before the load claims the name: an unload meanwhile would be undone."""
        spec = entry.spec
        logger.info("model '%s' is loaded again on its next use (%s)", spec.name, entry.record.error)
        request = LoadRequest(
            model_name=spec.name,
            model_path=spec.path,
            model_type=spec.model_type,
            device=spec.device,
            engine=spec.engine,
            runtime_config=spec.runtime_config,
        )
        with contextlib.suppress(ModelExistsError):  # another call started loading it: wait below
            await self.load_model(request, progress, any_path=True)  # its path was accepted before
        again = self.registry.get(spec.name)
        if again is None:
            raise ModelUnloadedError(f"model '{spec.name}' was unloaded while it was loading again")
        return again

    async def _run(
        self, entry: ModelEntry, work: Work[T], progress: Progress | None, batch: BatchPart | None = None
    ) -> T:
        worker = entry.worker
        assert worker is not None
        on_text = None if progress is None else _text_progress(progress)
        try:
            result = await worker.call(
                work, self.settings.request_timeout, on_text, self.settings.progress_interval, batch
            )
        except OpenArcError:
            entry.record.failures += 1
            raise
        entry.record.requests += 1
        return result

    async def _only_loaded(self, needed: ModelType) -> str:
        usable = (ModelStatus.LOADED, ModelStatus.LOADING)
        loaded = [
            e.spec.name
            for e in self.registry.entries()
            if e.spec.model_type is needed and e.record.status in usable
        ]
        if len(loaded) == 1:
            return loaded[0]
        prepared = [m.name for m in await self._prepared_models() if m.model_type is needed]
        if not loaded:
            raise ModelChoiceError(
                f"no '{needed}' model is loaded; name one in 'model' (prepared: "
                f"{', '.join(prepared) or 'none'}) or load one ({_LOAD_TOOLS})"
            )
        raise ModelChoiceError(f"several '{needed}' models are loaded; name one of: {', '.join(loaded)}")

    async def _refuse_unknown(self, name: str | None) -> None:
        """Refuse a model name known nowhere before a call reads and decodes its media (up to
        ``max_media_bytes``, on a media slot) only to be told so."""
        if name is None or self.registry.get(name) is not None:
            return
        if await self._prepared_model(name) is None and self.registry.get(name) is None:
            raise ModelNotFoundError(await self._not_found_message(name, False))

    async def _not_found_message(self, name: str, prepared: bool) -> str:
        if prepared:
            return (
                f"model '{name}' is prepared but not loaded, and auto-load is off; load it first "
                f"({_LOAD_TOOLS})"
            )
        if name in CATALOGUE:
            return (
                f"model '{name}' is in the catalogue but not prepared; run "
                f"'openarc-mcp models prepare {name}' first"
            )
        shown = name if len(name) <= 80 else f"{name[:77]}..."
        return f"no model named '{shown}'; known: {_usable_names(await self.list_models())}"

    def _preload_requests(self) -> list[LoadRequest]:
        requests = [LoadRequest(model_name=name) for name in self.settings.preload]
        if self.settings.config is not None:
            requests += [_configured_request(m) for m in load_config_file(self.settings.config)]
        return requests

    async def _preload(self, request: LoadRequest) -> None:
        try:  # claimed at once, before any await: a call right after the handshake waits for it
            await self.load_model(request, any_path=True)
        except OpenArcError as exc:
            unprepared = (
                isinstance(exc, InvalidRequestError)
                and request.model_path is None
                and await self._prepared_model(request.model_name) is None
            )
            reason = await self._unprepared(request) if unprepared else str(exc)
            logger.error("start-up load of '%s' failed: %s", request.model_name, reason)
        except Exception:  # a background task must never take the server down
            logger.exception("start-up load of '%s' failed", request.model_name)

    async def _unprepared(self, request: LoadRequest) -> str:
        """Why a start-up load by name alone cannot work, in the operator's terms (--preload and the
        config file, which name a folder as ``path``)."""
        prepared = ", ".join(sorted(model.name for model in await self._prepared_models())) or "none"
        prepare = (
            f"run 'openarc-mcp models prepare {request.model_name}'"
            if request.model_name in CATALOGUE
            else "convert it with 'openarc-mcp models convert'"
        )
        return (
            f"no prepared model of that name (prepared: {prepared}); {prepare}, or give its folder as "
            "'path' in the --config file"
        )

    def _notice_ended_processes(self) -> None:
        """Mark failed, with why, every loaded model whose engine says it ended (its process killed
        or crashed, a batching LLM's generation loop failed), and close its worker and engine in the
        background: its status stops saying 'loaded', no call picks it, its name may be loaded
        again, and with auto-load its next use loads it again (``_load_again``)."""
        for entry in self.registry.entries():
            worker = entry.worker
            if worker is None or entry.record.status is not ModelStatus.LOADED:
                continue
            ended = getattr(worker.engine, "ended", None)  # engines in a process of their own say so
            if ended is None:
                continue
            logger.error("model '%s': %s; marked failed", entry.spec.name, ended)
            entry.worker = None
            entry.ended = True
            self.registry.fail_load(entry, ended)
            if self._task_group is not None:  # else the app has stopped: nothing runs to close it
                closing = partial(_close_worker, worker)
                self._task_group.start_soon(_logged, closing, f"closing model '{entry.spec.name}'")

    async def _close_engines(self) -> None:
        """Close the engines still loaded (their processes end, their memory is freed), all at once,
        within ``_CLOSE_AT_EXIT``: leaving the app leaves nothing of its models behind."""
        workers = [entry.worker for entry in self.registry.entries() if entry.worker is not None]
        with anyio.move_on_after(_CLOSE_AT_EXIT):
            async with anyio.create_task_group() as group:
                for worker in workers:
                    group.start_soon(
                        partial(anyio.to_thread.run_sync, abandon_on_cancel=True),
                        _close_engine,
                        [worker.engine],
                    )

    async def _stop_workers(self) -> None:
        with anyio.move_on_after(_SHUTDOWN_TIMEOUT):
            async with anyio.create_task_group() as group:
                for entry in self.registry.entries():
                    if entry.worker is not None:
                        group.start_soon(entry.worker.close, _SHUTDOWN_TIMEOUT)


def _argument_at_fault(exc: Exception, spec: ModelSpec, reason: str) -> str | None:
    """The load's argument the caller got wrong, when that failed the load: the one an error of ours
    names, or ``runtime_config`` when OpenVINO refused one of the properties it holds."""
    if isinstance(exc, InvalidRequestError):
        return exc.argument
    if any(key in reason for key in spec.runtime_config if key.isupper()):
        return "runtime_config"
    return None


async def _built_within(factory: Callable[..., Any], spec: ModelSpec) -> Any:
    """The engine ``factory`` builds for ``spec``, within ``BUILD_DEADLINE`` (a build that hangs
    must not hold the device's load slot, and every later load on the device, for good).

    A build given up on (the deadline, or the app stopping) is not waited for; the engine it
    makes is closed all the same, by whichever side has it last (``_Handoff``)."""
    handoff = _Handoff()
    try:
        with anyio.move_on_after(BUILD_DEADLINE):
            await anyio.to_thread.run_sync(
                handoff.build,
                partial(factory, spec.path, spec.device, spec.runtime_config),
                abandon_on_cancel=True,
            )
            return handoff.take()
    finally:
        handoff.abandon()  # no-op once taken; else a built engine is closed, a building one will be
    logger.error("model '%s' did not build within %g s; its thread is abandoned", spec.name, BUILD_DEADLINE)
    raise ModelLoadError(
        f"the engine did not finish building within {BUILD_DEADLINE:g} s and was abandoned (its thread "
        "may hold memory until it ends); other loads on the device go ahead"
    )


async def _logged(task: Callable[[], Awaitable[None]], what: str) -> None:
    """Run a background task of the app's task group; a failure is logged, not raised (it would
    cancel the task group, and with it the server)."""
    try:
        await task()
    except Exception:
        logger.exception("%s failed", what)


async def _close_worker(worker: ModelWorker) -> None:
    """Stop the worker (its queued and running requests get an error), then free its engine."""
    await worker.close(_UNLOAD_WAIT)
    await anyio.to_thread.run_sync(_close_engine, [worker.engine])


class _Handoff:
    """An engine passed from the thread that builds it to the event loop, which may stop waiting
    (abandoning the thread): whichever side holds the engine once the other has let go closes it,
    so an engine finished after its load was given up on never outlives it unclosed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Any = None
        self._abandoned = False

    def build(self, make: Callable[[], Any]) -> None:
        """Run in the build thread: make the engine and hand it over, or close it if given up on."""
        engine = make()
        with self._lock:
            if not self._abandoned:
                self._engine = engine
                return
        logger.info("an engine finished building after its load was given up on; closing it")
        _close_logged([engine])

    def take(self) -> Any:
        """The built engine, now the caller's to close."""
        with self._lock:
            engine, self._engine = self._engine, None
            self._abandoned = True  # nothing more comes: a later abandon() has nothing to close
        return engine

    def abandon(self) -> None:
        """Give up on the build: an engine already handed over but not taken is closed (in a thread
        of its own: the caller may be cancelled), one still building is closed by its thread."""
        with self._lock:
            self._abandoned = True
            engine, self._engine = self._engine, None
        if engine is not None:
            threading.Thread(target=_close_logged, args=([engine],), name="closer", daemon=True).start()


def _close_logged(holder: list[Any]) -> None:
    """``_close_engine`` where nobody waits for it (a thread of its own, or one the loop abandoned):
    a failure is logged, not lost."""
    try:
        _close_engine(holder)
    except Exception:
        logger.exception("closing an engine whose load was given up on failed")


def _close_engine(holder: list[Any]) -> None:
    """Close the engine ``holder`` holds, taking it out first: the worker thread that runs this
    keeps its function and arguments a moment after the caller has resumed, and the collection
    that follows an unload must not find the engine still referenced from there (``heap.py``)."""
    holder.pop().close()


def _generated(entry: ModelEntry, output: GenerationOutput) -> GenerateResult:
    entry.record.last_metrics = output.metrics
    return GenerateResult(
        text=output.text,
        # 'cancelled' outputs never reach a caller: the worker answers those with an error
        finish_reason="length" if output.finish_reason == "length" else "stop",
        usage=output.usage,
        metrics=output.metrics,
        model=entry.spec.name,
    )


def _text_progress(progress: Progress) -> Callable[[str, int], Awaitable[None]]:
    async def forward(text: str, pieces: int) -> None:
        await progress(text, float(pieces))

    return forward


def _check_type(entry: ModelEntry, needed: ModelType) -> None:
    actual = entry.spec.model_type
    if actual is not needed:
        raise ModelTypeError(
            f"model '{entry.spec.name}' is of type '{actual}'; this call needs a model of type '{needed}'"
        )


def _usable_names(records: list[ModelRecord]) -> str:
    """The names a caller could use (loaded, loading, failed or prepared), for an error message."""
    usable = [r.name for r in records if r.status is not ModelStatus.NOT_PREPARED]
    return ", ".join(usable) or f"none (load one: {_LOAD_TOOLS})"


def _available_record(model: LibraryModel) -> ModelRecord:
    return ModelRecord(
        name=model.name,
        model_type=model.model_type,
        path=str(model.path),
        status=ModelStatus.AVAILABLE,
        source=model.source,
        description=model.description,
    )


def _catalogue_record(name: str) -> ModelRecord:
    item = CATALOGUE[name]
    return ModelRecord(
        name=name,
        model_type=item.model_type,
        status=ModelStatus.NOT_PREPARED,
        source=item.source,
        description=f"{item.description} Prepare with 'openarc-mcp models prepare {name}'.",
    )


def _configured_request(model: ConfiguredModel) -> LoadRequest:
    return LoadRequest(
        model_name=model.name,
        model_path=model.path,
        model_type=model.type,
        device=model.device,
        engine=model.engine,
        runtime_config=model.runtime_config,
    )


def _exists(path: Path) -> bool:
    try:
        return path.expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # RuntimeError: '~' of an unknown user
        return False


def _no_library_model_message(name: str, path_missing: bool) -> str:
    missing = "model_path" if path_missing else "model_type"
    hint = (
        f" ('{name}' is in the catalogue: run 'openarc-mcp models prepare {name}')"
        if name in CATALOGUE
        else ""
    )
    return f"'{name}' is not a prepared model, so {missing} is required{hint}"


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "value"
    return f"{where}: {error['msg']}"


def _limiter_for(limiters: dict[str, CapacityLimiter], device: str, tokens: int) -> CapacityLimiter:
    key = device.upper()
    if key not in limiters:
        limiters[key] = anyio.CapacityLimiter(tokens)
    return limiters[key]
