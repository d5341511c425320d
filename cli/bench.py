"""fer-bench: latency (end-to-end and inference-only) and accuracy of fer-edge artifacts, side by side."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

from fer_edge.benchmarks import pipeline_bench, triton_bench
from fer_edge.benchmarks.fer_bench import BenchOptions, load_lines, run_benchmark
from fer_edge.benchmarks.report import markdown_table, warning_lines
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.data.datasets import NPZ_LABEL_SOURCES, UNKNOWN_CLASS_POLICIES
from fer_edge.data.labels import parse_label_map
from fer_edge.runtime.errors import FerEdgeError
from fer_edge.runtime.model import ONNX_BACKENDS, TRITON_SCHEMES


DEFAULT_BATCHES = "1,32"
DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 50

EXAMPLES = """examples:
  fer-bench fer-artifacts/model_fp32.onnx fer-artifacts/model_fp16.onnx
  fer-bench a_fp32.onnx b_int8.onnx --data ../shared/data/fer2013/fer2013_publictest.npz --report bench/
  fer-bench a_fp32.onnx --data fer2013.csv --split PublicTest --limit 1000 --batch 1,8,32 --threads 2
  fer-bench a_fp32.onnx --engine a_fp16.engine --duration 3 --warmup 20
  fer-bench a_fp32.onnx a_int8.onnx --backend onnxruntime,openvino --threads 1 --batch 1,8   # CPU backends
  fer-bench a_fp32.onnx --data ckplus_folders/ --unknown-classes drop      # skip e.g. 'contempt' faces
  fer-bench a_fp32.onnx --data ckplus_folders/ --label-map contempt=neutral
  fer-bench ferplus_fp32.onnx --data ../shared/data/fer2013/fer2013_publictest.npz --npz-labels ferplus
  fer-bench a_fp32.onnx --triton triton://127.0.0.1:8000/fer --concurrency 1,4,8,16   # cameras vs a server

The FIRST model is the reference for top-1 agreement. Latency uses real crops from --data when given,
else random uint8 48x48 crops; all models are timed round-robin in blocks, so they share the machine's load.
A WARNING line (and report.json "warnings") flags a busy machine (1-minute load average above the available
cores, before or after timing) and impossible orderings (a stage slower than end-to-end).
Exit code 2 on bad input (missing file, unknown format, bad --batch, out-of-range labels, classes the model lacks).
"""


class UsageError(FerEdgeError):
    """A command-line value that cannot work; reported as one line with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("fer-bench", description=__doc__, epilog=EXAMPLES)
    models = parser.add_argument_group("models (order: MODEL arguments, then --model, then --engine; the first is the reference)")
    models.add_argument("models", nargs="*", metavar="MODEL", help=".onnx or TensorRT .engine/.plan artifacts")
    models.add_argument("--model", action="append", default=[], metavar="PATH", help="add an artifact (repeatable)")
    models.add_argument("--engine", action="append", default=[], metavar="PATH",
                        help="add a TensorRT engine (repeatable; same as --model)")
    models.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime intra-op / OpenVINO inference threads (default: the runtime's choice)")
    models.add_argument("--backend", metavar="LIST",
                        help=f"comma-separated backends that run each .onnx ({', '.join(ONNX_BACKENDS)}): every "
                             "model x backend is measured in the same round-robin, in this order (default: "
                             "onnxruntime; openvino needs fer-edge[openvino])")

    lat = parser.add_argument_group("latency")
    lat.add_argument("--batch", default=DEFAULT_BATCHES, metavar="LIST",
                     help=f"comma-separated batch sizes (default {DEFAULT_BATCHES})")
    lat.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N",
                     help=f"untimed warm-up calls per batch size (default {DEFAULT_WARMUP})")
    stop = lat.add_mutually_exclusive_group()
    stop.add_argument("--iterations", type=int, default=None, metavar="N",
                      help=f"timed calls per batch size (default {DEFAULT_ITERATIONS})")
    stop.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="time each batch size for this long instead (at least 10 calls)")

    acc = parser.add_argument_group("accuracy (needs --data)")
    acc.add_argument("--data", metavar="PATH", help="fer2013.csv, an .npz (x, y[, split]) or a folder of images")
    acc.add_argument("--split", metavar="NAME", help="csv/npz split to keep: Training, PublicTest, PrivateTest")
    acc.add_argument("--limit", type=int, metavar="N", help="use only the first N faces")
    acc.add_argument("--eval-batch", type=int, default=256, metavar="N",
                     help="faces per call when evaluating accuracy (default 256; capped by an engine's max batch)")
    acc.add_argument("--unknown-classes", choices=UNKNOWN_CLASS_POLICIES, default="error",
                     help="faces of a class the model lacks (e.g. 'contempt' in CK+): 'error' refuses the data "
                          "(default), 'drop' leaves them out and prints and reports how many were dropped per class")
    acc.add_argument("--npz-labels", choices=NPZ_LABEL_SOURCES, default="y",
                     help="labels of an .npz to score: its 'y' (default), or 'ferplus': the FER+ majority vote of "
                          "'ferplus_votes' (8 classes; rows whose majority is unknown, not a face or tied are left out)")
    acc.add_argument("--label-map", metavar="CLASS=LABEL[,...]",
                     help="score dataset classes as model labels, e.g. contempt=neutral (applied before --unknown-classes)")

    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="DIR", help="write DIR/report.json, DIR/report.csv and confusion PNGs")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    pipeline_bench.add_arguments(parser)  # fer-bench --pipeline SOURCE: the face-pipeline benchmark
    triton_bench.add_arguments(parser)    # fer-bench MODEL --triton URL: simulated cameras against a server
    return parser


