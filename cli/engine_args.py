"""The `--engine` argument group of fer-export and its dispatch (kept here so cli/export.py stays small)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from fer_edge.cli.engine_retry import DEFAULT_RETRIES, build_with_int8_fallback
from fer_edge.export.engine_build import (HARDWARE_COMPAT_LEVELS, PRESETS, BuildOptionsError, import_builder,
                                          options_with_preset)
from fer_edge.export.engine_checks import check_dla, check_hardware_compat


ENGINE_EXAMPLES = """engine examples (TensorRT >= 10 or tensorrt-rtx; run on the target GPU/Jetson):
  fer-export --engine --fp16                                # export + FP16 engine, dynamic batch 1:8:32
  fer-export --engine --onnx fer-artifacts/m_fp16.onnx --preset latency --timing-cache trt.cache
  fer-export --engine --onnx m_int8.onnx --preset jetson-lowmem --dla 0   # Jetson Orin NX/AGX DLA
  fer-export --engine --onnx m_int8.onnx --int8-fallback-fp16   # INT8, else more blocks in float, else FP16
"""


def batch_profile(text: str) -> Tuple[int, int, int]:
    """--batch: '1:8:32' -> (1, 8, 32); '4' -> (4, 4, 4). Order and range are BuildOptions' to check."""
    try:
        parts = tuple(int(p) for p in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or MIN:OPT:MAX, e.g. 1:8:32")
    return parts  # type: ignore[return-value]


def _retries(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "TensorRT engine", "build a serialized engine (strongly typed: the ONNX's own FP32/FP16/INT8 Q/DQ precision)")
    group.add_argument("--engine", action="store_true",
                       help="build a TensorRT engine (+ <engine>.json sidecar) from the exported ONNX, or from --onnx")
    group.add_argument("--onnx", metavar="PATH", help="build from this existing fer-edge ONNX instead of exporting")
    group.add_argument("--batch", type=batch_profile, metavar="MIN:OPT:MAX",
                       help="optimisation profile for the batch dim (default 1:8:32; N = static batch N)")
    group.add_argument("--preset", choices=sorted(PRESETS),
                       help="latency: static batch 1; jetson-lowmem: batch 1, 512 MB workspace, opt-level 2")
    group.add_argument("--timing-cache", metavar="FILE", help="timing cache read before and written after the build")
    group.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MB (Jetson: 256-1024)")
    group.add_argument("--hardware-compat", choices=HARDWARE_COMPAT_LEVELS,
                       help="none (default), ampere+ (any Ampere-or-newer dGPU), same-cc (TensorRT >= 10.9); "
                            "not on Jetson")
    group.add_argument("--dla", type=int, metavar="CORE",
                       help="run on DLA core N with GPU fallback (FP16/INT8 ONNX only; needs a static batch)")
    group.add_argument("--opt-level", type=int, choices=range(6), metavar="0..5",
                       help="builder optimisation level (lower builds faster with less memory; default 3)")
    group.add_argument("--version-compatible", action="store_true",
                       help="plan loadable by newer TensorRT of the same major and by tensorrt_lean")
    group.add_argument("--trt", default="auto", choices=("auto", "tensorrt", "tensorrt_rtx"),
                       help="TensorRT module to build with (auto: tensorrt, else tensorrt_rtx)")
    group.add_argument("--build-progress", action=argparse.BooleanOptionalAction, default=None,
                       help="print TensorRT's build phases (its progress callbacks slow the build; default: only on "
                            "an interactive terminal, else an elapsed-time line)")
    group.add_argument("--int8-retries", type=_retries, default=DEFAULT_RETRIES, metavar="N",
                       help="when TensorRT cannot build the INT8 engine, retry N times with 1, 2, 4, ... more blocks "
                            f"in float (the gate's sensitivity order; default {DEFAULT_RETRIES}, 0 = no retry)")
    group.add_argument("--int8-fallback-fp16", action="store_true",
                       help="when every INT8 build fails, build the FP16 engine (from <name>_fp16.onnx) instead")


def engine_options(args: argparse.Namespace):
    return options_with_preset(
        args.preset, batch=args.batch, workspace_mb=args.workspace,
        opt_level=args.opt_level, hardware_compat=args.hardware_compat, dla_core=args.dla,
        timing_cache=args.timing_cache, version_compatible=args.version_compatible or None,
        progress=args.build_progress)


def engine_sources(args: argparse.Namespace, paths: Dict[str, Path]) -> List[Path]:
    """ONNX files to build from: --onnx, else the lowest precision just exported (int8 > fp16 > fp32)."""
    if args.onnx:
        return [Path(args.onnx)]
    for precision in ("int8", "fp16", "fp32"):
        if precision in paths:
            return [Path(paths[precision])]
    return []


def check_engine_args(args: argparse.Namespace) -> None:
    """Refuse bad build options, a missing TensorRT, and an engine the export's own output could not give,
    before the ONNX export, not after it."""
    if not args.engine:
        return
    options = engine_options(args)
    flavour = import_builder(args.trt)
    check_hardware_compat(flavour, options)
    if args.onnx:
        return  # build_engine checks the existing file itself
    precision = "int8" if getattr(args, "int8", False) else "fp16" if getattr(args, "fp16", False) else "fp32"
    if precision == "int8" and getattr(args, "int8_target", "tensorrt") != "tensorrt":
        raise BuildOptionsError(f"--engine builds from the INT8 ONNX, and --int8-target {args.int8_target} makes it "
                                "for ONNX Runtime on the CPU (uint8 activations), which TensorRT cannot build; leave "
                                "--int8-target out (tensorrt) or drop --engine")
    check_dla(precision, options, "the export's lowest precision: add --fp16 or --int8", lambda _m: None)


def build_engines(args: argparse.Namespace, paths: Dict[str, Path],
                  log: Callable[[str], None] = print) -> List[Path]:
    options = engine_options(args)
    built = []
    for onnx_path in engine_sources(args, paths):
        result = build_with_int8_fallback(onnx_path, retries=args.int8_retries, fp16_fallback=args.int8_fallback_fp16,
                                          log=log, out_dir=args.out, options=options, flavour=args.trt)
        built += [result.path, result.sidecar]
    return built
