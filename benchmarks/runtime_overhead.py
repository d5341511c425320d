"""Overhead of `model.predict()` (uint8 crop in, FacePrediction out) over a bare InferenceSession.run.

    python -m fer_edge.benchmarks.runtime_overhead                       # random-weight 48 px model
    python -m fer_edge.benchmarks.runtime_overhead --model fer-artifacts/x.onnx --iterations 500

Both use the same InferenceSession (same threads and options): `predict` does the contract's
preprocessing, inference, softmax and FacePrediction objects; the bare call runs the session on a
tensor prepared once. Rounds are interleaved (bare, predict, preprocess-only) so all three see the
same machine noise. Without --model it exports a random-weight tf_efficientnetv2_b0 (needs [export]).
"""
from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from fer_edge.benchmarks.compare_torch_ort import parse_ints
from fer_edge.benchmarks.latency import discard, latency_faces, run_interleaved, summarize
from fer_edge.benchmarks.report import add_timing_arguments, environment, publish_result
from fer_edge.benchmarks.untrained_model import build_untrained, export_untrained
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.runtime.model import load


TARGET_OVERHEAD_B1 = 0.10


def measure(model, batches: List[int], warmup: int, iterations: int, progress: bool) -> List[Dict]:
    session, input_name, output_name = model.backend.session, model.backend.input_name, model.backend.output_name
    rows = []
    for batch in batches:
        faces = np.stack(latency_faces(batch))  # uint8 48x48 gray crops, as FER-2013 gives them
        crop = faces[0] if batch == 1 else faces
        tensor = model.preprocess(crop)
        calls = {"bare_session_run": lambda t=tensor: discard(session.run([output_name], {input_name: t})),
                 "predict": lambda c=crop: discard(model.predict(c)),
                 "preprocess_only": lambda c=crop: discard(model.preprocess(c))}
        with tqdm(total=iterations, desc=f"batch {batch}", disable=not progress, leave=False) as bar:
            samples = run_interleaved(calls, warmup, iterations, progress=bar)
        stats = {name: summarize(ms, batch) for name, ms in samples.items()}
        bare, full = stats["bare_session_run"], stats["predict"]
        # Paired per-round difference: both calls of a round share the machine's state, so its median
        # is steadier than a difference of two medians on a busy host.
        paired = float(np.median(np.asarray(samples["predict"]) - np.asarray(samples["bare_session_run"])))
        rows.append({"batch": batch, **stats, "paired_median_diff_ms": paired,
                     "overhead_p50": full["median"] / bare["median"] - 1.0,
                     "overhead_mean": full["mean"] / bare["mean"] - 1.0,
                     "overhead_min": full["min"] / bare["min"] - 1.0})
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = ["| batch | bare run p50 ms | predict p50 ms | preprocess p50 ms | bare run min ms | predict min ms | "
             "overhead p50 | overhead mean | overhead min | paired median diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, p, pre = r["bare_session_run"], r["predict"], r["preprocess_only"]
        lines.append(f"| {r['batch']} | {b['median']:.3f} | {p['median']:.3f} | {pre['median']:.3f} | {b['min']:.3f} | "
                     f"{p['min']:.3f} | {100 * r['overhead_p50']:+.1f}% | {100 * r['overhead_mean']:+.1f}% | "
                     f"{100 * r['overhead_min']:+.1f}% | {r['paired_median_diff_ms'] * 1000:+.0f} us |")
    return "\n".join(lines)


def verdict(rows: List[Dict]) -> str:
    b1 = [r for r in rows if r["batch"] == 1]
    if not b1:
        return "No batch-1 row: the target (<= 10% overhead at batch 1) was not measured."
    r = b1[0]
    met = r["overhead_p50"] <= TARGET_OVERHEAD_B1
    return (f"Target predict() overhead <= {100 * TARGET_OVERHEAD_B1:.0f}% at batch 1 (p50): "
            f"{'MET' if met else 'NOT MET'} ({100 * r['overhead_p50']:+.1f}%; preprocessing alone "
            f"{r['preprocess_only']['median'] * 1000:.0f} us p50).")


PROG = "python -m fer_edge.benchmarks.runtime_overhead"


def build_parser():
    parser = new_parser(PROG, description=__doc__)
    parser.add_argument("--model", metavar="PATH", help="an .onnx artifact (default: export a random-weight 48 px model)")
    add_timing_arguments(parser, warmup=20, iterations=300)
    return parser


def _main(argv) -> int:
    args = build_parser().parse_args(argv)

    batches = parse_ints(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path, weights = Path(args.model), f"`{Path(args.model).name}`"
        else:
            path = export_untrained(*build_untrained(48), Path(tmp) / "untrained_48.onnx")
            weights = "tf_efficientnetv2_b0, 1 channel, 7 classes, 48 px, **random weights**"
        model = load(path, threads=args.threads)
        rows = measure(model, batches, args.warmup, args.iterations, not args.no_progress)
    env = environment(f"{PROG} " + shlex.join(argv))
    publish_result(
        "Runtime overhead: model.predict() vs a bare InferenceSession.run", env,
        f"Model: {weights}; ONNX Runtime CPU, {args.threads} intra-op threads, one session shared by both paths. "
        "`predict` takes uint8 48x48 gray crops (one 2-D crop at batch 1, an (N, 48, 48) array at batch N) and "
        "returns FacePrediction objects; the bare call runs the same session on a tensor prepared once. "
        f"{args.iterations} interleaved rounds after {args.warmup} warm-up rounds; trtexec-style percentiles. "
        "Overhead = predict / bare - 1; paired median diff = median over rounds of (predict - bare) in the same round. "
        "On a shared host (see the load average) p50 includes time spent waiting for a CPU; min approximates "
        "the uncontended time.",
        markdown(rows), verdict(rows), rows, args.out)
    return 0


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
