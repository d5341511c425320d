"""Which artifact and backend a CPU kiosk should use: ONNX Runtime and OpenVINO, each running the FP32 and the
gated INT8 Q/DQ artifact, timed side by side in one run, with accuracy and agreement with FP32.

    python -m fer_edge.benchmarks.cpu_backends --fp32 fer-artifacts/<name>_fp32.onnx \\
        --int8 fer-artifacts/<name>_int8.onnx --iterations 300 --out benchmarks/results/cpu_backends_<cpu>

Latency and accuracy are fer-bench's own measurement (`fer_bench.run_benchmark` with `--backend`): every
artifact x backend pair is timed round-robin in one run (blocks of calls, the first of each dropped), so all
see the same machine load. faces/s = batch / p50 latency; ratios are against ONNX Runtime FP32 in the same run.
Accuracy: top-1 on --data (default: FER-2013 PublicTest from ../shared), top-1 agreement with ONNX Runtime
FP32 on --data and on real faces from outside FER-2013 (scikit-image's LFW subset: 100 faces, 25x25 gray).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from fer_edge.benchmarks.compare_torch_ort import parse_ints
from fer_edge.benchmarks.fer_bench import BenchOptions, model_backends, run_benchmark
from fer_edge.benchmarks.report import add_timing_arguments, publish_result, warning_lines
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.data.metrics import agreement, predict_all
from fer_edge.data.paths import fer2013_dir
from fer_edge.runtime.errors import DataError
from fer_edge.runtime.model import ONNX_BACKENDS, load

PROG = "python -m fer_edge.benchmarks.cpu_backends"
# Issue #12's targets: INT8 on the best CPU backend against ONNX Runtime FP32, faces/s, per batch size.
TARGET_SPEEDUP = {1: 1.5, 8: 1.7}
LFW_FACES = 100     # lfw_subset(): the first 100 images are faces, the other 100 are not


def lfw_faces() -> Optional[np.ndarray]:
    """The LFW subset's faces as uint8 gray crops, or None without scikit-image (its data ships in the wheel)."""
    try:
        from skimage.data import lfw_subset
    except ImportError:
        return None
    faces = lfw_subset()[:LFW_FACES]
    # documented as uint8, returned as float64 in [0, 1] by scikit-image 0.26: accept both
    return faces if faces.dtype == np.uint8 else np.round(np.clip(faces, 0, 1) * 255).astype(np.uint8)


def agreement_on(faces: np.ndarray, pairs, threads: Optional[int]) -> List[Optional[float]]:
    """Top-1 agreement of every (artifact, backend) pair with the first one, on `faces`."""
    results, reference = [], None
    for path, backend in pairs:
        with load(path, threads=threads, backend=backend) as model:
            predictions = predict_all(model, faces)
            reference = reference or (model.labels, predictions)
            results.append(agreement(reference[0], reference[1], model.labels, predictions))
    return results


def faces_per_second(entry: Dict, batch: int, stage: str) -> Optional[float]:
    stats = entry["latency"].get(str(batch), {}).get(stage)
    return batch * 1000.0 / stats["median"] if stats else None


