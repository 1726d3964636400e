"""``/v1/audio/transcriptions``, ``/v1/audio/translations`` (multipart uploads) and ``/v1/audio/speech``."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ...app import OpenArcApp
from ...audio_out import MIME_TYPES
from ...errors import OpenArcError
from ...schema import TranscribeResult, TranscriptSegment
from .errors import APIError, error_for, unsupported
from .requests import parse_body
from .streaming import until_disconnected

__all__ = ["speech", "transcriptions", "translations"]

TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
_TRANSCRIBE_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature"}
_GRANULARITIES = ("timestamp_granularities", "timestamp_granularities[]")
_MAX_FORM_FIELDS = 32
OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)
"""OpenAI's voice names: clients written for OpenAI send them; they mean the model's default voice."""


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    input: Annotated[str, Field(min_length=1)]
    voice: Annotated[str | None, Field(min_length=1)] = None
    speed: Annotated[float, Field(ge=0.5, le=2.0)] = 1.0
    response_format: Literal["mp3", "opus", "wav", "flac", "pcm"] = "mp3"  # OpenAI's default: mp3
    language: Literal["en-us", "en-gb"] = Field(default="en-us", description="openarc-mcp's extension.")
    instructions: str | None = None
    stream_format: Literal["audio"] | None = None


async def transcriptions(request: Request, app: OpenArcApp) -> Response:
    """Speech to text in the language spoken."""
    return await _transcribe(request, app, "transcribe")


async def translations(request: Request, app: OpenArcApp) -> Response:
    """Speech in any language to English text (multilingual Whisper models)."""
    return await _transcribe(request, app, "translate")


async def speech(request: Request, app: OpenArcApp) -> Response:
    """Text to speech: the audio file itself (mp3 by default, opus, wav, flac, or raw 16-bit pcm at
    the model's rate, which ``X-Sample-Rate`` gives)."""
    body = await parse_body(request, SpeechRequest)
    if body.instructions:
        raise APIError(
            400, "'instructions' (voice direction) is not supported by openarc-mcp", "instructions"
        )

    voice = None if body.voice in OPENAI_VOICES else body.voice

    async def run() -> tuple[Any, bytes, str]:
        try:
            return await app.synthesize(
                body.model, body.input, voice, body.speed, body.language, body.response_format, "input"
            )
        except OpenArcError as exc:
            raise error_for(exc, "input") from exc

    speech_out, data, _ = await until_disconnected(request, run)
    voice_name = speech_out.voice if speech_out.voice.isascii() else quote(speech_out.voice, safe="")
    headers = {"X-Sample-Rate": str(speech_out.sample_rate), "X-Voice": voice_name}  # headers are latin-1
    return Response(data, media_type=MIME_TYPES[body.response_format], headers=headers)


async def _transcribe(
    request: Request, app: OpenArcApp, task: Literal["transcribe", "translate"]
) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError(415, "send the audio as multipart/form-data with a 'file' field")
    async with request.form(max_files=1, max_fields=_MAX_FORM_FIELDS, max_part_size=1024 * 1024) as form:
        fields = _check_fields(form, task)
        upload = form.get("file")
        if isinstance(upload, str):  # curl's -F file=<path sends the file's text, not the file
            message = "'file' must be a file upload (a part with a filename: curl -F file=@PATH), not text"
            raise APIError(400, message, "file")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "missing required parameter 'file' (the audio file)", "file")
        data = await upload.read()
        granularities = [g for key in _GRANULARITIES for g in form.getlist(key) if isinstance(g, str)]
    response_format = fields.get("response_format") or "json"
    if response_format not in TRANSCRIPT_FORMATS:
        raise APIError(
            400,
            f"'response_format' must be one of {', '.join(TRANSCRIPT_FORMATS)}; got '{response_format}'",
            "response_format",
        )
    _check_granularities(granularities, response_format, task)
    _check_temperature(fields.get("temperature"))
    model = fields.get("model") or ""
    if not model:
        raise APIError(400, "missing required parameter 'model'", "model")
    timestamps = response_format in ("verbose_json", "srt", "vtt")
    words = "word" in granularities
    segments = response_format != "verbose_json" or not granularities or "segment" in granularities

    async def run() -> TranscribeResult:
        try:
            return await app.transcribe(
                model,
                data,
                fields.get("language") or None,
                task,
                timestamps,
                fields.get("prompt") or None,
                words=words,
                field="file",
            )
        except OpenArcError as exc:
            raise _transcription_error(exc) from exc

    result = await until_disconnected(request, run)
    return _transcript_response(result, response_format, task, segments=segments, words=words)


