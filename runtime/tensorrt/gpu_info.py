"""GPU clocks, power limit and driver via NVML (pynvml / nvidia-ml-py) when installed; {} otherwise.

Used only to annotate benchmark settings. Jetson iGPUs have no NVML: benchmarks/jetson.py reads
nvpmodel and jetson_clocks state there instead.
"""
from __future__ import annotations

from typing import Any, Dict


def nvml_snapshot(device: int = 0) -> Dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"nvml": "not installed (pip install nvidia-ml-py for clocks and power limit)"}
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device)
            clocks = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM
            return {
                "nvml_driver": _text(pynvml.nvmlSystemGetDriverVersion()),
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, clocks[0]),
                "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, clocks[1]),
                "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, clocks[0]),
                "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
                "persistence_mode": bool(pynvml.nvmlDeviceGetPersistenceMode(handle)),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing on Jetson, or no permission: record why instead of failing
        return {"nvml": f"unavailable ({type(exc).__name__}: {str(exc)[:80]})"}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
