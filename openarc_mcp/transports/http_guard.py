"""Who may talk to the HTTP server: Host and Origin checks, the API key, and body size limits.

One ASGI middleware in front of every route (MCP and REST alike) but ``/healthz``:

- ``Host`` must name this server (loopback names, the bound address, or ``allowed_hosts``):
  a DNS-rebinding page in a browser cannot reach it under a name of its own (421).
- ``Origin``, when a browser sends one, must be a loopback origin or one of ``allowed_origins`` (403).
- With an API key, ``Authorization: Bearer KEY`` is required (401); compared in constant time.
- Bodies larger than the limit are refused before they are read (413); bodies without a
  ``Content-Length`` are counted as they arrive.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .openai.errors import error_body

__all__ = ["HttpPolicy", "RequestGuard", "host_names", "is_loopback"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_ANY_ADDRESS = ("0.0.0.0", "::", "")
OPEN_PATHS = ("/healthz",)
BODY_IDLE_S = 30.0
"""Seconds a request body may go without a byte arriving before the request is ended."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpPolicy:
    """The checks' configuration, derived from the settings once."""

    hosts: tuple[str, ...]
    """Accepted Host names: 'name' (any port) or 'name:port'; '*' accepts any."""
    origins: tuple[str, ...]
    """Accepted Origin values besides loopback origins."""
    api_key: str | None
    body_limit: Callable[[str], int]
    """The largest body accepted for a path."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_names(bound: str, extra: list[str]) -> tuple[str, ...]:
    """The Host names a server bound to ``bound`` answers to."""
    names = list(LOOPBACK_NAMES)
    name = bound.strip("[]").lower()  # Host headers are compared lowercased
    if bound not in _ANY_ADDRESS and name not in names:
        names.append(name)
    return (*names, *extra)


class RequestGuard:
    """Refuses requests the policy does not allow, with OpenAI's error envelope."""

    def __init__(self, app: ASGIApp, policy: HttpPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(headers)
        if refusal is not None:
            status, message = refusal
            await _refuse(scope, receive, send, status, message)
            return
        limit = self.policy.body_limit(scope["path"])
        declared = headers.get("content-length")
        if declared is not None:
            if "transfer-encoding" in headers:  # the body is framed by chunks: its length says nothing
                await _refuse(scope, receive, send, 400, "send Content-Length or Transfer-Encoding, not both")
                return
            if not declared.isdigit():
                await _refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _refuse(scope, receive, send, 413, _too_large(int(declared), limit))
                return
            await self.app(scope, _with_deadlines(receive, limit), send)
            return
        await self._counted(scope, receive, send, limit)

    def _refusal(self, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if not _host_allowed(host, self.policy.hosts):
            return 421, (
                f"Host '{host}' is not a name of this server; add it to the server's allowed hosts "
                "(--allowed-hosts / OPENARC_ALLOWED_HOSTS)"
            )
        origin = headers.get("origin")
        if origin is not None and not _origin_allowed(origin, self.policy.origins):
            return 403, (
                f"Origin '{origin}' may not call this server; add it to the server's allowed origins "
                "(--allowed-origins / OPENARC_ALLOWED_ORIGINS)"
            )
        key = self.policy.api_key
        if key is not None and not _authorized(headers.get("authorization", ""), key):
            return 401, "missing or wrong API key: send 'Authorization: Bearer <key>'"
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """A body of unknown length: read it up to the limit, then replay it to the app."""
        messages: list[Message] = []
        size = 0
        while True:
            message = None
            with anyio.move_on_after(BODY_IDLE_S):
                message = await receive()
            if message is None:
                await _refuse(scope, receive, send, 408, _body_too_slow())
                return
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _refuse(scope, receive, send, 413, _too_large(size, limit))
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    if "*" in allowed:
        return True
    name, port = _split_host(host)
    if not name:
        return False
    return name in allowed or f"{name}:{port}" in allowed


def _split_host(host: str) -> tuple[str, str]:
    """('name', 'port') of a Host header; IPv6 literals lose their brackets."""
    parsed = urlsplit(f"//{host}")
    try:
        port = str(parsed.port or "")
    except ValueError:
        return "", ""
    return (parsed.hostname or "").lower(), port


def _origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    normalized = origin.rstrip("/").lower()
    if normalized in (entry.rstrip("/").lower() for entry in allowed):
        return True
    parsed = urlsplit(normalized)
    return parsed.scheme in ("http", "https") and (parsed.hostname or "") in LOOPBACK_NAMES


def _authorized(header: str, key: str) -> bool:
    """Whether the header carries the key: compared as bytes (headers are decoded as latin-1, so a
    key typed in UTF-8 arrives as its bytes)."""
    scheme, _, token = header.partition(" ")
    try:
        sent = token.strip().encode("latin-1")
    except UnicodeEncodeError:
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, key.encode())


def _with_deadlines(receive: Receive, limit: int) -> Receive:
    """``receive`` for a body of declared length, ended (as a disconnect) past ``limit`` bytes or
    when no part of it arrives for ``BODY_IDLE_S``: a stalled sender does not hold its request open."""
    size = 0
    whole = False  # once the body is in, receive() only waits for a disconnect: no deadline then

    async def bounded() -> Message:
        nonlocal size, whole
        if whole:
            return await receive()
        message: Message | None = None
        with anyio.move_on_after(BODY_IDLE_S):
            message = await receive()
        if message is None:
            logger.info("a request body stalled for %g s: its request is ended", BODY_IDLE_S)
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                return {"type": "http.disconnect"}
            whole = not message.get("more_body", False)
        return message

    return bounded


def _body_too_slow() -> str:
    return f"no part of the request body arrived for {BODY_IDLE_S:g} s; send it at once"


def _too_large(size: int, limit: int) -> str:
    return (
        f"the request body is {size} bytes; this server accepts at most {limit} here (its operator sets "
        "--max-body-bytes, and --max-media-bytes for audio uploads; media can also be a file path "
        "under --media-roots)"
    )


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSONResponse(error_body(status, message), status_code=status, headers=headers)
    await response(scope, receive, send)