_REST_PARAMS = {"word_timestamps": "timestamp_granularities", "task": "model"}
"""The engine names arguments as the MCP tool does; here word timings are asked for with
``timestamp_granularities``, and the task is the route (a model that cannot translate is at fault)."""


def _transcription_error(exc: OpenArcError) -> APIError:
    """``error_for``, errors about the audio naming 'file', others the parameter REST knows them by."""
    error = error_for(exc, "file")
    error.param = _REST_PARAMS.get(error.param or "", error.param)
    return error


def _check_fields(form: FormData, task: str) -> dict[str, str]:
    allowed = _TRANSCRIBE_FIELDS - ({"language"} if task == "translate" else set())
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in _GRANULARITIES:
            continue
        if key not in allowed:
            raise unsupported(key)
        if key != "file":
            if not isinstance(value, str):
                raise APIError(400, f"'{key}' must be a form field, not a file", key)
            if key in fields:  # which one was meant is not ours to guess
                raise APIError(400, f"'{key}' is given {len(form.getlist(key))} times; send it once", key)
            fields[key] = value
    return fields


def _check_granularities(granularities: list[str], response_format: str, task: str) -> None:
    for granularity in granularities:
        if granularity not in ("segment", "word"):
            raise APIError(
                400,
                f"unknown timestamp granularity '{granularity}'; give 'segment', 'word' or both",
                "timestamp_granularities",
            )
    if "word" in granularities and task == "translate":
        raise APIError(
            400,
            "word timestamps are given for transcriptions only (a translation's words were not spoken); "
            "use 'segment'",
            "timestamp_granularities",
        )
    if granularities and response_format != "verbose_json":
        raise APIError(
            400, "timestamp_granularities needs response_format 'verbose_json'", "timestamp_granularities"
        )


def _check_temperature(raw: str | None) -> None:
    if raw is None or raw == "":
        return
    try:
        value = float(raw)
    except ValueError as exc:
        raise APIError(400, f"'temperature' must be a number; got '{raw}'", "temperature") from exc
    if value != 0:
        raise APIError(
            400, "transcription uses greedy decoding: give temperature 0 or leave it out", "temperature"
        )


def _transcript_response(
    result: TranscribeResult, response_format: str, task: str, *, segments: bool, words: bool
) -> Response:
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format == "srt":
        return PlainTextResponse(_subtitles(result.segments, ","), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse("WEBVTT\n\n" + _subtitles(result.segments, "."), media_type="text/vtt")
    if response_format == "json":
        return JSONResponse({"text": result.text})
    body: dict[str, Any] = {
        "task": task,
        "language": result.language,
        "duration": result.duration_s,
        "text": result.text,
    }
    if segments:  # as OpenAI's: without 'segment' among the granularities, words alone
        body["segments"] = [
            {"id": index, "start": s.start, "end": s.end, "text": s.text}
            for index, s in enumerate(result.segments)
        ]
    if words:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words]
    return JSONResponse(body)


def _subtitles(segments: list[TranscriptSegment], separator: str) -> str:
    cues = []
    for number, segment in enumerate(segments, start=1):
        start, end = _clock(segment.start, separator), _clock(segment.end, separator)
        cues.append(f"{number}\n{start} --> {end}\n{segment.text.strip()}\n")
    return "\n".join(cues)


def _clock(seconds: float, separator: str) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
