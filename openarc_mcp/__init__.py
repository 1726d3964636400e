"""openarc-mcp: local OpenVINO models as MCP tools for agents."""

from importlib import metadata

try:
    __version__ = metadata.version("openarc-mcp")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