def parse_batches(text: str) -> List[int]:
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch {text!r}: give positive integers separated by commas, e.g. --batch 1,8,32")
    return sorted(set(batches))


def parse_backends(text: Optional[str], paths: List[str]) -> Optional[List[str]]:
    """--backend LIST -> backend names in order (None without --backend: each artifact's default backend)."""
    if text is None:
        return None
    backends = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [b for b in backends if b not in ONNX_BACKENDS]
    if not backends or unknown or len(set(backends)) != len(backends):
        raise UsageError(f"--backend {text!r}: give distinct names from {', '.join(ONNX_BACKENDS)} separated by "
                         "commas, e.g. --backend onnxruntime,openvino")
    if not any(Path(p).suffix.lower() == ".onnx" for p in paths):
        raise UsageError(f"--backend {text}: chooses the backend of .onnx models, and none was given "
                         "(engines run on TensorRT)")
    return backends


def _check_args(args) -> List[str]:
    paths = [*args.models, *args.model, *args.engine]
    if not paths:
        raise UsageError("no models given: fer-bench MODEL [MODEL ...] (see fer-bench --help)")
    served = [p for p in paths if p.split("://", 1)[0] in TRITON_SCHEMES]
    if served:
        raise UsageError(f"{served[0]}: a served model is measured with fer-bench MODEL.onnx --triton URL (cameras "
                         "against the server, next to MODEL.onnx in-process)")
    for name in ("warmup", "iterations", "limit", "eval_batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be {'>= 0' if name == 'warmup' else '>= 1'}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration}: must be a positive number of seconds")
    for flag, given in (("--split", args.split), ("--label-map", args.label_map),
                        ("--unknown-classes drop", args.unknown_classes != "error"),
                        ("--npz-labels ferplus", args.npz_labels != "y")):
        if given and not args.data:
            raise UsageError(f"{flag} needs --data (it chooses how the faces of --data are scored)")
    return paths


def parse_label_map_option(text: Optional[str]) -> Optional[Dict[str, str]]:
    if text is None:
        return None
    try:
        return parse_label_map(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def bench_options(args: argparse.Namespace, argv: List[str]) -> BenchOptions:
    """Every flag checked (a malformed --label-map fails before any model loads), as BenchOptions."""
    paths = _check_args(args)
    return BenchOptions(
        models=paths, backends=parse_backends(args.backend, paths), batches=parse_batches(args.batch),
        warmup=args.warmup,
        iterations=None if args.duration else (args.iterations or DEFAULT_ITERATIONS), duration=args.duration,
        threads=args.threads, data=args.data, split=args.split, limit=args.limit, eval_batch=args.eval_batch,
        unknown_classes=args.unknown_classes, label_map=parse_label_map_option(args.label_map),
        npz_labels=args.npz_labels,
        report_dir=Path(args.report) if args.report else None, progress=not args.no_progress,
        command="fer-bench " + shlex.join(argv))


def print_report(report: Dict) -> None:
    settings, env = report["settings"], report["env"]
    load_samples = {when: env.get("load_average_" + when.replace(" ", "_")) for when in ("before timing", "after timing")}
    print(f"\nfer-bench: {len(report['models'])} model(s) timed round-robin; latency on {settings['latency_faces']}; "
          f"{settings['iterations'] or 'duration-bound'} iterations per batch after {settings['warmup']} warm-up calls")
    print(load_lines(load_samples, env["cores_available"]) + "\n")
    print(markdown_table(report["models"], settings["batches"]))
    if report["warnings"]:
        print("\n" + warning_lines(report["warnings"]))
    if report.get("written"):
        print(f"\nreport: {', '.join(report['written'])}")


def run(args: argparse.Namespace, argv: List[str]) -> int:
    print_report(run_benchmark(bench_options(args, argv)))
    return 0


def _body(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.pipeline:
        return pipeline_bench.run(args)
    if args.triton:
        if args.engine or args.backend:
            raise UsageError("--triton measures one .onnx in-process against the same model on the server; "
                             "--engine and --backend do not apply (run them in a separate fer-bench)")
        return triton_bench.run(args, argv)
    return run(args, argv)


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli("fer-bench", _body, argv, interrupted="interrupted; no report written")


if __name__ == "__main__":
    sys.exit(main())
