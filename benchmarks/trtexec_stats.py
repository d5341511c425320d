"""trtexec's GPU-side stages, their throughput and advice, on top of the one latency summary (benchmarks/latency).

Source of the formulas: TensorRT samples/common/sampleReporting.cpp (see docs/tensorrt.md).
Stage names follow trtexec: h2d ("H2D Latency"), gpu_compute ("GPU Compute Time"), d2h ("D2H Latency"),
host_latency ("Latency" = h2d + gpu_compute + d2h) and inference (host wall time per call).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping

from fer_edge.benchmarks.latency import SUMMARY_PERCENTILES, summarize

TRTEXEC_STAGES = ("h2d", "gpu_compute", "d2h", "host_latency", "inference")
STAGE_TITLES = {"h2d": "H2D Latency", "gpu_compute": "GPU Compute Time", "d2h": "D2H Latency",
                "host_latency": "Latency (H2D+compute+D2H)", "inference": "Wall time per call"}
UNSTABLE_CV_PERCENT = 2.5  # trtexec's threshold for "GPU compute time is unstable"


def summarize_stages(runs: List[Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """timed_run() results -> {stage: summary} for every stage present in all runs."""
    if not runs:
        raise ValueError("no timed runs to summarise")
    stages = [s for s in runs[0] if all(s in r for r in runs)]
    return {stage: summarize([r[stage] for r in runs]) for stage in stages}


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


def stages_markdown(summary: Mapping[str, Mapping[str, float]]) -> str:
    """One row per trtexec stage present in `summary`: min, median, mean, percentiles, max and CV."""
    cols = ["min", "median", "mean"] + [f"p{p}" for p in SUMMARY_PERCENTILES] + ["max", "cv_percent"]
    lines = ["| stage (ms) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stage in TRTEXEC_STAGES:
        if stage in summary:
            row = summary[stage]
            lines.append(f"| {STAGE_TITLES[stage]} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)
