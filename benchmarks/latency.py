"""The one latency summary of every fer-edge benchmark, and the interleaved timing loop fer-bench uses.

`summarize(samples_ms, batch)` is backend-agnostic: the ONNX Runtime path, the TensorRT GPU-side stages
(gpu_check), the pipeline, INT8 and runtime-overhead benchmarks all turn lists of per-call milliseconds into
the same block, computed and named as trtexec reports it (TensorRT samples/common/sampleReporting.cpp):
min, max, mean, median, percentiles 90/95/99 (all ms), cv_percent (population std / mean x 100; trtexec warns
above 2.5 %), n (samples) and throughput_ips (images per second).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

SUMMARY_PERCENTILES = (90, 95, 99)
# The keys of every summary, in report order (report.csv's statistic columns).
SUMMARY_KEYS = ("min", "max", "mean", "median", *(f"p{p}" for p in SUMMARY_PERCENTILES), "cv_percent", "n",
                "throughput_ips")
MIN_ITERATIONS = 10  # trtexec's floor when a duration is given
DEFAULT_FACE_SIZE = 48  # FER-2013 crops are 48x48


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """trtexec's percentile on ascending timings: sorted[max(n - 1 - int((1 - p/100) * n), 0)].

    trtexec (samples/common/sampleReporting.cpp) does this arithmetic in 32-bit float, which decides the
    rank at the edges (p99 of 100 samples is the maximum); float32 here keeps our numbers identical to its.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} must be between 0 and 100")
    n = len(sorted_ms)
    exclude = int((np.float32(1) - np.float32(p) / np.float32(100)) * np.float32(n))
    return float(sorted_ms[max(n - 1 - exclude, 0)])


def median(sorted_ms: Sequence[float]) -> float:
    """trtexec's median: the middle value, or the mean of the two middle values for an even count."""
    n = len(sorted_ms)
    mid = n // 2
    return float(sorted_ms[mid]) if n % 2 else float((sorted_ms[mid - 1] + sorted_ms[mid]) / 2.0)


def coefficient_of_variation(values: Sequence[float], mean: float) -> float:
    """trtexec's CV in percent: population standard deviation / mean x 100."""
    if mean <= 0:
        return 0.0
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean * 100.0


def summarize(samples_ms, batch: int = 1) -> Dict[str, float]:
    """Per-call milliseconds for calls of `batch` images -> the summary every report uses (keys: SUMMARY_KEYS).

    throughput_ips = images per second over the summed call times (trtexec's qps x batch, for
    back-to-back synchronous calls).
    """
    ordered = sorted(float(s) for s in samples_ms)
    if not ordered:
        raise ValueError("summarize() needs at least one timing sample")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    total_ms = sum(ordered)
    mean = total_ms / len(ordered)
    summary = {"min": ordered[0], "max": ordered[-1], "mean": mean, "median": median(ordered)}
    summary.update({f"p{p}": percentile(ordered, p) for p in SUMMARY_PERCENTILES})
    summary.update(cv_percent=coefficient_of_variation(ordered, mean), n=len(ordered),
                   throughput_ips=(batch * len(ordered) * 1000.0 / total_ms) if total_ms > 0 else math.inf)
    return summary


def run_interleaved(calls: Dict[str, Callable[[], Optional[Dict[str, float]]]], warmup: int,
                    iterations: Optional[int] = None, duration_s: Optional[float] = None,
                    progress=None, block: int = 1, settle: int = 0) -> Dict[str, List[float]]:
    """Call each function in turn, round after round, and collect milliseconds per name.

    Interleaving puts every variant under the same machine noise, so their ratios are fair on a
    shared, busy host. A call may return a dict of stage -> ms (e.g. GPU-side timings); those stages
    are collected too, under their own names. Stop after `iterations` rounds, or once `duration_s`
    seconds of rounds have run (at least MIN_ITERATIONS).

    With `block` > 1 each round calls every function `block` times in a row and drops the first `settle`
    timings of each block: runtimes whose idle threads spin-wait (ONNX Runtime, OpenMP) then run with their
    default settings without their spinning threads being timed against the next runtime's first calls.
    """
    if (iterations is None) == (duration_s is None):
        raise ValueError("give exactly one of iterations or duration_s")
    if block < 1 or not 0 <= settle < block:
        raise ValueError(f"need block >= 1 and 0 <= settle < block, got block={block}, settle={settle}")
    for _ in range(max(0, warmup)):
        for fn in calls.values():
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    rounds = 0
    while True:
        for name, fn in calls.items():
            for call in range(block):
                t0 = time.perf_counter()
                stages = fn()
                wall_ms = (time.perf_counter() - t0) * 1000.0
                if call < settle:
                    continue
                stages = dict(stages or {})
                # A backend-reported value under the call's own name replaces the host wall time.
                samples[name].append(float(stages.pop(name, wall_ms)))
                for stage, ms in stages.items():
                    samples.setdefault(stage, []).append(float(ms))
        rounds += 1
        if progress is not None:
            progress.update(1)
        if iterations is not None and rounds >= iterations:
            break
        if duration_s is not None and rounds >= MIN_ITERATIONS and time.perf_counter() - started >= duration_s:
            break
    return samples


