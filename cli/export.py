"""`fer-export`: checkpoint -> ONNX FP32/FP16 (INT8 and TensorRT engines via their own flags)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from fer_edge.cli.engine_args import ENGINE_EXAMPLES, add_engine_arguments, build_engines, check_engine_args
from fer_edge.cli.int8_args import INT8_EXAMPLES, add_int8_arguments, check_int8_args, read_int8_calibration, run_int8
from fer_edge.cli.serving_args import (SERVING_EXAMPLES, add_serving_arguments, check_serving_args, serve_existing,
                                       serving_requested, write_serving)
from fer_edge.cli_support import EXIT_OK, new_parser, run_cli
from fer_edge.data.labels import parse_labels
from fer_edge.export.exporter import check_export_inputs, export_checked, parity_faces
from fer_edge.models.artifact_writer import check_output_folder
from fer_edge.models.bundled import BUNDLED_MODELS, DEFAULT_MODEL, bundled_model, bundled_name_of, names_help
from fer_edge.runtime.contract import INTERPOLATIONS


EXAMPLES = """examples:
  fer-export                                   # bundled reference model -> ./fer-artifacts/*_fp32.onnx
  fer-export --model ferplus                   # the bundled 8-class FER+ model instead
  fer-export --fp16                            # also an FP16 ONNX for strongly typed TensorRT builds
  fer-export --checkpoint best.pt --arch tf_efficientnetv2_b0 --img-size 64 --labels ferplus
  fer-export --checkpoint w.safetensors --parity-data fer2013.csv --parity-split PublicTest

Every artifact carries its preprocessing contract (metadata_props and <artifact>.json), and the
export fails, writing nothing, unless ONNX Runtime agrees with PyTorch on real faces.
"""


def _floats(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 0.5 or 0.485,0.456,0.406")


def _labels(text: str) -> List[str]:
    try:
        return parse_labels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("fer-export", description="Export a timm EfficientNetV2 FER checkpoint to deployable ONNX "
                        "artifacts.", epilog=EXAMPLES)
    model = parser.add_argument_group("model")
    which = model.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="PATH",
                       help=".pt/.pth state_dict or training checkpoint, or .safetensors (default: the bundled fer2013 model)")
    which.add_argument("--model", choices=sorted(BUNDLED_MODELS), metavar="NAME",
                       help=f"a bundled model by name (default fer2013). {names_help()}")
    model.add_argument("--arch", help="timm architecture, e.g. tf_efficientnetv2_b0 (read from the checkpoint when recorded)")
    model.add_argument("--img-size", type=int, metavar="N", help="square input size in pixels (read from the checkpoint when recorded)")
    model.add_argument("--labels", type=_labels, metavar="SET", help="fer2013 (7), ferplus (8) or a,b,c in output order")
    model.add_argument("--mean", type=_floats, help="normalisation mean per channel (default 0.5 gray, ImageNet RGB)")
    model.add_argument("--std", type=_floats, help="normalisation std per channel")
    model.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize kernel (default area)")
    model.add_argument("--crop-margin", type=float, metavar="F", help="face-box margin per side as a fraction (default 0.1)")
    model.add_argument("--allow-pickle", action="store_true",
                       help="allow checkpoints that need arbitrary unpickling (runs code from the file: trusted files only)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="fer-artifacts", metavar="DIR", help="output folder (default ./fer-artifacts)")
    out.add_argument("--fp16", action="store_true", help="also write an explicit-precision FP16 ONNX (FP32 I/O)")
    out.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17: TensorRT 8.6 to 11 parse it)")
    check = parser.add_argument_group("parity check")
    check.add_argument("--parity-data", metavar="PATH",
                       help="face images for the PyTorch-vs-ONNX check: fer2013.csv, .npz or image folder "
                            "(default: FER-2013 PublicTest from ../shared when present)")
    check.add_argument("--parity-split", metavar="SPLIT", help="split of a csv/npz, e.g. PublicTest")
    check.add_argument("--parity-count", type=int, metavar="N", help="check on N random images of the set (default all)")
    add_int8_arguments(parser)
    parser.epilog += "\n" + INT8_EXAMPLES
    add_engine_arguments(parser)
    parser.epilog += "\n" + ENGINE_EXAMPLES
    add_serving_arguments(parser)
    parser.epilog += "\n" + SERVING_EXAMPLES
    return parser


def _engine_from_onnx(args: argparse.Namespace) -> int:
    check_output_folder(args.out)
    check_serving_args(args)
    built = build_engines(args, {})
    for path in built:
        print(f"wrote {path}")
    if serving_requested(args):
        faces = parity_faces(args.parity_data, args.parity_split, args.parity_count, print)
        for path in write_serving(args, [Path(args.onnx)], [p for p in built if p.suffix != ".json"], faces):
            print(f"wrote {path}")
    return EXIT_OK


def _export(args: argparse.Namespace, command: List[str]) -> int:
    """Every check first (arguments, output folder, checkpoint, data, calibration faces), then the long work."""
    if args.model:
        args.checkpoint = str(bundled_model(args.model).weights)
    bundled = bundled_name_of(args.checkpoint) if args.checkpoint else DEFAULT_MODEL
    calib_source = check_int8_args(args, bundled)
    check_engine_args(args)
    check_serving_args(args)
    inputs = check_export_inputs(
        checkpoint=args.checkpoint, arch=args.arch, img_size=args.img_size, labels=args.labels, out_dir=args.out,
        parity_data=args.parity_data, parity_split=args.parity_split, parity_count=args.parity_count,
        allow_pickle=args.allow_pickle, mean=args.mean, std=args.std, interpolation=args.interpolation,
        crop_margin=args.crop_margin)
    calibration = read_int8_calibration(args, calib_source, inputs.contract)

    written = export_checked(inputs, fp16=args.fp16, opset=args.opset, command=command)
    paths = {precision: artifact.path for precision, artifact in written.items()}
    for artifact in written.values():
        print(f"wrote {artifact.path}\nwrote {artifact.sidecar}")
    if calibration is not None:
        paths["int8"] = run_int8(args, calibration, paths["fp32"], command)
        print(f"wrote {paths['int8']}\nwrote {paths['int8']}.json")
    engines = []
    if args.engine:
        for path in build_engines(args, paths):
            print(f"wrote {path}")
            engines += [path] if path.suffix != ".json" else []
    if serving_requested(args):
        for path in write_serving(args, list(paths.values()), engines, inputs.parity_faces):
            print(f"wrote {path}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    def body(arguments: List[str]) -> int:
        parser = build_parser()
        args = parser.parse_args(arguments)
        if args.from_artifacts:  # Triton / DeepStream / serving forms from existing artifacts
            return serve_existing(args)
        if args.onnx and not args.engine:
            parser.error("--onnx names the source of an engine build; add --engine")
        if args.onnx:  # engine from an existing ONNX: nothing to export
            return _engine_from_onnx(args)
        return _export(args, ["fer-export"] + arguments)
    return run_cli("fer-export", body, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
