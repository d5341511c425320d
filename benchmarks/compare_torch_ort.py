"""ONNX Runtime vs PyTorch eager latency for the same model, interleaved in one run; prints Markdown.

    python -m fer_edge.benchmarks.compare_torch_ort                 # 48 and 96 px, batch 1 and 32, 2 threads
    python -m fer_edge.benchmarks.compare_torch_ort --sizes 48 --iterations 100 --out benchmarks/results/onnx_vs_torch

Random weights (latency does not depend on them): tf_efficientnetv2_b0, 1 channel, 7 classes, the
bundled reference model's configuration. Each round calls PyTorch then ONNX Runtime on the same
tensor, so both see the same machine noise. Needs the [export] extra (torch, timm, onnx).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from fer_edge.benchmarks.report import add_timing_arguments, environment, publish_result

TARGET_SPEEDUP_B1 = 6.0


def parse_ints(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"compare_torch_ort: {text!r} must be positive integers separated by commas, e.g. 1,32")
    return values


def no_spin_session(path: Path, threads: int):
    """ORT session like load(threads=N) but with spin-waiting off.

    Interleaved on 2 cores, ORT's idle workers would otherwise spin after each call and take the cores from
    PyTorch's next call (and PyTorch's OpenMP threads do the same to ORT). Turning ORT's spinning off can
    only make ORT slower, so the comparison stays conservative for ORT.
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def measure(sizes: List[int], batches: List[int], threads: int, warmup: int, iterations: int, progress: bool) -> List[Dict]:
    import torch
    from fer_edge.benchmarks.latency import run_interleaved, summarize
    from fer_edge.benchmarks.untrained_model import build_untrained, export_untrained
    from fer_edge.runtime.model import load
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            torch_model, contract = build_untrained(size)
            path = export_untrained(torch_model, contract, Path(tmp) / f"untrained_{size}.onnx")
            input_name = load(path, threads=threads).backend.input_name  # load() checks the artifact and contract
            session = no_spin_session(path, threads)
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
                xt = torch.from_numpy(x)
                with torch.inference_mode():
                    reference = torch_model(xt).numpy()
                    diff = float(np.abs(reference - session.run(None, {input_name: x})[0]).max())
                    scale = float(np.abs(reference).max())

                    def run_torch():
                        torch_model(xt)

                    def run_ort():
                        session.run(None, {input_name: x})

                    with tqdm(total=iterations, desc=f"{size}px b{batch}", disable=not progress, leave=False) as bar:
                        samples = run_interleaved({"pytorch": run_torch, "onnxruntime": run_ort}, warmup, iterations,
                                                  progress=bar)
                stats = {name: summarize(ms, batch) for name, ms in samples.items()}
                rows.append({"size": size, "batch": batch, "max_abs_logit_diff": diff, "max_abs_logit": scale, **stats,
                             "speedup_p50": stats["pytorch"]["p50_ms"] / stats["onnxruntime"]["p50_ms"],
                             "speedup_p90": stats["pytorch"]["p90_ms"] / stats["onnxruntime"]["p90_ms"],
                             "speedup_min": stats["pytorch"]["min_ms"] / stats["onnxruntime"]["min_ms"]})
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = ["| input | batch | ORT p50 ms | ORT p90 ms | ORT min ms | PyTorch p50 ms | PyTorch p90 ms | PyTorch min ms | "
             "speed-up p50 | speed-up p90 | speed-up min | max abs logit diff (max abs logit) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, t = r["onnxruntime"], r["pytorch"]
        lines.append(f"| {r['size']} px | {r['batch']} | {o['p50_ms']:.2f} | {o['p90_ms']:.2f} | {o['min_ms']:.2f} | "
                     f"{t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['min_ms']:.2f} | {r['speedup_p50']:.1f}x | "
                     f"{r['speedup_p90']:.1f}x | {r['speedup_min']:.1f}x | "
                     f"{r['max_abs_logit_diff']:.1e} ({r['max_abs_logit']:.1e}) |")
    return "\n".join(lines)


def verdict(rows: List[Dict]) -> str:
    b1 = [r for r in rows if r["batch"] == 1]
    if not b1:
        return "No batch-1 rows: the target (ORT >= 6x faster at batch 1) was not measured."
    parts = [f"{r['size']} px: {r['speedup_p50']:.1f}x" for r in b1]
    met = all(r["speedup_p50"] >= TARGET_SPEEDUP_B1 for r in b1)
    return (f"Target ORT >= {TARGET_SPEEDUP_B1:.0f}x faster than PyTorch eager at batch 1 (p50): "
            f"{'MET' if met else 'NOT MET'} ({'; '.join(parts)}).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_edge.benchmarks.compare_torch_ort", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="48,96", help="input sizes in px (default 48,96)")
    add_timing_arguments(parser, warmup=10, iterations=100)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    rows = measure(parse_ints(args.sizes), parse_ints(args.batch), args.threads, args.warmup, args.iterations,
                   not args.no_progress)
    env = environment("python -m fer_edge.benchmarks.compare_torch_ort " + shlex.join(argv))
    publish_result(
        "ONNX Runtime vs PyTorch eager (CPU, FP32)", env,
        f"tf_efficientnetv2_b0, 1 channel, 7 classes, **random weights** (latency does not depend on them). "
        f"{args.threads} threads for both (torch.set_num_threads, ORT intra-op; ORT spin-waiting off so its idle "
        f"workers do not take the cores from PyTorch's next call). Inference only, on the same "
        f"float32 tensor; PyTorch under inference_mode. {args.iterations} interleaved rounds "
        f"(PyTorch call, then ORT call) after {args.warmup} warm-up rounds; trtexec-style percentiles. "
        "On a shared host (see the load average) p50/p90 include time spent waiting for a CPU, which hurts "
        "PyTorch's thread pool more than ONNX Runtime's; min approximates the uncontended time.",
        markdown(rows), verdict(rows), rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