def latency_faces(count: int, images=None, size: int = DEFAULT_FACE_SIZE, seed: int = 0) -> List[np.ndarray]:
    """`count` uint8 crops: the first ones of `images` (cycled when fewer), else random gray size x size."""
    if images is not None and len(images) > 0:
        return [np.asarray(images[i % len(images)]) for i in range(count)]
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (count, size, size), dtype=np.uint8))


def discard(_result) -> None:
    return None


# Round-robin blocks across models: each round runs BLOCK_CALLS timed calls per model and stage, after
# SETTLE_CALLS untimed ones. ONNX Runtime's idle intra-op threads spin-wait after a call by default, so the first
# call after switching sessions would be timed against the previous session's spinning threads.
BLOCK_CALLS = 5
SETTLE_CALLS = 1


def _stage_key(position: int, stage: str) -> str:
    return f"{position}/{stage}"


def _model_calls(position: int, model, faces: List[np.ndarray], batch: int) -> Dict[str, Callable]:
    """end_to_end and inference calls of one model at one batch size, named '<position>/<stage>'.

    When the backend offers `timed_run(tensor)` its stages are renamed the same way, so two TensorRT models'
    'gpu_compute' stages stay apart.
    """
    crops = faces[:batch] if len(faces) >= batch else latency_faces(batch, faces)
    tensor = model.preprocess(crops)
    timed_run = getattr(model.backend, "timed_run", None)
    use_timed = timed_run is not None and not (model.max_batch and batch > model.max_batch)
    if use_timed:
        def infer_call(t=tensor):
            return {_stage_key(position, stage): ms for stage, ms in (timed_run(t) or {}).items()}
    else:
        def infer_call(t=tensor):
            return discard(model.infer(t))
    return {_stage_key(position, "end_to_end"): lambda c=crops: discard(model.predict_proba(c)),
            _stage_key(position, "inference"): infer_call}


def block_calls_for(iterations: Optional[int]) -> int:
    """Timed calls per block: BLOCK_CALLS, fewer when fewer iterations were asked for."""
    return min(BLOCK_CALLS, iterations) if iterations else BLOCK_CALLS


def timed_rounds(iterations: Optional[int]) -> Optional[int]:
    """Rounds that give at least `iterations` timings per model and stage (None: duration-bound)."""
    return None if iterations is None else -(-iterations // block_calls_for(iterations))


def measure_models(models: Sequence, faces: List[np.ndarray], batches: Sequence[int], warmup: int,
                   iterations: Optional[int] = None, duration_s: Optional[float] = None,
                   progress=None) -> List[Dict[str, Dict[str, Dict[str, float]]]]:
    """Latency of every model, timed round-robin so all of them see the same machine load.

    Per batch size, each round runs, model after model, a block of end_to_end calls then a block of inference
    calls (SETTLE_CALLS untimed, then up to BLOCK_CALLS timed). With `iterations`, each stage keeps exactly that
    many timings; with `duration_s`, rounds run until the batch size has used that many seconds in total.
    Returns one dict per model: latency[str(batch)] = {"end_to_end": summary, "inference": summary, <stages>: summary}.

    end_to_end: model.predict_proba on uint8 crops (preprocess + infer + softmax).
    inference: model.infer on an already prepared tensor. When the backend offers `timed_run(tensor)`
    (TensorRT: dict of stage -> ms for one call, e.g. GPU compute, H2D, D2H), it is called instead of
    `infer` and each stage gets its own summary; "inference" is then the stage of that name if the
    backend reports one, else the host wall time of the timed_run call.
    """
    block_calls = block_calls_for(iterations)
    results: List[Dict[str, Dict[str, Dict[str, float]]]] = [{} for _ in models]
    for batch in batches:
        calls: Dict[str, Callable] = {}
        for position, model in enumerate(models):
            calls.update(_model_calls(position, model, faces, batch))
        samples = run_interleaved(calls, warmup, timed_rounds(iterations), duration_s, progress,
                                  block=block_calls + SETTLE_CALLS, settle=SETTLE_CALLS)
        for key, ms in samples.items():
            position, stage = key.split("/", 1)
            kept = ms[:iterations] if iterations else ms
            results[int(position)].setdefault(str(batch), {})[stage] = summarize(kept, batch)
    return results


def measure_model(model, faces: List[np.ndarray], batches: Sequence[int], warmup: int,
                  iterations: Optional[int] = None, duration_s: Optional[float] = None,
                  progress=None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """measure_models for one model: latency[str(batch)] = {"end_to_end": summary, "inference": summary, ...}."""
    return measure_models([model], faces, batches, warmup, iterations, duration_s, progress)[0]
