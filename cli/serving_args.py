"""fer-export's serving options (kept here so cli/export.py stays small):

--probabilities / --uint8-input  serving forms of every ONNX written or given (export/onnx_variants.py)
--triton DIR                     a Triton model repository, one model folder per ONNX and engine (export/triton_repo.py)
--deepstream DIR                 an nvinfer secondary-classifier config on the probabilities ONNX (export/deepstream.py)
--from PATH                      existing artifacts instead of an export
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, List, Optional

from fer_edge.cli_support import EXIT_OK
from fer_edge.data.datasets import FaceSet
from fer_edge.export.deepstream import DeepStreamOptions, write_deepstream_config
from fer_edge.export.engine_build import import_builder
from fer_edge.export.exporter import parity_faces
from fer_edge.export.onnx_variants import Variant, requested_variants, variant_path, write_variant
from fer_edge.export.triton_repo import (ENGINE_SUFFIXES, PLATFORMS, TritonRepoError, check_plan_for_server,
                                         check_triton_options, plan_model, write_model_folder)
from fer_edge.export.triton_config import INSTANCE_KINDS
from fer_edge.models.artifact_writer import check_output_folder

SERVING_EXAMPLES = """serving examples (Triton Inference Server, DeepStream):
  fer-export --fp16 --triton models/                  # export, then one Triton model folder per ONNX
  fer-export --triton models/ --from fer-artifacts/m_fp16.onnx --uint8-input --probabilities
  fer-export --triton models/ --from m_fp16_trt_b1-8-32.engine --triton-trt 10.16   # a plan for TensorRT 10.16
  fer-export --deepstream ds/ --from fer-artifacts/m_fp16.onnx  # writes m_fp16_probs.onnx + the nvinfer config