def make_rows(report: Dict, lfw: List[Optional[float]]) -> List[Dict]:
    """One row per artifact x backend: accuracy, agreement, and per batch p50, faces/s and the ratio to row 0."""
    entries, batches = report["models"], report["settings"]["batches"]
    rows = []
    for entry, lfw_agreement in zip(entries, lfw):
        accuracy = entry.get("accuracy") or {}
        row = {"artifact": entry["path"], "precision": entry["precision"], "backend": entry["backend"],
               "top1": accuracy.get("top1"), "agreement_data": entry["agreement_with_reference"],
               "agreement_lfw": lfw_agreement, "bench_settings": entry["bench_settings"], "batches": {}}
        for batch in batches:
            stages = {}
            for stage in ("end_to_end", "inference"):
                ips, base = faces_per_second(entry, batch, stage), faces_per_second(entries[0], batch, stage)
                stats = entry["latency"][str(batch)][stage]
                stages[stage] = {"p50_ms": round(stats["median"], 3), "p99_ms": round(stats["p99"], 3),
                                 "faces_per_s": round(ips, 1), "ratio": round(ips / base, 3)}
            row["batches"][str(batch)] = stages
        rows.append(row)
    return rows


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(rows: List[Dict], batches: List[int]) -> str:
    head = ["Artifact", "Backend", "Top-1 (data)", "Agreement w/ ORT FP32 (data)", "Agreement w/ ORT FP32 (LFW)"]
    for b in batches:
        head += [f"e2e p50 ms (b{b})", f"faces/s (b{b})", f"x ORT FP32 e2e (b{b})", f"x ORT FP32 infer (b{b})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        cells = [f"{row['precision'].upper()} `{row['artifact']}`", row["backend"], _pct(row["top1"]),
                 _pct(row["agreement_data"]), _pct(row["agreement_lfw"])]
        for b in batches:
            e2e, infer = row["batches"][str(b)]["end_to_end"], row["batches"][str(b)]["inference"]
            cells += [f"{e2e['p50_ms']:.2f}", f"{e2e['faces_per_s']:.0f}", f"{e2e['ratio']:.2f}x",
                      f"{infer['ratio']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: List[Dict], batches: List[int]) -> str:
    """The fastest INT8 artifact x backend (end-to-end faces/s summed over batch sizes) against the targets."""
    int8 = [r for r in rows if r["precision"] == "int8"]
    if not int8:
        return "no INT8 row was measured"
    best = max(int8, key=lambda r: sum(r["batches"][str(b)]["end_to_end"]["faces_per_s"] for b in batches))
    parts = []
    for b in batches:
        ratio = best["batches"][str(b)]["end_to_end"]["ratio"]
        target = TARGET_SPEEDUP.get(b)
        met = "" if target is None else f" ({'meets' if ratio >= target else 'MISSES'} the {target}x target)"
        parts.append(f"{ratio:.2f}x at batch {b}{met}")
    return (f"INT8 `{best['artifact']}` on {best['backend']} gives {', '.join(parts)} the end-to-end faces/s of ONNX Runtime FP32 "
            f"in the same run, with top-1 {_pct(best['top1'])} (ORT FP32 {_pct(rows[0]['top1'])}) and agreement "
            f"with ORT FP32 {_pct(best['agreement_data'])} on the data, {_pct(best['agreement_lfw'])} on LFW faces.")


def build_parser():
    parser = new_parser(PROG, description=__doc__)
    parser.add_argument("--fp32", required=True, help="FP32 ONNX artifact written by fer-export")
    parser.add_argument("--int8", required=True, action="append",
                        help="its INT8 Q/DQ artifact (fer-export --int8); repeat to compare INT8 recipes in one run")
    parser.add_argument("--backends", default=",".join(ONNX_BACKENDS),
                        help=f"comma list, the reference's first (default {','.join(ONNX_BACKENDS)})")
    parser.add_argument("--data", help="labelled faces for top-1 (default: FER-2013 PublicTest npz from ../shared)")
    parser.add_argument("--limit", type=int, help="use only the first N faces of --data")
    add_timing_arguments(parser, warmup=10, iterations=200, batch="1,8", threads=1)
    return parser


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    data = Path(args.data) if args.data else fer2013_dir() / "fer2013_publictest.npz"
    if not data.exists():
        raise DataError(f"{data}: no such file; pass --data (labelled faces: npz, csv or image folder), or set "
                        "FER_EDGE_SHARED to the folder that holds data/fer2013/")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if backends[:1] != ["onnxruntime"] or any(b not in ONNX_BACKENDS for b in backends):
        raise DataError(f"--backends {args.backends}: list backends from {ONNX_BACKENDS}, onnxruntime first "
                        "(every ratio is against ONNX Runtime FP32)")
    faces = lfw_faces()
    batches = parse_ints(args.batch)
    command = f"{PROG} " + shlex.join(argv)
    options = BenchOptions(models=[args.fp32, *args.int8], backends=backends, batches=sorted(set(batches)),
                           warmup=args.warmup, iterations=args.iterations, threads=args.threads, data=str(data),
                           limit=args.limit, progress=not args.no_progress, command=command)
    report = run_benchmark(options)
    pairs = model_backends(options.models, backends)
    lfw = agreement_on(faces, pairs, args.threads) if faces is not None else [None] * len(pairs)
    rows = make_rows(report, lfw)
    lfw_note = (f"LFW: the first {LFW_FACES} faces of skimage.data.lfw_subset() (25x25 gray, scaled to the model input)"
                if faces is not None else "LFW: not measured, scikit-image is not installed (pip install scikit-image)")
    method = (f"{report['settings']['schedule']}. {args.threads} thread(s) per runtime; {args.iterations} timed calls "
              f"per model, stage and batch after {args.warmup} warm-up calls; latency crops: "
              f"{report['settings']['latency_faces']}. faces/s = batch / p50; e2e = predict_proba on uint8 crops "
              f"(preprocessing included), infer = the backend on a prepared tensor. Data: {data}"
              f"{f' (first {args.limit})' if args.limit else ''}. {lfw_note}. OpenVINO kernels per model (from the "
              f"compiled model): " + "; ".join(f"{r['precision']} {r['bench_settings'].get('kernels')}"
                                               for r in rows if r["backend"] == "openvino") + ".")
    table = markdown(rows, options.batches)
    if report["warnings"]:
        table += "\n\n" + warning_lines(report["warnings"])
    publish_result("CPU backends: ONNX Runtime vs OpenVINO, FP32 vs INT8", report["env"], method, table,
                   verdict(rows, options.batches), rows, args.out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
