"""fer-bench: latency (end-to-end and inference-only) and accuracy of fer-edge artifacts, side by side."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

from fer_edge.benchmarks.latency import (BLOCK_CALLS, DEFAULT_FACE_SIZE, SETTLE_CALLS, latency_faces,
                                         measure_models, timed_rounds)
from fer_edge.benchmarks.plots import write_confusion_png
from fer_edge.benchmarks.report import (available_cores, environment, load_average, markdown_table, timing_warnings,
                                        warning_lines, write_report)
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.data.datasets import UNKNOWN_CLASS_POLICIES, dropped_summary, load_faces
from fer_edge.data.labels import parse_label_map
from fer_edge.data.metrics import agreement, classification_metrics, predict_all
from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError
from fer_edge.runtime.model import load


DEFAULT_BATCHES = "1,32"
DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 50
PIPELINE_MODULE = "fer_edge.benchmarks.pipeline_bench"

EXAMPLES = """examples:
  fer-bench fer-artifacts/model_fp32.onnx fer-artifacts/model_fp16.onnx
  fer-bench a_fp32.onnx b_int8.onnx --data ../shared/data/fer2013/fer2013_publictest.npz --report bench/
  fer-bench a_fp32.onnx --data fer2013.csv --split PublicTest --limit 1000 --batch 1,8,32 --threads 2
  fer-bench a_fp32.onnx --engine a_fp16.engine --duration 3 --warmup 20
  fer-bench a_fp32.onnx --data ckplus_folders/ --unknown-classes drop      # skip e.g. 'contempt' faces
  fer-bench a_fp32.onnx --data ckplus_folders/ --label-map contempt=neutral

