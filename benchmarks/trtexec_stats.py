"""Latency statistics computed exactly as trtexec reports them, so fer-bench numbers compare with trtexec's.

Source of the formulas: TensorRT samples/common/sampleReporting.cpp (see docs/tensorrt.md). Percentile and
median come from benchmarks/latency.py, shared with every other fer-bench report.
  CV           -> population std / mean * 100 (trtexec warns above 2.5 %)
Stage names follow trtexec: h2d ("H2D Latency"), gpu_compute ("GPU Compute Time"), d2h ("D2H Latency"),
host_latency ("Latency" = h2d + gpu_compute + d2h) and inference (host wall time per call).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Sequence

from fer_edge.benchmarks.latency import median, percentile  # the one implementation of trtexec's percentile and median

DEFAULT_PERCENTILES = (90, 95, 99)
STAGES = ("h2d", "gpu_compute", "d2h", "host_latency", "inference")
STAGE_TITLES = {"h2d": "H2D Latency", "gpu_compute": "GPU Compute Time", "d2h": "D2H Latency",
                "host_latency": "Latency (H2D+compute+D2H)", "inference": "Wall time per call"}
UNSTABLE_CV_PERCENT = 2.5


def summarize(samples: Iterable[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Dict[str, float]:
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("no timing samples to summarise")
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / n
    out = {"n": n, "min": values[0], "max": values[-1], "mean": mean, "median": median(values),
           "cv_percent": (math.sqrt(variance) / mean * 100.0) if mean > 0 else 0.0}
    for p in percentiles:
        out[f"p{p:g}"] = percentile(values, p)
    return out


def summarize_stages(runs: List[Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """timed_run() results -> {stage: summary} for every stage present in all runs."""
    if not runs:
        raise ValueError("no timed runs to summarise")
    stages = [s for s in runs[0] if all(s in r for r in runs)]
    return {stage: summarize(r[stage] for r in runs) for stage in stages}


def throughput_qps(queries: int, batch: int, total_walltime_ms: float) -> float:
    """trtexec's Throughput: queries x batch / total host walltime."""
    return queries * batch / (total_walltime_ms / 1e3) if total_walltime_ms > 0 else math.inf


def warnings_for(summary: Mapping[str, Mapping[str, float]]) -> List[str]:
    """trtexec-style advice: unstable GPU time, transfer-bound, launch-bound."""
    notes = []
    compute = summary.get("gpu_compute")
    if compute is None:
        return notes
    if compute["cv_percent"] > UNSTABLE_CV_PERCENT:
        notes.append(f"GPU compute time is unstable (CV {compute['cv_percent']:.1f}% > {UNSTABLE_CV_PERCENT}%): "
                     "lock clocks (jetson_clocks / nvidia-smi -lgc) and run longer")
    for stage in ("h2d", "d2h"):
        if stage in summary and summary[stage]["median"] >= compute["median"]:
            notes.append(f"median {STAGE_TITLES[stage]} >= median GPU compute: the run is bound by data transfers")
    if "inference" in summary and "host_latency" in summary and \
            summary["inference"]["median"] > 1.5 * summary["host_latency"]["median"]:
        notes.append("host wall time exceeds 1.5x the GPU-side latency: Python/launch overhead dominates "
                     "(CUDA graphs, spin-wait or a bigger batch help)")
    return notes


def markdown_table(summary: Mapping[str, Mapping[str, float]], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> str:
    cols = ["min", "median", "mean"] + [f"p{p:g}" for p in percentiles] + ["max", "cv_percent"]
    lines = ["| stage (ms) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stage in STAGES:
        if stage in summary:
            row = summary[stage]
            lines.append(f"| {STAGE_TITLES[stage]} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)
