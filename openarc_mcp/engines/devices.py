"""The OpenVINO devices of this machine and their key properties."""

from __future__ import annotations

from typing import Any

from ..schema import DeviceInfo

__all__ = ["list_devices"]

_KEY_PROPERTIES = (
    "DEVICE_TYPE",
    "OPTIMIZATION_CAPABILITIES",
    "DEVICE_ARCHITECTURE",
    "INFERENCE_PRECISION_HINT",
    "PERFORMANCE_HINT",
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "RANGE_FOR_ASYNC_INFER_REQUESTS",
    "GPU_DEVICE_TOTAL_MEM_SIZE",
)


def list_devices() -> list[DeviceInfo]:
    """Ask OpenVINO for its devices; blocking (call it from a thread)."""
    import openvino

    core = openvino.Core()
    return [_describe(core, name) for name in core.available_devices]


def _describe(core: Any, device: str) -> DeviceInfo:
    supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    properties: dict[str, str] = {}
    for key in _KEY_PROPERTIES:
        if key in supported:
            try:
                properties[key] = _text(core.get_property(device, key))
            except RuntimeError:
                continue
    full_name = _text(core.get_property(device, "FULL_DEVICE_NAME"))
    return DeviceInfo(name=device, full_name=full_name, properties=properties)


def _text(value: Any) -> str:
    if hasattr(value, "get_type_name"):  # an element type such as bf16
        return str(value.get_type_name())
    if hasattr(value, "name") and not isinstance(value, str):  # an enum such as PerformanceMode
        return str(value.name)
    if isinstance(value, list | tuple | set):
        return ", ".join(str(item) for item in value)
    return str(value)
