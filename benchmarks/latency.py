"""Latency statistics shared by every backend, and the interleaved timing loop fer-bench uses.

`summarize(samples_ms, batch)` is backend-agnostic: the ONNX Runtime path, the TensorRT GPU-side
stages and the pipeline benchmark all turn lists of per-call milliseconds into the same stats block,
named like trtexec's report (min, max, mean, median = p50, percentile 90/95/99, throughput).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

STAT_KEYS = ("mean_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "throughput_ips", "iterations")
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


def summarize(samples_ms: Sequence[float], batch: int) -> Dict[str, float]:
    """Per-call milliseconds for calls of `batch` images -> the stats block used in every report.

    throughput_ips = images per second over the summed call times (trtexec's qps x batch, for
    back-to-back synchronous calls).
    """
    if len(samples_ms) == 0:
        raise ValueError("summarize() needs at least one timing sample")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    ordered = sorted(float(s) for s in samples_ms)
    total_ms = float(sum(ordered))
    return {
        "mean_ms": total_ms / len(ordered),
        "min_ms": ordered[0],
        "p50_ms": median(ordered),
        "p90_ms": percentile(ordered, 90),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1],
        "throughput_ips": (batch * len(ordered) * 1000.0 / total_ms) if total_ms > 0 else float("inf"),
        "iterations": len(ordered),
    }


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
    Returns one dict per model: latency[str(batch)] = {"end_to_end": stats, "inference": stats, <stages>: stats}.

    end_to_end: model.predict_proba on uint8 crops (preprocess + infer + softmax).
    inference: model.infer on an already prepared tensor. When the backend offers `timed_run(tensor)`
    (TensorRT: dict of stage -> ms for one call, e.g. GPU compute, H2D, D2H), it is called instead of
    `infer` and each stage gets its own stats block; "inference" is then the stage of that name if the
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
    """measure_models for one model: latency[str(batch)] = {"end_to_end": stats, "inference": stats, ...}."""
    return measure_models([model], faces, batches, warmup, iterations, duration_s, progress)[0]
