"""fer-bench's measurement: accuracy of every model on the same faces, then latency of all models round-robin.

The command line (`fer_edge.cli.bench`) turns its flags into `BenchOptions` and prints the report this returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from tqdm import tqdm

from fer_edge.benchmarks.latency import (BLOCK_CALLS, DEFAULT_FACE_SIZE, SETTLE_CALLS, latency_faces,
                                         measure_models, timed_rounds)
from fer_edge.benchmarks.plots import write_confusion_png
from fer_edge.benchmarks.report import (available_cores, environment, load_average, timing_warnings,
                                        write_report)
from fer_edge.data.datasets import dropped_summary, load_faces
from fer_edge.data.metrics import agreement, classification_metrics, predict_all
from fer_edge.runtime.model import load


@dataclass
class BenchOptions:
    """What fer-bench measures; the CLI checks each value before building this."""
    models: List[str]
    batches: List[int]
    backends: Optional[List[str]] = None        # each .onnx runs on every one of these; None: its default backend
    warmup: int = 10
    iterations: Optional[int] = 50              # None: duration-bound
    duration: Optional[float] = None
    threads: Optional[int] = None
    data: Optional[str] = None
    split: Optional[str] = None
    limit: Optional[int] = None
    eval_batch: int = 256
    unknown_classes: str = "error"
    npz_labels: str = "y"                       # "ferplus": score the FER+ majority vote of an npz
    label_map: Optional[Dict[str, str]] = None
    report_dir: Optional[Path] = None
    progress: bool = True
    command: str = "fer-bench"


def model_backends(paths: List[str], backends: Optional[List[str]]) -> List[Tuple[str, Optional[str]]]:
    """The (artifact, backend) pairs fer-bench loads, model by model: every .onnx once per backend, in the
    order given; other artifacts (engines) once, on their own backend."""
    if not backends:
        return [(path, None) for path in paths]
    return [(path, backend) for path in paths
            for backend in (backends if Path(path).suffix.lower() == ".onnx" else [None])]


def model_entry(model, bench_settings: Dict) -> Dict:
    return {"path": str(model.path), "precision": model.precision, "backend": model.backend.name,
            # INT8: what is not INT8 (e.g. "int8+fp16 (23/24 blocks fp16)"), from the contract's precision_mix
            "precision_label": model.contract.precision_label(), "precision_mix": model.contract.precision_mix,
            "size_mb": model.path.stat().st_size / 1e6, "labels": model.labels,
            "input": [model.contract.channels, model.contract.input_size, model.contract.input_size],
            "bench_settings": bench_settings, "latency": {}, "accuracy": None, "agreement_with_reference": None}


def data_notes(faces) -> List[str]:
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
                            f"{model.path.name} ({model.precision}, {model.backend.name}) on {faces.source}")
        metrics["confusion_png"] = png.name
    return metrics


def _evaluate(models, entries, options: "BenchOptions", log) -> Optional[object]:
    """Accuracy of every model on --data; returns the faces (reused as latency crops)."""
    cache, reference = {}, None
    for position, (model, entry) in enumerate(zip(models, entries)):
        key = tuple(model.labels)
        if key not in cache:  # models with another label order get the targets in their own order
            cache[key] = load_faces(options.data, labels=model.labels, split=options.split, limit=options.limit,
                                    label_map=options.label_map, unknown_classes=options.unknown_classes,
                                    npz_labels=options.npz_labels)
            for note in data_notes(cache[key]):
                log(note)
        faces = cache[key]
        with tqdm(total=len(faces), desc=f"accuracy {model.path.name}", unit="face", disable=not options.progress,
                  leave=False) as bar:
            predictions = predict_all(model, faces.images, options.eval_batch, bar)
        if faces.labelled:
            entry["accuracy"] = _accuracy_entry(faces, predictions, model, position, options.report_dir)
        if reference is None:
            reference = (model.labels, predictions)
        entry["agreement_with_reference"] = agreement(reference[0], reference[1], model.labels, predictions)
    return next(iter(cache.values()))


def load_lines(load_samples: Dict[str, Optional[List[float]]], cores: int) -> str:
    seen = "; ".join(f"{when} {sample}" for when, sample in load_samples.items() if sample) or "unavailable"
    return f"load average (1/5/15 min): {seen}; {cores} core(s) available"


def _time_models(models, entries, crops, options: "BenchOptions") -> Dict[str, Optional[List[float]]]:
    """Time all models round-robin; returns the load averages sampled just before and just after."""
    batches, rounds = options.batches, timed_rounds(options.iterations)
    before = load_average()
    with tqdm(total=len(batches) * rounds if rounds else None, desc=f"latency ({len(models)} models, round-robin)",
              unit="round", disable=not options.progress, leave=False) as bar:
        latencies = measure_models(models, crops, batches, options.warmup, options.iterations, options.duration, bar)
    after = load_average()
    for entry, latency in zip(entries, latencies):
        entry["latency"] = latency
    return {"before timing": before, "after timing": after}


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> Dict:
    """Load every model, score accuracy on options.data, time all models round-robin; returns the report.

    Every model loads first, so a missing or broken artifact fails in seconds, not after the first model's run."""
    models = [load(path, threads=options.threads, backend=backend)
              for path, backend in model_backends(options.models, options.backends)]
    entries = [model_entry(m, dict(getattr(m.backend, "bench_settings", {}) or {})) for m in models]
    faces = _evaluate(models, entries, options, log) if options.data else None
    crop_source = (f"real crops from {faces.source}" if faces is not None
                   else f"random uint8 {DEFAULT_FACE_SIZE}x{DEFAULT_FACE_SIZE} gray crops (no --data)")
    crops = latency_faces(max(options.batches), faces.images if faces is not None else None)
    load_samples = _time_models(models, entries, crops, options)
    cores = available_cores()
    settings = {"batches": options.batches, "warmup": options.warmup, "iterations": options.iterations,
                "duration_s": options.duration, "threads": options.threads, "latency_faces": crop_source,
                "data": options.data, "split": options.split, "limit": options.limit, "eval_batch": options.eval_batch,
                "reference": str(models[0].path), "reference_backend": models[0].backend.name,
                "backends": options.backends, "unknown_classes": options.unknown_classes,
                "npz_labels": options.npz_labels,
                "label_map": options.label_map,
                "schedule": (f"models timed round-robin: per batch size, each round runs every model in turn, a block "
                             f"of end_to_end calls then a block of inference calls ({SETTLE_CALLS} untimed + up to "
                             f"{BLOCK_CALLS} timed each, so one session's spin-waiting threads are not timed against "
                             "the next); one synchronous call at a time")}
    env = environment(options.command)
    env.update({"load_average_" + when.replace(" ", "_"): sample for when, sample in load_samples.items()})
    report = {"env": env, "settings": settings, "models": entries,
              "warnings": timing_warnings(load_samples, cores, entries)}
    if options.report_dir is not None:
        report["written"] = [str(p) for p in write_report(options.report_dir, report)]
    return report
