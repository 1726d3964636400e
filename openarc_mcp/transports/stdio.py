"""Serving MCP over stdio: the transport desktop hosts launch."""

from __future__ import annotations

import logging

from ..app import OpenArcApp
from ..settings import Settings
from .mcp_server import build_mcp_server

__all__ = ["serve_stdio"]

logger = logging.getLogger(__name__)


async def serve_stdio(settings: Settings) -> None:
    """Serve on ``sys.stdin``/``sys.stdout`` until the host closes stdin.

    Models configured to preload load in the background: the handshake never waits for them.
    """
    async with OpenArcApp(settings) as app:
        server = build_mcp_server(app)
        logger.info("openarc-mcp serving over stdio; models in %s", settings.models_dir)
        await server.run_stdio_async()
