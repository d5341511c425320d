"""GPU clocks, power limit and driver via NVML (pynvml / nvidia-ml-py) when installed; {} otherwise.

Annotates benchmark settings and names the build GPU (nvml_identity, export/engine_target.py). Jetson iGPUs
have no NVML: benchmarks/jetson.py reads nvpmodel and jetson_clocks state there instead.
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


def nvml_identity() -> Dict[str, Any]:
    """Name, compute capability and CUDA driver version of the GPU CUDA calls device 0, read through NVML (no CUDA
    context, no cuda-python): what an engine build records. Raises RuntimeError saying why when NVML cannot tell:
    pynvml missing, no NVML library (Jetson before JetPack 7), no GPU, or GPUs of different kinds (NVML numbers
    GPUs by PCI bus, CUDA fastest first, so NVML's GPU 0 need not be CUDA's)."""
    try:
        import pynvml
    except ImportError:
        raise RuntimeError("pynvml is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        raise RuntimeError(f"NVML unavailable ({type(exc).__name__}: {str(exc)[:80]})") from None
    try:
        kinds = set()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            kinds.add((_text(pynvml.nvmlDeviceGetName(handle)), f"{major}.{minor}"))
        if len(kinds) != 1:
            raise RuntimeError("NVML sees no GPU" if not kinds else
                               f"NVML sees GPUs of different kinds {sorted(kinds)} and cannot tell which one CUDA uses")
        driver = pynvml.nvmlSystemGetCudaDriverVersion()   # e.g. 12060
        (name, capability), = kinds
        return {"gpu_name": name, "compute_capability": capability,
                "cuda_driver": f"{driver // 1000}.{(driver % 1000) // 10}"}
    except pynvml.NVMLError as exc:
        raise RuntimeError(f"NVML query failed ({exc})") from None
    finally:
        pynvml.nvmlShutdown()
