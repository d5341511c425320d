"""What an engine build may be asked for (BuildOptions, presets), the fer-export flags that reproduce it, and the
errors a build raises."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from fer_edge.runtime.errors import FerEdgeError

HARDWARE_COMPAT_LEVELS = ("none", "ampere+", "same-cc")
DEFAULT_BATCH = (1, 8, 32)
PRESETS: Dict[str, Dict[str, object]] = {
    # Static batch 1: the robot's latency case (and a prerequisite for CUDA graphs and DLA).
    "latency": {"batch": (1, 1, 1)},
    # 4-8 GB Jetsons: the builder's workspace defaults to all of the shared RAM; cap it and search less.
    "jetson-lowmem": {"batch": (1, 1, 1), "workspace_mb": 512, "opt_level": 2},
}


class EngineBuildError(FerEdgeError, RuntimeError):
    """The engine cannot be built as asked (options, source ONNX, installed TensorRT); nothing was written."""


class TensorRTBuildFailed(EngineBuildError):
    """TensorRT's ONNX parser or builder rejected the network itself (the options and the installation were
    fine): the one failure that building the same model differently (INT8 with more blocks in float) can fix."""


class BuildOptionsError(FerEdgeError, ValueError):
    """Engine build options that cannot work; each is named as a BuildOptions field and as its fer-export flag."""


@dataclass
class BuildOptions:
    batch: Tuple[int, int, int] = DEFAULT_BATCH     # optimisation profile min:opt:max
    workspace_mb: Optional[int] = None              # None = TensorRT's default (the device memory)
    opt_level: Optional[int] = None                 # builder_optimization_level 0..5 (None = default 3)
    hardware_compat: str = "none"                   # none | ampere+ | same-cc
    dla_core: Optional[int] = None                  # DLA core with GPU fallback (Jetson AGX/NX)
    timing_cache: Optional[str] = None              # file reused across builds
    version_compatible: bool = False                # plan loadable by newer TensorRT / tensorrt_lean
    preset: Optional[str] = None
    # TensorRT's IProgressMonitor (Python callbacks from the builder threads) lengthens builds and was reported to
    # give slower engines, so it is opt-in: None = only when stdout is an interactive terminal.
    progress: Optional[bool] = None
    # Layer names and precisions in the engine (IEngineInspector JSON), which gpu_check reads to prove an INT8
    # engine kept no FP32 compute; TensorRT's default (LAYER_NAMES_ONLY) omits the precisions.
    detailed_profiling: bool = False

    def validate(self) -> "BuildOptions":
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise BuildOptionsError(f"batch profile {lo}:{opt}:{hi} (--batch): need 1 <= min <= opt <= max, "
                                    "e.g. 1:8:32 (or 1:1:1)")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise BuildOptionsError(f"opt_level {self.opt_level} (--opt-level): must be 0..5")
        if self.workspace_mb is not None and self.workspace_mb < 16:
            raise BuildOptionsError(f"workspace_mb {self.workspace_mb} (--workspace) is too small; use at least 16 "
                                    "(Jetson: 256-1024)")
        if self.hardware_compat not in HARDWARE_COMPAT_LEVELS:
            raise BuildOptionsError(f"hardware_compat {self.hardware_compat!r} (--hardware-compat): choose one of "
                                    f"{HARDWARE_COMPAT_LEVELS}")
        if self.dla_core is not None and (lo, opt) != (hi, hi):
            raise BuildOptionsError(f"dla_core (--dla) needs a static batch (min=opt=max) but the batch profile is "
                                    f"{lo}:{opt}:{hi}; use --preset latency or --batch 1:1:1")
        if self.dla_core is not None and self.hardware_compat != "none":
            raise BuildOptionsError("dla_core (--dla) and hardware_compat (--hardware-compat) exclude each other: "
                                    "DLA engines run on the Jetson they were built on, and TensorRT does not support "
                                    "hardware-compatible engines on JetPack; drop --hardware-compat")
        return self


def options_with_preset(preset: Optional[str], **explicit) -> BuildOptions:
    """Preset values first, then every explicitly given (non-None) option on top."""
    values: Dict[str, object] = {}
    if preset:
        if preset not in PRESETS:
            raise BuildOptionsError(f"preset {preset!r} (--preset): choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in explicit.items() if v is not None})
    return BuildOptions(preset=preset, **values).validate()


def rebuild_args(onnx_path: Path, out_dir: Path, options: BuildOptions, flavour: str) -> List[str]:
    """fer-export arguments that reproduce this build (printed by the runtime when an engine must be rebuilt)."""
    args = ["--engine", "--onnx", str(onnx_path), "--out", str(out_dir), "--batch", ":".join(map(str, options.batch))]
    if options.workspace_mb:
        args += ["--workspace", str(options.workspace_mb)]
    if options.opt_level is not None:
        args += ["--opt-level", str(options.opt_level)]
    if options.hardware_compat != "none":
        args += ["--hardware-compat", options.hardware_compat]
    if options.dla_core is not None:
        args += ["--dla", str(options.dla_core)]
    if options.timing_cache:
        args += ["--timing-cache", str(options.timing_cache)]
    if options.version_compatible:
        args += ["--version-compatible"]
    if flavour == "tensorrt_rtx":
        args += ["--trt", "tensorrt_rtx"]
    return args