"""


def _int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas, e.g. 4,8") from None


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    forms = parser.add_argument_group("serving forms", "extra ONNX files beside each one written (or given with --from)")
    forms.add_argument("--probabilities", action="store_true",
                       help="also write <name>_probs.onnx: softmax appended (what Triton classification and "
                            "DeepStream's classifier read)")
    forms.add_argument("--uint8-input", action="store_true",
                       help="also write <name>_u8.onnx: uint8 NHWC input, /255, mean and std in the graph "
                            "(4x less to send per face)")
    forms.add_argument("--from", dest="from_artifacts", action="append", metavar="PATH",
                       help="an existing .onnx or TensorRT engine to serve (repeatable); nothing is exported")
    triton = parser.add_argument_group("Triton Inference Server")
    triton.add_argument("--triton", metavar="DIR", help="write a Triton model repository (one folder per model)")
    triton.add_argument("--triton-platform", choices=[p for p in PLATFORMS if p != "tensorrt"], default="auto",
                        help="for ONNX models: onnxruntime (what the default, auto, picks) or python (ONNX Runtime "
                             "in Triton's Python backend, for servers without the ONNX Runtime backend)")
    triton.add_argument("--triton-trt", metavar="VERSION",
                        help="the server's TensorRT version (e.g. 10.16): a plan built with another is refused")
    triton.add_argument("--triton-max-batch", type=int, metavar="N",
                        help="max_batch_size (default: 32 for ONNX, the engine profile's max for plans)")
    triton.add_argument("--triton-preferred-batch", type=_int_list, metavar="LIST", default=[],
                        help="dynamic batching's preferred batch sizes, e.g. 4,8 (default: none, Triton decides)")
    triton.add_argument("--triton-queue-delay-us", type=int, default=2000, metavar="US",
                        help="dynamic batching's max queue delay in microseconds (default 2000)")
    triton.add_argument("--triton-instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    triton.add_argument("--triton-kind", choices=sorted(INSTANCE_KINDS), default="auto",
                        help="instance kind: auto (GPU when the server has one; plans: gpu), cpu or gpu")
    triton.add_argument("--triton-trt-accelerator", action="store_true",
                        help="ONNX models: ONNX Runtime's TensorRT execution provider on GPU instances")
    triton.add_argument("--triton-threads", type=int, metavar="N", help="ONNX Runtime intra-op threads per instance")
    ds = parser.add_argument_group("DeepStream")
    ds.add_argument("--deepstream", metavar="DIR", help="write an nvinfer secondary-classifier config, its labels "
                                                        "and the probabilities ONNX into DIR")
    ds.add_argument("--ds-detector-id", type=int, default=1, metavar="ID",
                    help="the face detector's gie-unique-id (default 1)")
    ds.add_argument("--ds-gie-id", type=int, default=2, metavar="ID", help="this classifier's gie-unique-id (default 2)")
    ds.add_argument("--ds-face-classes", type=_int_list, default=[0], metavar="LIST",
                    help="the detector's face class ids (default 0)")
    ds.add_argument("--ds-threshold", type=float, default=0.0, metavar="P",
                    help="classifier-threshold: label only when the top probability exceeds P (default 0: always)")
    ds.add_argument("--ds-reinfer-interval", type=int, default=10, metavar="FRAMES",
                    help="secondary-reinfer-interval: frames between re-classifications of a tracked face (default 10)")
    ds.add_argument("--ds-min-face", type=int, default=0, metavar="PX",
                    help="input-object-min-width/height (default: half the model's input size)")


def serving_requested(args: argparse.Namespace) -> bool:
    return bool(args.triton or args.deepstream or args.probabilities or args.uint8_input)


def _triton_options(args: argparse.Namespace) -> Dict[str, object]:
    return {"platform": args.triton_platform, "max_batch_size": args.triton_max_batch,
            "preferred_batch_sizes": args.triton_preferred_batch, "queue_delay_us": args.triton_queue_delay_us,
            "instances": args.triton_instances, "kind": args.triton_kind, "server_trt": args.triton_trt,
            "trt_accelerator": args.triton_trt_accelerator, "threads": args.triton_threads}


def _ds_options(args: argparse.Namespace) -> DeepStreamOptions:
    return DeepStreamOptions(gie_id=args.ds_gie_id, operate_on_gie_id=args.ds_detector_id,
                             operate_on_class_ids=tuple(args.ds_face_classes), threshold=args.ds_threshold,
                             reinfer_interval=args.ds_reinfer_interval, min_face=args.ds_min_face).validate()


def check_serving_args(args: argparse.Namespace) -> None:
    """Every serving option and output folder, before anything is exported or written."""
    if args.from_artifacts and not serving_requested(args):
        raise TritonRepoError("--from names existing artifacts for --triton, --deepstream, --probabilities or "
                              "--uint8-input; add one of them (or use --onnx with --engine to build an engine)")
    if not serving_requested(args):
        return
    if args.triton:
        check_output_folder(args.triton, "--triton")
        check_triton_options(args.triton_platform, args.triton_max_batch, args.triton_preferred_batch,
                             args.triton_queue_delay_us, args.triton_instances, args.triton_kind)
        if args.engine:
            _check_engine_for_triton(args)
    if args.deepstream:
        check_output_folder(args.deepstream, "--deepstream")
        _ds_options(args)
    if args.from_artifacts:
        _check_from(args)


def _check_engine_for_triton(args: argparse.Namespace) -> None:
    """The engine this run will build must be one the server can load: full TensorRT, of its version."""
    flavour = import_builder(args.trt)
    if flavour.name != "tensorrt":
        raise TritonRepoError("--engine builds with TensorRT-RTX here (full TensorRT is not installed), and "
                              "Triton's tensorrt_plan backend runs only full-TensorRT plans. Drop --engine to "
                              "place the ONNX models, or build the engine with --trt tensorrt where it is installed")
    check_plan_for_server(Path(f"the engine from {args.onnx or 'this export'} (TensorRT installed here)"),
                          {"engine": {"flavour": flavour.name, "version": flavour.version}}, args.triton_trt)


def _check_from(args: argparse.Namespace) -> None:
    given = [name for name, value in (("--checkpoint", args.checkpoint), ("--fp16", args.fp16),
                                      ("--int8", args.int8), ("--engine", args.engine), ("--onnx", args.onnx))
             if value]
    if given:
        raise TritonRepoError(f"--from serves existing artifacts, so nothing is exported or built; drop {given} "
                              "(or drop --from to export first)")
    paths = [Path(p) for p in args.from_artifacts]
    for path in paths:
        if not path.is_file() or path.suffix.lower() not in (".onnx",) + ENGINE_SUFFIXES:
            raise TritonRepoError(f"--from {path}: no such .onnx or TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) file")
    onnx = [p for p in paths if p.suffix.lower() == ".onnx"]
    if (args.deepstream or args.probabilities or args.uint8_input) and not onnx:
        raise TritonRepoError("--deepstream, --probabilities and --uint8-input start from an ONNX; add one with --from")
    if (args.probabilities or args.uint8_input or args.deepstream):
        check_output_folder(args.out)       # the serving forms are written to --out
    if args.triton:
        _unique_names([plan_model(p, **_triton_options(args)) for p in paths])


def _unique_names(models) -> None:
    seen: Dict[str, Path] = {}
    for model in models:
        if model.name in seen:
            raise TritonRepoError(f"{seen[model.name]} and {model.artifact} would both become Triton model "
                                  f"{model.name!r}; write them to separate repositories (two fer-export runs)")
        seen[model.name] = model.artifact


def _deepstream_source(onnx_paths: List[Path]) -> Path:
    """The float ONNX nvinfer builds its engine from: FP16, else FP32, else the first given (DeepStream builds
    FP16 with network-mode=2; INT8 Q/DQ needs a recent TensorRT in DeepStream)."""
    for precision in ("fp16", "fp32"):
        for path in onnx_paths:
            if path.stem.endswith(f"_{precision}"):
                return path
    return onnx_paths[0]


def write_serving(args: argparse.Namespace, onnx_paths: List[Path], engine_paths: List[Path], faces: FaceSet,
                  log: Callable[[str], None] = print) -> List[Path]:
    """Serving forms, then the DeepStream folder, then the Triton repository; returns what was written."""
    written: List[Path] = []
    forms = []
    for source in onnx_paths:
        for variant in requested_variants(args.uint8_input, args.probabilities):
            forms.append(write_variant(source, variant, faces, Path(args.out), log).path)
            written += [forms[-1], Path(str(forms[-1]) + ".json")]
    if args.deepstream:
        source = _deepstream_source(onnx_paths)
        probs = variant_path(source, Variant(probabilities=True), Path(args.out))
        if probs not in forms:
            probs = write_variant(source, Variant(probabilities=True), faces, Path(args.out), log).path
            written += [probs, Path(str(probs) + ".json")]
        written.append(write_deepstream_config(probs, Path(args.deepstream), _ds_options(args), log))
    if args.triton:
        models = [plan_model(p, **_triton_options(args)) for p in list(onnx_paths) + forms + list(engine_paths)]
        _unique_names(models)
        for model in models:
            for note in model.notes:
                log(f"note: {note}")
            written.append(write_model_folder(model, Path(args.triton)))
    return written


def serve_existing(args: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    """fer-export --from ...: serving forms, DeepStream and Triton from artifacts already on disk."""
    check_serving_args(args)
    paths = [Path(p) for p in args.from_artifacts]
    onnx = [p for p in paths if p.suffix.lower() == ".onnx"]
    engines = [p for p in paths if p.suffix.lower() != ".onnx"]
    needs_faces = args.probabilities or args.uint8_input or args.deepstream
    faces: Optional[FaceSet] = (parity_faces(args.parity_data, args.parity_split, args.parity_count, log)
                                if needs_faces else None)
    for path in write_serving(args, onnx, engines, faces, log):
        log(f"wrote {path}")
    return EXIT_OK
