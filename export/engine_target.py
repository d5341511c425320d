"""What an engine is built for: the GPU's name and compute capability, read WITHOUT cuda-python where possible.

A TensorRT build needs no CUDA Python binding; only the sidecar's record of the GPU did. On Jetson, cuda-python
12.9 embeds a newer CUDA runtime than JetPack 6's driver and fails, so the sources are tried in this order:
the Jetson device tree (SoC -> GPU and SM), NVML (desktop driver, via runtime/tensorrt/gpu_info), cuda-python.
TensorRT's Python API exposes no device properties (checked against the 10.3-11.4 bindings).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable, Dict, List, Optional

from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError
from fer_edge.runtime.tensorrt.gpu_info import nvml_identity
from fer_edge.runtime.tensorrt.trt_import import TrtFlavour

DEVICE_TREE = Path("/proc/device-tree")
# Tegra SoC (device-tree "compatible") -> (GPU name as CUDA reports it, compute capability). Thor (tegra264) is
# left out: its SM number changed between CUDA 12.9 (10.1) and 13 (11.0), and no Thor was available to check.
JETSON_SOCS = {"nvidia,tegra234": ("Orin", "8.7"), "nvidia,tegra194": ("Xavier", "7.2")}


def _device_tree_strings(path: Path) -> List[str]:
    try:
        return [s for s in path.read_bytes().decode(errors="replace").split("\x00") if s]
    except OSError:
        return []


def is_jetson(root: Optional[Path] = None) -> bool:
    """A Tegra board (Jetson): its device tree says `nvidia,tegra...`."""
    return any(s.startswith("nvidia,tegra") for s in _device_tree_strings((root or DEVICE_TREE) / "compatible"))


def jetson_identity(root: Optional[Path] = None) -> Dict[str, Optional[str]]:
    """GPU name and SM of a Jetson from its device tree; RuntimeError when this is no Jetson or an unknown SoC."""
    root = root or DEVICE_TREE
    compatible = _device_tree_strings(root / "compatible")
    if not any(s.startswith("nvidia,tegra") for s in compatible):
        raise RuntimeError("not a Jetson (no nvidia,tegra* in /proc/device-tree/compatible)")
    board = " ".join(_device_tree_strings(root / "model")) or None
    for soc, (gpu, capability) in JETSON_SOCS.items():
        if soc in compatible:
            return {"gpu_name": gpu, "compute_capability": capability, "board": board}
    raise RuntimeError(f"Jetson with an unknown SoC {[s for s in compatible if 'tegra' in s]} ({board})")


def _cuda_python_identity() -> Dict[str, Optional[str]]:
    from fer_edge.runtime.tensorrt.cuda_buffers import load_cuda_api
    try:
        return load_cuda_api("cuda-python").gpu_identity()
    except FerEdgeError as exc:   # no driver, driver too old for this cuda-python, a CUDA error
        raise RuntimeError(str(exc)) from None


SOURCES: Dict[str, Callable[[], Dict[str, Optional[str]]]] = {
    "device-tree": jetson_identity, "nvml": nvml_identity, "cuda-python": _cuda_python_identity}


def identify_gpu() -> Dict[str, Optional[str]]:
    """{gpu_name, compute_capability, ..., gpu_source} from the first source that can tell; BackendUnavailableError
    listing every source's reason otherwise."""
    reasons = []
    for name, read in SOURCES.items():
        try:
            return {**read(), "gpu_source": name}
        except RuntimeError as exc:
            reasons.append(f"{name}: {exc}")
    raise BackendUnavailableError("cannot read this machine's GPU name and compute capability:\n  - "
                                  + "\n  - ".join(reasons))


def local_gpu() -> Dict[str, Optional[str]]:
    """Name and compute capability of GPU 0, or BackendUnavailableError when no source can read them."""
    return identify_gpu()


def build_target(flavour: TrtFlavour, config, log: Callable[[str], None]) -> Dict[str, object]:
    """What the engine is built for: the local GPU (TensorRT), or RTX compute-capability targets (no GPU needed).

    When no source can read the GPU the build goes on (TensorRT itself does not need these) and says what the
    sidecar loses."""
    target: Dict[str, object] = {"machine": platform.machine()}
    if flavour.name == "tensorrt_rtx":
        ccs = [str(config.get_compute_capability(i)).split(".")[-1] for i in range(config.num_compute_capabilities)]
        # SM86 -> "8.6"; an empty list means TensorRT-RTX's default set (8.6, 8.9, 12.0 per its docs).
        target["compute_capabilities"] = [f"{c[2:-1]}.{c[-1]}" for c in ccs if c.startswith("SM")] or "default"
        return target
    try:
        target.update(identify_gpu())
    except BackendUnavailableError as exc:
        log(f"  warning: {exc}\n  The engine is built anyway, but its sidecar records no GPU, so load() cannot refuse "
            "it on another GPU before TensorRT does. Desktop: pip install nvidia-ml-py; Jetson: a readable "
            "/proc/device-tree.")
        target.update({"gpu_name": None, "compute_capability": None, "gpu_source": None})
    return target
