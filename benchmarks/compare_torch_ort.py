"""ONNX Runtime vs PyTorch eager latency for the same model, interleaved in one run; prints Markdown.

    python -m fer_edge.benchmarks.compare_torch_ort                 # 48 and 96 px, batch 1 and 32, 2 threads
    python -m fer_edge.benchmarks.compare_torch_ort --sizes 48 --out benchmarks/results/onnx_vs_torch

Random weights (latency does not depend on them): tf_efficientnetv2_b0, 1 channel, 7 classes, the
bundled reference model's configuration. Each round runs a block of PyTorch calls then a block of
ONNX Runtime calls on the same tensor, so both see the same machine noise, and drops the first calls
of each block (see latency.run_interleaved). Needs the [export] extra (torch, timm, onnx).
"""
from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from fer_edge.benchmarks.latency import run_interleaved, summarize
from fer_edge.benchmarks.report import add_timing_arguments, environment, publish_result
from fer_edge.benchmarks.untrained_model import build_untrained, export_untrained
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.runtime.model import load
from fer_edge.runtime.onnx_backend import ort_session as runtime_session


TARGET_SPEEDUP_B1 = 6.0


def parse_ints(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"compare_torch_ort: {text!r} must be positive integers separated by commas, e.g. 1,32")
    return values


def benchmark_session(path: Path, threads: int, spin: bool):
    """The session load(threads=N) builds (default ONNX Runtime settings), or the same with spin-waiting off."""
    if spin:
        backend = load(path, threads=threads).backend
        return backend.session, backend.input_name
    # --no-ort-spin: the user asked for ONNX Runtime without idle threads spin-waiting, off the runtime's default.
    session = runtime_session(path, threads, spin_wait=False)
    return session, session.get_inputs()[0].name


def block_size(batch: int, calls_at_batch1: int) -> int:
    """Calls per block: enough that the dropped first calls are a small share, few enough to keep rounds interleaved."""
    return calls_at_batch1 if batch == 1 else max(2, calls_at_batch1 // 8)


def measure(sizes: List[int], batches: List[int], threads: int, warmup: int, iterations: int, progress: bool,
            spin: bool = True, settle: int = 5, block_b1: int = 40) -> List[Dict]:
    import torch
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            torch_model, contract = build_untrained(size)
            path = export_untrained(torch_model, contract, Path(tmp) / f"untrained_{size}.onnx")
            session, input_name = benchmark_session(path, threads, spin)
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

                    block = block_size(batch, block_b1)
                    with tqdm(total=iterations, desc=f"{size}px b{batch}", disable=not progress, leave=False) as bar:
                        samples = run_interleaved({"pytorch": run_torch, "onnxruntime": run_ort}, warmup, iterations,
                                                  progress=bar, block=block, settle=min(settle, block - 1))
                stats = {name: summarize(ms, batch) for name, ms in samples.items()}
                rows.append({"size": size, "batch": batch, "block": block, "max_abs_logit_diff": diff,
                             "max_abs_logit": scale, **stats,
                             "speedup_p50": stats["pytorch"]["median"] / stats["onnxruntime"]["median"],
                             "speedup_p90": stats["pytorch"]["p90"] / stats["onnxruntime"]["p90"],
                             "speedup_min": stats["pytorch"]["min"] / stats["onnxruntime"]["min"]})
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = ["| input | batch | ORT p50 ms | ORT p90 ms | ORT min ms | PyTorch p50 ms | PyTorch p90 ms | PyTorch min ms | "
             "speed-up p50 | speed-up p90 | speed-up min | max abs logit diff (max abs logit) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, t = r["onnxruntime"], r["pytorch"]
        lines.append(f"| {r['size']} px | {r['batch']} | {o['median']:.2f} | {o['p90']:.2f} | {o['min']:.2f} | "
                     f"{t['median']:.2f} | {t['p90']:.2f} | {t['min']:.2f} | {r['speedup_p50']:.1f}x | "
                     f"{r['speedup_p90']:.1f}x | {r['speedup_min']:.1f}x | "
                     f"{r['max_abs_logit_diff']:.1e} ({r['max_abs_logit']:.1e}) |")
    return "\n".join(lines)


def verdict(rows: List[Dict]) -> str:
    b1 = [r for r in rows if r["batch"] == 1]
    if not b1:
        return "No batch-1 rows: the target (ORT >= 6x faster at batch 1) was not measured."
    parts = [f"{r['size']} px: {r['speedup_p50']:.2f}x, "
             f"{'met' if r['speedup_p50'] >= TARGET_SPEEDUP_B1 else 'NOT met'}" for r in b1]
    return f"Target ORT >= {TARGET_SPEEDUP_B1:.0f}x faster than PyTorch eager at batch 1 (p50): {'; '.join(parts)}."


PROG = "python -m fer_edge.benchmarks.compare_torch_ort"


def build_parser():
    parser = new_parser(PROG, description=__doc__)
    parser.add_argument("--sizes", default="48,96", help="input sizes in px (default 48,96)")
    parser.add_argument("--no-ort-spin", action="store_true",
                        help="turn ONNX Runtime's spin-waiting off (the runtime's default session keeps it on)")
    parser.add_argument("--block", type=int, default=40,
                        help="calls per runtime per round at batch 1 (larger batches: 1/8 of it; default 40)")
    parser.add_argument("--settle", type=int, default=5,
                        help="calls dropped at the start of each block, while the other runtime's threads stop "
                             "spinning (default 5)")
    add_timing_arguments(parser, warmup=10, iterations=20)
    return parser


def _main(argv) -> int:
    args = build_parser().parse_args(argv)

    rows = measure(parse_ints(args.sizes), parse_ints(args.batch), args.threads, args.warmup, args.iterations,
                   not args.no_progress, spin=not args.no_ort_spin, settle=args.settle,
                   block_b1=args.block)
    spin_text = ("ONNX Runtime with its default settings, as `load(threads=N)` builds it (idle workers spin-wait)"
                 if not args.no_ort_spin else "ONNX Runtime with spin-waiting off")
    env = environment(f"{PROG} " + shlex.join(argv))
    publish_result(
        "ONNX Runtime vs PyTorch eager (CPU, FP32)", env,
        f"tf_efficientnetv2_b0, 1 channel, 7 classes, **random weights** (latency does not depend on them). "
        f"{args.threads} threads for both (torch.set_num_threads, ORT intra-op); {spin_text}. Inference only, on "
        f"the same float32 tensor; PyTorch under inference_mode. {args.iterations} interleaved rounds after "
        f"{args.warmup} warm-up rounds; each round runs a block of PyTorch calls then a block of ORT calls "
        f"({args.block} calls at batch 1, {block_size(32, args.block)} at larger batches) and drops the first "
        f"{args.settle} timings of each block, while the other runtime's idle threads stop spin-waiting. "
        f"trtexec-style percentiles. "
        "On a shared host (see the load average) p50/p90 include time spent waiting for a CPU, which hurts "
        "PyTorch's thread pool more than ONNX Runtime's; min approximates the uncontended time.",
        markdown(rows), verdict(rows), rows, args.out)
    return 0


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
