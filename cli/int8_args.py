"""The `--int8` argument group of fer-export and its dispatch (kept here so cli/export.py stays small)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from fer_edge.calibration.gate import GATE_BACKENDS
from fer_edge.calibration.int8_export import (CalibrationSet, DEFAULT_METHOD, Int8Options, export_int8,
                                              load_calibration, resolve_calibration)
from fer_edge.calibration.quantize import CALIBRATION_METHODS, TARGETS, TrtRecipe
from fer_edge.calibration.sources import DEFAULT_FRAME_STEP
from fer_edge.models.artifact_writer import check_output_folder
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.openvino_backend import import_openvino


INT8_EXAMPLES = """int8 examples:
  fer-export --int8                                  # bundled model, shipped synthetic calibration set
  fer-export --int8 --calib ../shared/data/fer2013/fer2013_train_1of2.npz --calib-split Training \\
             --val ../shared/data/fer2013/fer2013_publictest.npz
  fer-export --checkpoint best.pt --int8 --calib faces/ --calib-count 256   # validates on held-apart faces/
  fer-export --int8 --calib kiosk.mp4 --calib-frame-step 10   # faces cut by YuNet; unlabelled: gate on agreement
  fer-export --int8 --gate-backend openvino          # gate on OpenVINO's real INT8 kernels (a CPU kiosk)
"""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in (0, 1], e.g. 0.99")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more (top-1 points)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "int8", "INT8 Q/DQ ONNX for TensorRT explicit quantization, calibrated on faces and accuracy-gated "
                "against FP32 (see docs/int8.md)")
    group.add_argument("--int8", action="store_true", help="also write <name>_int8.onnx (needs --calib for your own checkpoint)")
    group.add_argument("--calib", metavar="PATH",
                       help="calibration faces: image folder (class subfolders optional), video file, fer2013.csv or "
                            ".npz; required for your own checkpoint. Without it the bundled model is calibrated on "
                            "the shipped synthetic set (images made from the model's BatchNorm statistics, no faces)")
    group.add_argument("--calib-split", metavar="SPLIT", help="split of a csv/npz calibration source, e.g. Training")
    group.add_argument("--calib-count", type=_positive_int, default=512, metavar="N",
                       help="calibration images, stratified by class when labelled (default 512)")
    group.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=DEFAULT_METHOD,
                       help=f"activation range method (default {DEFAULT_METHOD}; entropy uses 2048 bins)")
    group.add_argument("--calib-seed", type=int, default=0, metavar="N", help="sampling seed (default 0)")
    group.add_argument("--calib-frame-step", type=_positive_int, default=DEFAULT_FRAME_STEP, metavar="N",
                       help=f"videos: use every Nth frame (default {DEFAULT_FRAME_STEP})")
    group.add_argument("--calib-detector", metavar="PATH|haar|none",
                       help="videos: face detector that cuts the calibration faces: a YuNet .onnx "
                            "(e.g. face_detection_yunet_2023mar.onnx), or 'none' to use whole frames as crops "
                            "(default: the bundled YuNet; 'haar' for OpenCV's Haar cascade)")
    group.add_argument("--calib-cache", metavar="DIR", help="calibration cache folder (default <out>/.calib-cache)")
    group.add_argument("--val", metavar="PATH",
                       help="labelled validation faces for the gate, any --calib format (default: a held-apart slice "
                            "of the calibration source, never the calibration images)")
    group.add_argument("--val-split", metavar="SPLIT", help="split of a csv/npz validation source, e.g. PublicTest")
    group.add_argument("--max-drop", type=_non_negative, default=0.5, metavar="PTS",
                       help="largest allowed top-1 drop vs FP32, in points (default 0.5)")
    group.add_argument("--min-agreement", type=_fraction, default=0.99, metavar="F",
                       help="unlabelled validation: least top-1 agreement with FP32 (default 0.99)")
    group.add_argument("--gate-on", choices=("auto", "agreement"), default="auto",
                       help="auto: top-1 drop when the validation set has labels, else agreement (default); "
                            "agreement: always require --min-agreement with FP32")
    group.add_argument("--gate-backend", choices=GATE_BACKENDS, default="onnxruntime",
                       help="where the gate runs FP32 and INT8: onnxruntime (simulates Q/DQ in float; default) or "
                            "openvino (real INT8 kernels, as a CPU kiosk runs them; needs fer-edge[openvino])")
    group.add_argument("--int8-target", choices=TARGETS, default="tensorrt",
                       help="tensorrt: symmetric int8 Q/DQ for TensorRT (default); cpu: uint8 activations for "
                            "ONNX Runtime CPU only")
    group.add_argument("--int8-float", choices=INT8_FLOAT_TYPES, default="fp16",
                       help="tensorrt target: type of everything left unquantized. fp16 (default): opset 19, FP16 "
                            "scales, so a strongly typed TensorRT 10/11 network runs INT8+FP16; fp32: the opset-17 "
                            "graph with FP32 scales, for TensorRT 8.6 (JetPack 6.0), which cannot parse opset 19")
    group.add_argument("--int8-small-layers", choices=("float", "int8"), default="float",
                       help="tensorrt target: the 1x1 squeeze-excite convs and a classifier with < 16 outputs. float "
                            "(default): left unquantized, as they gain nothing on a GPU; int8: quantized too, which "
                            "OpenVINO runs about 10%% faster on a CPU kiosk (docs/cpu_kiosk.md)")


INT8_FLOAT_TYPES = {"fp16": "float16", "fp32": "float32"}


def options_from_args(args: argparse.Namespace) -> Int8Options:
    return Int8Options(calib=args.calib, calib_split=args.calib_split, calib_count=args.calib_count,
                       calib_method=args.calib_method, calib_seed=args.calib_seed,
                       calib_frame_step=args.calib_frame_step, calib_detector=args.calib_detector,
                       calib_cache=args.calib_cache, val=args.val,
                       val_split=args.val_split, max_drop=args.max_drop, min_agreement=args.min_agreement,
                       target=args.int8_target, gate_on=args.gate_on, gate_backend=args.gate_backend,
                       recipe=TrtRecipe(float_dtype=INT8_FLOAT_TYPES[args.int8_float],
                                        float_small_layers=args.int8_small_layers == "float").validate())


def check_int8_args(args: argparse.Namespace, bundled: Optional[str]) -> Optional[str]:
    """Run before anything is read, so a missing calibration set fails at once; returns the calibration source.

    bundled: the name of the bundled model being exported (its shipped synthetic set is the default), else None."""
    if not args.int8:
        return None
    if args.calib_cache:
        check_output_folder(args.calib_cache, "--calib-cache")
    if args.gate_backend == "openvino":
        import_openvino()       # not installed: fail now, not after the FP32 export
    return resolve_calibration(options_from_args(args), bundled)


def read_int8_calibration(args: argparse.Namespace, calib_source: Optional[str],
                          contract: ModelContract) -> Optional[CalibrationSet]:
    """Read and check the calibration and validation faces once, before the FP32 export; None without --int8."""
    if calib_source is None:
        return None
    return load_calibration(options_from_args(args), calib_source, contract)


def run_int8(args: argparse.Namespace, calibration: CalibrationSet, fp32_path: Path, command: List[str]) -> Path:
    return export_int8(fp32_path, options_from_args(args), calibration, out_dir=Path(args.out), command=command)
