"""Checks that refuse an engine build before TensorRT parses anything: options the installed TensorRT or this
machine cannot honour, and source ONNX files TensorRT cannot build (or would build into something else than asked).

Each refusal names the problem and the fix. fer-export runs them before its ONNX export too (cli/engine_args.py),
so a doomed engine build fails in seconds, not after the export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from fer_edge.export.engine_options import BuildOptions, BuildOptionsError, EngineBuildError
from fer_edge.export.engine_target import is_jetson
from fer_edge.models.artifact_writer import artifact_name
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.tensorrt.trt_import import TrtFlavour, parse_version

# The GPU an engine is BUILT on must be at least this for each hardware-compatibility level (NvInfer.h).
HARDWARE_COMPAT_MIN_CC = {"ampere+": (8, 0), "same-cc": (7, 5)}


def hardware_compat_level(flavour: TrtFlavour, level: str):
    """The trt.HardwareCompatibilityLevel member for --hardware-compat, or EngineBuildError when this TensorRT
    lacks it: SAME_COMPUTE_CAPABILITY exists only from TensorRT 10.9 (JetPack 6 ships 10.3)."""
    trt = flavour.module
    if not hasattr(trt, "HardwareCompatibilityLevel"):
        raise EngineBuildError(f"--hardware-compat {level}: {flavour.describe()} has no hardware compatibility "
                               "(it arrived in TensorRT 8.6); leave --hardware-compat out or upgrade TensorRT")
    if level == "ampere+":
        return trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if not hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY"):
        raise EngineBuildError(f"--hardware-compat same-cc needs TensorRT >= 10.9 (HardwareCompatibilityLevel."
                               f"SAME_COMPUTE_CAPABILITY) and this is {flavour.describe()}: use --hardware-compat "
                               "ampere+ (any Ampere-or-newer GPU), leave it out, or upgrade TensorRT")
    return trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY


def check_hardware_compat(flavour: TrtFlavour, options: BuildOptions, gpu: Optional[Dict[str, Any]] = None) -> None:
    """--hardware-compat: refused on Jetson (TensorRT documents hardware compatibility as unsupported on JetPack),
    on a TensorRT without the level, and on a build GPU older than the level needs (when the GPU is known)."""
    level = options.hardware_compat
    if level == "none":
        return
    if flavour.name == "tensorrt_rtx":   # it only warns "setHardwareCompatibilityLevel() is unsupported" and builds
        raise BuildOptionsError(f"--hardware-compat {level}: TensorRT-RTX does not support hardware compatibility "
                                "levels; its engines already run on every RTX GPU they target (compute capability "
                                "8.6, 8.9 and 12.0 by default). Leave --hardware-compat out")
    if is_jetson():
        raise BuildOptionsError(f"--hardware-compat {level}: TensorRT does not support hardware-compatible engines on "
                                "JetPack; build the engine on each Jetson model it will run on, without "
                                "--hardware-compat")
    hardware_compat_level(flavour, level)
    capability = (gpu or {}).get("compute_capability")
    if capability and parse_version(str(capability))[:2] < HARDWARE_COMPAT_MIN_CC[level]:
        need = ".".join(map(str, HARDWARE_COMPAT_MIN_CC[level]))
        raise BuildOptionsError(f"--hardware-compat {level}: TensorRT builds such engines only on GPUs of compute "
                                f"capability {need} or newer, and this GPU ({gpu.get('gpu_name')}) is {capability}; "
                                "leave --hardware-compat out")


def check_dla(precision: str, options: BuildOptions, source: str, log: Callable[[str], None]) -> None:
    """--dla with an FP32 ONNX is refused: DLA runs only FP16 and INT8 layers, and a strongly typed network keeps
    the ONNX's FP32 types, so every layer would silently fall back to the GPU while the sidecar said DLA."""
    if options.dla_core is None:
        return
    if precision == "fp32":
        raise BuildOptionsError(f"--dla {options.dla_core}: the source ONNX ({source}) is FP32, and DLA runs only "
                                "FP16 and INT8 layers (a strongly typed network keeps the ONNX's types), so every "
                                "layer would fall back to the GPU. Build from the FP16 ONNX (fer-export --fp16) or "
                                "the INT8 ONNX (fer-export --int8) instead")
    if precision == "int8":
        log(f"  note: --dla {options.dla_core} with an INT8 ONNX: the layers it keeps in float run on DLA only if "
            "they are FP16; FP32 ones fall back to the GPU (each DLA/GPU switch adds a copy)")