The FIRST model is the reference for top-1 agreement. Latency uses real crops from --data when given,
else random uint8 48x48 crops; all models are timed round-robin in blocks, so they share the machine's load.
A WARNING line (and report.json "warnings") flags a busy machine (1-minute load average above the available
cores, before or after timing) and impossible orderings (a stage slower than end-to-end).
Exit code 2 on bad input (missing file, unknown format, bad --batch, out-of-range labels, classes the model lacks).
"""


class UsageError(FerEdgeError):
    """A command-line value that cannot work; reported as one line with exit code 2."""


def _pipeline_module():
    """benchmarks/pipeline_bench.py (fer-bench --pipeline) when it exists; None until it is written."""
    import importlib
    try:
        return importlib.import_module(PIPELINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PIPELINE_MODULE:  # a missing dependency *inside* the module is a real error
            raise
        return None


def build_parser(pipeline=None) -> argparse.ArgumentParser:
    parser = new_parser("fer-bench", description=__doc__, epilog=EXAMPLES)
    models = parser.add_argument_group("models (order: MODEL arguments, then --model, then --engine; the first is the reference)")
    models.add_argument("models", nargs="*", metavar="MODEL", help=".onnx or TensorRT .engine/.plan artifacts")
    models.add_argument("--model", action="append", default=[], metavar="PATH", help="add an artifact (repeatable)")
    models.add_argument("--engine", action="append", default=[], metavar="PATH",
                        help="add a TensorRT engine (repeatable; same as --model)")
    models.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")

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
    acc.add_argument("--label-map", metavar="CLASS=LABEL[,...]",
                     help="score dataset classes as model labels, e.g. contempt=neutral (applied before --unknown-classes)")

    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="DIR", help="write DIR/report.json, DIR/report.csv and confusion PNGs")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    if pipeline is not None:
        pipeline.add_arguments(parser)
    return parser


def parse_batches(text: str) -> List[int]:
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise UsageError(f"--batch {text!r}: give positive integers separated by commas, e.g. --batch 1,8,32")
    return sorted(set(batches))


def _check_args(args) -> List[str]:
    paths = [*args.models, *args.model, *args.engine]
    if not paths:
        raise UsageError("no models given: fer-bench MODEL [MODEL ...] (see fer-bench --help)")
    for name in ("warmup", "iterations", "limit", "eval_batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be {'>= 0' if name == 'warmup' else '>= 1'}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration}: must be a positive number of seconds")
    for flag, given in (("--split", args.split), ("--label-map", args.label_map),
                        ("--unknown-classes drop", args.unknown_classes != "error")):
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


def _model_entry(model, bench_settings: Dict) -> Dict:
    return {"path": str(model.path), "precision": model.precision, "backend": model.backend.name,
            "size_mb": model.path.stat().st_size / 1e6, "labels": model.labels,
            "input": [model.contract.channels, model.contract.input_size, model.contract.input_size],
            "bench_settings": bench_settings, "latency": {}, "accuracy": None, "agreement_with_reference": None}


def _data_notes(faces) -> List[str]:
    """What reading --data left out or renamed, for the printed output."""
    notes = []
    if faces.dropped:
        notes.append(f"{faces.source}: {dropped_summary(faces.dropped)} (--unknown-classes drop)")
    if faces.mapped:
        renamed = ", ".join(f"{name} ({count})" for name, count in faces.mapped.items())
        notes.append(f"{faces.source}: scored by --label-map: {renamed}")
    return notes


def _accuracy_entry(faces, predictions, model, position: int, report_dir: Optional[Path]) -> Dict:
    metrics = classification_metrics(faces.targets, predictions, model.labels)
    metrics.update(data=faces.source, dropped_faces=sum(faces.dropped.values()), dropped_classes=dict(faces.dropped),
                   mapped_classes=dict(faces.mapped), confusion_png=None)
    if report_dir is not None:
        png = report_dir / f"confusion_{position}_{model.path.stem}.png"
        write_confusion_png(png, metrics["confusion_matrix"], model.labels,
                            f"{model.path.name} ({model.precision}) on {faces.source}")
        metrics["confusion_png"] = png.name
    return metrics


def _evaluate(models, entries, args, label_map: Optional[Dict[str, str]], report_dir: Optional[Path],
              progress: bool) -> Optional[object]:
    """Accuracy of every model on --data; returns the faces (reused as latency crops)."""
    cache, reference = {}, None
    for position, (model, entry) in enumerate(zip(models, entries)):
        key = tuple(model.labels)
        if key not in cache:  # models with another label order get the targets in their own order
            cache[key] = load_faces(args.data, labels=model.labels, split=args.split, limit=args.limit,
                                    label_map=label_map, unknown_classes=args.unknown_classes)
            for note in _data_notes(cache[key]):
                print(note)
        faces = cache[key]
        with tqdm(total=len(faces), desc=f"accuracy {model.path.name}", unit="face", disable=not progress,
                  leave=False) as bar:
            predictions = predict_all(model, faces.images, args.eval_batch, bar)
        if faces.labelled:
            entry["accuracy"] = _accuracy_entry(faces, predictions, model, position, report_dir)
        if reference is None:
            reference = (model.labels, predictions)
        entry["agreement_with_reference"] = agreement(reference[0], reference[1], model.labels, predictions)
    return next(iter(cache.values()))


def _load(path: str, threads: Optional[int]):
    try:
        return load(path, threads=threads)
    except ModuleNotFoundError as exc:
        if exc.name != "fer_edge.runtime.tensorrt.backend":
            raise
        raise BackendUnavailableError(f"{path}: this fer-edge install has no TensorRT backend "
                                      "(fer_edge.runtime.tensorrt.backend is missing); benchmark the .onnx instead, "
                                      "or install a fer-edge release with TensorRT support and pip install 'fer-edge[trt]'") from None


def _load_lines(load_samples: Dict[str, Optional[List[float]]], cores: int) -> str:
    seen = "; ".join(f"{when} {sample}" for when, sample in load_samples.items() if sample) or "unavailable"
    return f"load average (1/5/15 min): {seen}; {cores} core(s) available"


def _time_models(models, entries, crops, batches, args, iterations, progress) -> Dict[str, Optional[List[float]]]:
    """Time all models round-robin; returns the load averages sampled just before and just after."""
    rounds = timed_rounds(iterations)
    before = load_average()
    with tqdm(total=len(batches) * rounds if rounds else None, desc=f"latency ({len(models)} models, round-robin)",
              unit="round", disable=not progress, leave=False) as bar:
        latencies = measure_models(models, crops, batches, args.warmup, iterations, args.duration, bar)
    after = load_average()
    for entry, latency in zip(entries, latencies):
        entry["latency"] = latency
    return {"before timing": before, "after timing": after}


def run(args, argv: List[str]) -> int:

    paths = _check_args(args)
    batches = parse_batches(args.batch)
    label_map = parse_label_map_option(args.label_map)  # a malformed map fails before any model loads
    iterations = None if args.duration else (args.iterations or DEFAULT_ITERATIONS)
    progress = not args.no_progress
    # Load everything first: a missing or broken artifact fails in seconds, not after the first model's run.
    models = [_load(p, args.threads) for p in paths]
    entries = [_model_entry(m, dict(getattr(m.backend, "bench_settings", {}) or {})) for m in models]
    report_dir = Path(args.report) if args.report else None

    faces = _evaluate(models, entries, args, label_map, report_dir, progress) if args.data else None
    crop_source = (f"real crops from {faces.source}" if faces is not None
                   else f"random uint8 {DEFAULT_FACE_SIZE}x{DEFAULT_FACE_SIZE} gray crops (no --data)")
    crops = latency_faces(max(batches), faces.images if faces is not None else None)
    load_samples = _time_models(models, entries, crops, batches, args, iterations, progress)

    cores = available_cores()
    warnings = timing_warnings(load_samples, cores, entries)
    settings = {"batches": batches, "warmup": args.warmup, "iterations": iterations, "duration_s": args.duration,
                "threads": args.threads, "latency_faces": crop_source, "data": args.data, "split": args.split,
                "limit": args.limit, "eval_batch": args.eval_batch, "reference": str(models[0].path),
                "unknown_classes": args.unknown_classes, "label_map": label_map,
                "schedule": (f"models timed round-robin: per batch size, each round runs every model in turn, a block "
                             f"of end_to_end calls then a block of inference calls ({SETTLE_CALLS} untimed + up to "
                             f"{BLOCK_CALLS} timed each, so one session's spin-waiting threads are not timed against "
                             "the next); one synchronous call at a time")}
    env = environment("fer-bench " + shlex.join(argv))
    env.update({"load_average_" + when.replace(" ", "_"): sample for when, sample in load_samples.items()})
    report = {"env": env, "settings": settings, "models": entries, "warnings": warnings}
    print(f"\nfer-bench: {len(models)} model(s) timed round-robin; latency on {crop_source}; "
          f"{iterations or 'duration-bound'} iterations per batch after {args.warmup} warm-up calls")
    print(_load_lines(load_samples, cores) + "\n")
    print(markdown_table(entries, batches))
    if warnings:
        print("\n" + warning_lines(warnings))
    if report_dir is not None:
        written = write_report(report_dir, report)
        print(f"\nreport: {', '.join(str(p) for p in written)}")
    return 0


def _body(argv: List[str]) -> int:
    pipeline = _pipeline_module()
    args = build_parser(pipeline).parse_args(argv)
    if pipeline is not None and getattr(args, "pipeline", None):
        return pipeline.run(args)
    return run(args, argv)


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli("fer-bench", _body, argv, interrupted="interrupted; no report written")


if __name__ == "__main__":
    sys.exit(main())
