"""Serving over HTTP: MCP (streamable HTTP and legacy SSE) and OpenAI-compatible REST in one app.

One process, one ``OpenArcApp`` (registry and workers) shared by every route and connection:

    /mcp                 MCP streamable HTTP (progress notifications stream as SSE)
    /sse, /messages/     MCP over the legacy SSE transport (one MCP session per connection)
    /v1/...              OpenAI-compatible REST (chat, completions, embeddings, audio, rerank)
    /healthz             liveness: the process answers (open to all)
    /readyz              readiness: every model configured to load at start is loaded

Every route but ``/healthz`` passes ``RequestGuard`` (Host, Origin, API key, body size).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from .. import __version__, heap
from ..app import OpenArcApp
from ..errors import InvalidRequestError
from ..schema import ModelStatus
from ..settings import Settings
from .http_guard import LOOPBACK_NAMES, HttpPolicy, RequestGuard, host_names, is_loopback
from .mcp_ids import CheckedJsonRpc
from .mcp_server import build_mcp_server
from .openai import openai_routes
from .openai.errors import error_body

__all__ = ["build_http_app", "check_http_settings", "serve_http"]

logger = logging.getLogger(__name__)

_UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
_FORM_OVERHEAD = 1024 * 1024  # multipart boundaries and the small fields beside the file
_GRACEFUL_SHUTDOWN_S = 3


HEADERS_DEADLINE_S = 10.0
"""Seconds a connection may take to send a request's headers (uvicorn waits for ever: a client
that opens connections and stalls, no key needed, would hold them and their descriptors)."""
MAX_CONNECTIONS = 1000
"""Connections and requests at once; more are answered 503 (the last bound on descriptors)."""


def _headers_within_deadline() -> type[Any]:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not all in
    within ``HEADERS_DEADLINE_S`` of its first byte (or of the connection, for its first request).
    Bodies have their own deadline (``http_guard.BODY_IDLE_S``); idle keep-alive, uvicorn's."""
    import asyncio

    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadersWithinDeadline(H11Protocol):
        _headers_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_headers():
                if self._headers_timer is None:
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # the keep-alive timeout covers the wait; the next request's bytes re-arm

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._headers_timer = self.loop.call_later(HEADERS_DEADLINE_S, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None

        def _headers_too_slow(self) -> None:
            self._headers_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                logger.info("closed a connection whose request headers took over %g s", HEADERS_DEADLINE_S)
                self.transport.close()

    return HeadersWithinDeadline


def check_http_settings(settings: Settings) -> None:
    """Refuse to serve where anyone on the network could use the server without a key."""
    if settings.api_key is not None and not settings.api_key.get_secret_value().strip():
        raise InvalidRequestError("the API key is empty; set a real key or leave it unset")
    if settings.api_key is None and not is_loopback(settings.host):
        raise InvalidRequestError(
            f"refusing to serve HTTP on {settings.host} without an API key: anyone who can reach that "
            "address could run your models. Set --api-key (or OPENARC_API_KEY), or bind 127.0.0.1"
        )
    if settings.api_key is None and "*" in settings.allowed_hosts:
        raise InvalidRequestError("allowed hosts '*' needs an API key (--api-key or OPENARC_API_KEY)")


async def serve_http(settings: Settings) -> None:
    """Serve HTTP until SIGINT or SIGTERM; then stop accepting, finish, and free the models.

    Model loads never delay start-up. A second signal stops without waiting for open connections.
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # ours below: the app must close before exit
            yield

    started = True
    async with OpenArcApp(settings) as app:
        config = uvicorn.Config(
            build_http_app(app),
            host=settings.host,
            port=settings.port,
            log_config=None,  # keep the CLI's stderr logging
            lifespan="on",
            ws="none",
            http=_headers_within_deadline(),
            limit_concurrency=MAX_CONNECTIONS,
            server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        )
        server = Server(config)
        logger.info(
            "openarc-mcp serving HTTP on %s:%d (MCP at /mcp and /sse, OpenAI REST at /v1; API key %s)",
            settings.host, settings.port, "required" if settings.api_key else "not required",
        )  # fmt: skip
        with heap.managing():
            async with anyio.create_task_group() as group:
                group.start_soon(_stop_on_signals, server)
                try:
                    await server.serve()
                except SystemExit:  # uvicorn's way of saying it could not start (logged above)
                    started = False
                group.cancel_scope.cancel()
    if not started:  # raised out here: inside the app's task group it would arrive as a group
        raise InvalidRequestError(
            f"could not serve HTTP on {settings.host}:{settings.port} (see the error above); "
            "is the port in use? choose another with --port"
        )


async def _stop_on_signals(server: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            logger.info("%s received: stopping", signal.Signals(number).name)
            server.force_exit = server.should_exit  # a second signal: do not wait for connections
            server.should_exit = True


def build_http_app(app: OpenArcApp) -> Starlette:
    """The ASGI app for ``app``: MCP and REST routes behind the guard; enter its lifespan to serve."""
    settings = app.settings
    mcp = build_mcp_server(app)
    security = _transport_security(settings)
    streamable = mcp.streamable_http_app(
        max_request_body_size=settings.max_body_bytes, transport_security=security, host=settings.host
    )
    sse = mcp.sse_app(
        max_request_body_size=settings.max_body_bytes, transport_security=security, host=settings.host
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp.session_manager.run():
            yield

    async def readiness(request: Request) -> Response:
        return _readiness(app)

    routes: list[BaseRoute] = [
        Route("/", _index, methods=["GET"]),
        Route("/healthz", _liveness, methods=["GET"]),
        Route("/readyz", readiness, methods=["GET"]),
        Mount("/v1", app=Router(openai_routes(app), redirect_slashes=False)),  # '/x/': a 404 that says so
        *sse.routes,
        *streamable.routes,  # /mcp
    ]
    return Starlette(
        routes=routes,
        middleware=_middleware(settings),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )


def _middleware(settings: Settings) -> list[Middleware]:
    policy = HttpPolicy(
        hosts=host_names(settings.host, [h.lower() for h in settings.allowed_hosts]),
        origins=tuple(settings.allowed_origins),
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        body_limit=lambda path: (
            settings.max_media_bytes + _FORM_OVERHEAD if path in _UPLOAD_PATHS else settings.max_body_bytes
        ),
    )
    middleware = [Middleware(RequestGuard, policy=policy), Middleware(CheckedJsonRpc)]
    if settings.allowed_origins:  # browsers on these origins get CORS answers; never a wildcard
        cors = Middleware(
            _EnvelopedCORS,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            # any request header (OpenAI's JS client sends X-Stainless-*; the key is still needed)
            allow_headers=["*"],
            expose_headers=["Mcp-Session-Id", "Retry-After", "X-Sample-Rate", "X-Voice", "x-should-retry"],
            allow_credentials=False,
        )
        middleware.insert(0, cors)  # outermost: preflights carry no key
    return middleware


class _EnvelopedCORS(CORSMiddleware):
    """Starlette's CORS answers, with a refused preflight in the server's error envelope (Starlette
    answers it in plain text: "Disallowed CORS origin"), like every other refusal here; its
    ``param`` is the request header at fault."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        message = f"cross-origin preflight refused; not allowed by this server: {refused}"
        first = refused.split(",")[0].strip()
        param = "Origin" if first == "origin" else f"Access-Control-Request-{first.title()}"
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return JSONResponse(error_body(400, message, param), status_code=400, headers=headers)


def _transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's own DNS-rebinding check on the MCP routes, with the same names as the guard."""
    extra = [h.lower() for h in settings.allowed_hosts]
    if "*" in extra:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts: list[str] = []
    for name in host_names(settings.host, extra):
        shown = f"[{name}]" if ":" in name and not name.startswith("[") and name.count(":") > 1 else name
        hosts += [shown] if _has_port(shown) else [shown, f"{shown}:*"]
    origins = [
        f"{scheme}://{f'[{name}]' if ':' in name else name}{port}"
        for scheme in ("http", "https")
        for name in LOOPBACK_NAMES
        for port in ("", ":*")
    ]
    return TransportSecuritySettings(
        allowed_hosts=hosts, allowed_origins=[*origins, *settings.allowed_origins]
    )


def _has_port(host: str) -> bool:
    tail = host.rsplit("]", 1)[-1]
    return ":" in tail and tail.rsplit(":", 1)[-1].isdigit()


async def _index(request: Request) -> Response:
    return JSONResponse(
        {
            "name": "openarc-mcp",
            "version": __version__,
            "mcp": ["/mcp", "/sse"],
            "openai": "/v1",
            "models": ["/v1/models", "/v1/models/load", "/v1/models/unload", "/v1/devices"],
            "health": ["/healthz", "/readyz"],
        }
    )


async def _liveness(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _readiness(app: OpenArcApp) -> Response:
    models: dict[str, Any] = {}
    ready = True
    for name, record in app.startup_status().items():
        status = record.status if record is not None else ModelStatus.UNLOADED
        models[name] = {"status": status.value} | ({"error": record.error} if record and record.error else {})
        ready = ready and status is ModelStatus.LOADED
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "models": models}, status_code=200 if ready else 503
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "server error"
    if status == 404:
        path = request.url.path
        slashed = path.endswith("/") and path != "/"
        hint = f" (without the trailing slash: {path.rstrip('/')})" if slashed else ""
        detail = f"no route {request.method} {path}{hint}; see / for the endpoints"
    headers = exc.headers if isinstance(exc, HTTPException) else None  # e.g. 405's Allow
    return JSONResponse(error_body(status, str(detail)), status_code=status, headers=headers)
