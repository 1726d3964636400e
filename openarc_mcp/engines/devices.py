"""The OpenVINO devices of this machine and their key properties."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequestError
from ..schema import DeviceInfo

__all__ = ["list_devices", "require_device"]

_COMBINING = ("AUTO", "MULTI", "HETERO", "BATCH")
"""OpenVINO's virtual devices, which run on devices listed after a colon ('AUTO:GPU,CPU')."""

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


def require_device(device: str) -> None:
    """Refuse a device this machine does not have, naming those it has (before OpenVINO's own
    error, which names a C++ source file). Blocking: it imports OpenVINO, as the engines do.

    A device is there when its kind is ('GPU.1' when a GPU is: OpenVINO checks the index). A virtual
    device needs one of the devices it lists ('AUTO:GPU,CPU' runs on the CPU of a machine without a
    GPU, as OpenVINO's AUTO picks among those there).
    """
    import openvino

    available = list(openvino.Core().available_devices)
    kinds = {name.split(".")[0] for name in available}
    named = _devices_named(device)
    if named and not any(name.split(".")[0] in kinds for name in named):
        which = f"device '{device}' is not" if named == [device] else f"none of the devices in '{device}' is"
        raise InvalidRequestError(
            f"{which} on this machine; its devices: {', '.join(available)} ({', '.join(_COMBINING)} "
            "combine them, as in 'AUTO:GPU,CPU'); openarc://devices (GET /v1/devices over HTTP) "
            "lists them with their properties",
            "device",
        )


def _devices_named(device: str) -> list[str]:
    """The devices a device name runs on: itself, or those a virtual device lists (not those it
    excludes, as in 'AUTO:-CPU'; without a batch size, as in 'BATCH:GPU(4)')."""
    kind, _, listed = device.partition(":")
    if kind not in _COMBINING:
        return [device]
    named = (item.strip().split("(")[0].strip() for item in listed.split(","))
    return [name for name in named if name and not name.startswith("-")]


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