def _quantization_target(sidecar: Optional[Dict[str, Any]]) -> Optional[str]:
    quantization = ((sidecar or {}).get("artifact") or {}).get("quantization") or {}
    return quantization.get("target")


def _read_onnx(onnx_path: Path):
    """The ONNX graph, or a clear error (not protobuf's DecodeError) when the file is not a readable ONNX."""
    import onnx
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, truncated files, ...
        raise EngineBuildError(f"{onnx_path}: not a readable ONNX file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160] if str(exc) else 'no message'}). Re-export it with "
                               "fer-export, or copy it and its .json sidecar again") from None


def _has_uint8_quantization(onnx_path: Path) -> bool:
    """Any QuantizeLinear with a uint8 zero point: ONNX Runtime's CPU recipe, which TensorRT cannot parse."""
    import onnx
    proto = _read_onnx(onnx_path)
    uint8 = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    return any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in uint8 for n in proto.graph.node)


def check_quantization_target(onnx_path: Path, contract: ModelContract, sidecar: Optional[Dict[str, Any]]) -> None:
    """An INT8 ONNX made with --int8-target cpu (uint8 asymmetric activations) is refused before TensorRT's parser
    fails deep inside on it, naming the files to build from instead."""
    if contract.precision != "int8":
        return
    target = _quantization_target(sidecar)
    if target is None:  # no record (older sidecar, or metadata only): look at the graph when onnx is installed
        try:
            target = "cpu" if _has_uint8_quantization(onnx_path) else "tensorrt"
        except ImportError:
            return
    if target == "tensorrt":
        return
    siblings: List[str] = [str(onnx_path.parent / artifact_name(contract, p)) for p in ("fp16", "fp32")
                           if (onnx_path.parent / artifact_name(contract, p)).exists()]
    instead = (f"build from {' or '.join(siblings)}, or " if siblings else "")
    raise EngineBuildError(f"{onnx_path}: this INT8 ONNX was quantized for ONNX Runtime on the CPU (--int8-target "
                           f"{target}: uint8 activations with zero points), which TensorRT cannot build (it needs "
                           f"symmetric int8 Q/DQ with zero point 0). Instead {instead}export an INT8 ONNX for "
                           "TensorRT with `fer-export --int8` (its default --int8-target tensorrt) and build from it")


# TensorRT 8.6 (JetPack 6.0) parses ONNX opsets up to 17; the INT8+FP16 graph (FP16 Q/DQ scales) needs opset 19.
TRT86_MAX_OPSET = 17


def check_opset(onnx_path: Path, flavour: TrtFlavour) -> None:
    """Refuse an ONNX newer than the installed TensorRT's parser before it fails on the first FP16 scale."""
    if flavour.name != "tensorrt" or parse_version(flavour.version)[:1] >= (9,):
        return
    try:
        proto = _read_onnx(onnx_path)
    except ImportError:     # no onnx package (runtime-only install): TensorRT's parser will say it instead
        return
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > TRT86_MAX_OPSET:
        raise EngineBuildError(f"{onnx_path}: ONNX opset {opset}, but TensorRT {flavour.version} parses opsets up to "
                               f"{TRT86_MAX_OPSET} (JetPack 6.0). Re-export the INT8 file with the float32 recipe, "
                               "which TensorRT 8.6 parses: `fer-export --int8 --int8-float fp32` (an FP32/FP16 ONNX "
                               f"exported with --opset {TRT86_MAX_OPSET} builds as is)")
