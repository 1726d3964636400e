"""OpenAI-compatible REST under ``/v1``: one module per family, errors mapped in ``errors``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...app import OpenArcApp
from .audio import speech, transcriptions, translations
from .chat import chat_completions, completions
from .embeddings import embeddings, rerank
from .errors import APIError, error_response
from .models import get_model, list_devices, list_models, load_model, unload_model

__all__ = ["openai_routes"]

logger = logging.getLogger(__name__)

Handler = Callable[[Request, OpenArcApp], Awaitable[Response]]


def openai_routes(app: OpenArcApp) -> list[Route]:
    """The ``/v1`` routes (paths relative to the ``/v1`` mount), each bound to ``app``."""
    table: list[tuple[str, Handler, str]] = [
        ("/models", list_models, "GET"),
        ("/models/load", load_model, "POST"),
        ("/models/unload", unload_model, "POST"),
        ("/models/{model:path}", get_model, "GET"),
        ("/devices", list_devices, "GET"),
        ("/chat/completions", chat_completions, "POST"),
        ("/completions", completions, "POST"),
        ("/embeddings", embeddings, "POST"),
        ("/rerank", rerank, "POST"),
        ("/audio/transcriptions", transcriptions, "POST"),
        ("/audio/translations", translations, "POST"),
        ("/audio/speech", speech, "POST"),
    ]
    return [Route(path, _endpoint(handler, app), methods=[method]) for path, handler, method in table]


def _endpoint(handler: Handler, app: OpenArcApp) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, app)
        except APIError as error:
            return error_response(error)
        except HTTPException as exc:  # Starlette's own (a malformed multipart body), or a 405's
            response = error_response(APIError(exc.status_code, str(exc.detail)))
            response.headers.update(exc.headers or {})  # e.g. 405's Allow
            return response
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                APIError(
                    500, "the server failed on this request; details are in its log", code="server_error"
                )
            )

    endpoint.__name__ = handler.__name__
    return endpoint
