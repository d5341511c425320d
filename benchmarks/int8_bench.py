"""Measure the INT8 pipeline on a model: per calibration method, accuracy before/after the gate and wall time,
the CPU-target variant, and ONNX Runtime CPU latency FP32 vs INT8 side by side. With --ablation, the TensorRT
recipe's two choices are measured one by one on the same calibration and gate: FP32 vs FP16 float part, and
squeeze-excite convs + classifier quantized vs kept float (the earlier recipe is FP32 + quantized).

    python -m fer_edge.benchmarks.int8_bench --fp32 fer-artifacts/<name>_fp32.onnx \\
        --calib ../shared/data/fer2013/fer2013_train_1of2.npz --val ../shared/data/fer2013/fer2013_publictest.npz \\
        --out benchmarks/results/int8_reference

Writes <out>.md and <out>.json. Every calibration runs with a fresh cache, so times include everything.
"""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from fer_edge.benchmarks.latency import discard, run_interleaved, summarize
from fer_edge.benchmarks.report import environment, environment_markdown
from fer_edge.calibration.int8_export import Int8Options, export_int8
from fer_edge.calibration.quantize import CALIBRATION_METHODS, TrtRecipe
from fer_edge.calibration.synthesize import shipped_set_for_weights
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.export.exporter import export_model
from fer_edge.models.artifact_writer import atomic_write_bytes, atomic_write_json
from fer_edge.runtime.artifact_io import sidecar_contract
from fer_edge.runtime.errors import FerEdgeError
from fer_edge.runtime.onnx_backend import ort_session


def measure_cpu_latency(models: Dict[str, bytes], channels: int, size: int, batches=(1, 32), threads: int = 2,
                        rounds: Dict[int, int] = None) -> List[Dict[str, object]]:
    """ONNX Runtime CPU median/p90 ms per model and batch, interleaved round-robin (benchmarks/latency) so noise
    hits all alike.

    Each round runs a block of calls per model and drops the first calls of each block: with one call each,
    the previous session's spin-waiting threads would be timed against the next one (6.7 ms instead of 1.5 ms
    for FP32 at batch 1 on 2 cores).
    """
    rounds = rounds or {1: 15, 32: 10}
    blocks = {1: (20, 3)}  # batch -> (calls per block, dropped first calls); larger batches: (4, 1)
    sessions = {name: ort_session(payload, threads) for name, payload in models.items()}
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
        calls = {name: (lambda s=session: discard(s.run(None, {s.get_inputs()[0].name: x})))
                 for name, session in sessions.items()}
        block, settle = blocks.get(batch, (4, 1))
        stats = {name: summarize(ms, batch) for name, ms in
                 run_interleaved(calls, warmup=5, iterations=rounds.get(batch, 10), block=block, settle=settle).items()}
        base = stats[next(iter(stats))]["median"]
        for name, stat in stats.items():
            rows.append({"model": name, "batch": batch, "p50_ms": round(stat["median"], 3),
                         "p90_ms": round(stat["p90"], 3), "runs": stat["n"],
                         "speed_vs_first": round(base / stat["median"], 3)})
    return rows


def export_checkpoint(checkpoint: str, out_dir: Path, parity_data: str, parity_split: Optional[str]) -> Path:
    """FP32 artifact through fer-export's own path (parity-checked on 512 validation faces)."""
    return export_model(checkpoint=checkpoint, out_dir=str(out_dir), parity_data=parity_data, parity_split=parity_split,
                        parity_count=512)["fp32"].path


# --ablation: (name, recipe), the default recipe first; "v1" is the graph fer-edge wrote before FP16 islands.
ABLATION = (("fp16, SE+classifier float", TrtRecipe()), ("fp16, all quantized", TrtRecipe("float16", False)),
            ("fp32, SE+classifier float", TrtRecipe("float32", True)), ("v1: fp32, all quantized",
                                                                        TrtRecipe("float32", False)))


def _recipe_name(recipe: TrtRecipe) -> str:
    return next(name for name, r in ABLATION if r == recipe)


def run(fp32: Path, calib: str, calib_split: Optional[str], val: str, val_split: Optional[str], methods: List[str],
        count: int, out: Path, command: str, note: str = "", synthetic: Optional[str] = None,
        ablation: bool = False) -> Dict[str, object]:
    contract = sidecar_contract(fp32)
    if contract is None:
        raise FerEdgeError(f"{fp32}: no sidecar; pass an FP32 artifact written by fer-export")
    results = {"env": environment(command), "model": fp32.name,
               "weights_sha256": contract.source_weights_sha256, "calibration_source": calib,
               "calibration_split": calib_split, "validation": val, "validation_split": val_split,
               "count": count, "note": note, "runs": []}
    artifacts = {}
    default = TrtRecipe()
    plans = [(m, calib, calib_split, "tensorrt", "auto", default) for m in methods]
    if ablation:
        plans += [(methods[0], calib, calib_split, "tensorrt", "auto", recipe) for _, recipe in ABLATION[1:]]
    if synthetic:
        # The shipped synthetic set against real faces: same method, count and validation faces.
        plans.append((methods[0], synthetic, None, "tensorrt", "auto", default))
    plans.append((methods[0], calib, calib_split, "cpu", "auto", default))
    # A stricter gate (agreement >= 99.5%) exercises the sensitivity fallback on real faces.
    plans.append((methods[0], calib, calib_split, "tensorrt", "agreement", default))
    for method, source, split, target, gate_on, recipe in plans:
        with tempfile.TemporaryDirectory(prefix="fer-int8-bench-") as tmp:
            options = Int8Options(calib=source, calib_split=split, calib_count=count, calib_method=method,
                                  val=val, val_split=val_split, target=target, calib_cache=str(Path(tmp) / "cache"),
                                  gate_on=gate_on, min_agreement=0.995 if gate_on == "agreement" else 0.99,
                                  recipe=recipe)
            logs: List[str] = []
            t0 = time.perf_counter()
            row = {"method": method, "calibration": Path(source).name + (f" [{split}]" if split else ""),
                   "target": target, "gate_on": gate_on,
                   "recipe": _recipe_name(recipe) if target == "tensorrt" else "uint8 asymmetric, fp32"}
            try:
                path = export_int8(fp32, options, source, out_dir=Path(tmp), log=logs.append)
                side = json.loads(Path(str(path) + ".json").read_text())
                row.update(passed=True, wall_s=round(time.perf_counter() - t0, 1), gate=side["gate"],
                           ranges_s=side["calibration"]["ranges_seconds"],
                           precision_mix=side["contract"]["precision_mix"])
                if gate_on == "auto" and recipe in (default, ABLATION[-1][1]):
                    suffix = "" if recipe == default else "-v1"
                    artifacts.setdefault(f"int8-{target}-{method}{suffix}", path.read_bytes())
            except FerEdgeError as exc:
                row.update(passed=False, wall_s=round(time.perf_counter() - t0, 1), error=str(exc))
            row["log"] = logs
            results["runs"].append(row)
            print(f"{method:10s} {row['calibration']:40s} {target:8s} passed={row['passed']} {row['wall_s']} s",
                  flush=True)
    latency_models = {"fp32": fp32.read_bytes()}
    for name in artifacts:
        if name.startswith("int8-tensorrt-") and not name.endswith("-v1"):
            latency_models[name] = artifacts[name]
            latency_models.update({n: artifacts[n] for n in [name + "-v1"] if n in artifacts})
            break
    for name in artifacts:
        if name.startswith("int8-cpu-"):
            latency_models[name] = artifacts[name]
    results["latency"] = measure_cpu_latency(latency_models, contract.channels, contract.input_size)
    atomic_write_json(out.with_suffix(".json"), results)
    atomic_write_bytes(out.with_suffix(".md"), render(results).encode())
    return results


def _pct(v):
    return "–" if v is None else f"{100 * v:.2f}%"


def render(r: Dict[str, object]) -> str:
    lines = [f"# INT8 calibration, accuracy gate and CPU latency: {r['model']}", "",
             *([r["note"], ""] if r.get("note") else []),
             environment_markdown(r["env"]),
             f"- Weights sha256: `{r['weights_sha256']}`",
             f"- Calibration: {r['count']} faces from `{r['calibration_source']}`"
             + (f" [{r['calibration_split']}]" if r['calibration_split'] else "") + ", stratified by class, seed 0",
             f"- Validation (gate): `{r['validation']}`" + (f" [{r['validation_split']}]" if r['validation_split'] else ""),
             "", "## Accuracy and time per calibration", "",
             "| method | calibration set | target | recipe | gate | FP32 top-1 | INT8 top-1 before gate | drop before | INT8 top-1 after | drop after | agreement after | kept in float | ranges s | total s (calib + gate) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["runs"]:
        recipe = row.get("recipe", "v1: fp32, all quantized")  # results written before the recipe was recorded
        if not row["passed"]:
            lines.append(f"| {row['method']} | {row['calibration']} | {row['target']} | {recipe} | {row['gate_on']} | "
                         f"gate failed: {row['error'][:160]} | | | | | | | | {row['wall_s']} |")
            continue
        g = row["gate"]
        b, a = g["before"], g["after"]
        kept = ", ".join(g["kept_in_higher_precision"]["blocks"]) or "none"
        lines.append(f"| {row['method']} | {row['calibration']} | {row['target']} | {recipe} | {g['rule']} | "
                     f"{_pct(b['fp32_top1'])} | "
                     f"{_pct(b['int8_top1'])} | {b['drop_points']:+.2f} | {_pct(a['int8_top1'])} | "
                     f"{a['drop_points']:+.2f} | {_pct(a['agreement'])} | {kept} | {row['ranges_s']} | {row['wall_s']} |")
    lines += ["", "## ONNX Runtime CPU latency (2 threads, ms; rounds of 20 calls per model at batch 1, 4 at batch 32, "
              "first 3 / 1 calls of each block dropped)", "",
              "| model | batch | p50 | p90 | speed vs FP32 (p50) |", "|---|---|---|---|---|"]
    for row in r["latency"]:
        lines.append(f"| {row['model']} | {row['batch']} | {row['p50_ms']} | {row['p90_ms']} | {row['speed_vs_first']}x |")
    lines.append("")
    return "\n".join(lines)


PROG = "python -m fer_edge.benchmarks.int8_bench"


def build_parser():
    parser = new_parser(PROG, description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--fp32", help="FP32 ONNX artifact written by fer-export")
    source.add_argument("--checkpoint", help="export this checkpoint to FP32 ONNX first, as fer-export does")
    parser.add_argument("--calib", required=True)
    parser.add_argument("--calib-split")
    parser.add_argument("--val", required=True)
    parser.add_argument("--val-split")
    parser.add_argument("--methods", default="max,percentile,entropy", help=f"comma list of {CALIBRATION_METHODS}")
    parser.add_argument("--calib-count", type=int, default=512)
    parser.add_argument("--synthetic", metavar="PATH|shipped",
                        help="also calibrate on this unlabelled synthetic set ('shipped': the set fer-export --int8 "
                             "uses for the bundled model whose weights --fp32 was exported from) and gate it on the same --val faces")
    parser.add_argument("--ablation", action="store_true",
                        help="also run the TensorRT recipe's variants (FP32 float part; SE convs and classifier "
                             "quantized; both = the earlier recipe) with the first method, same calibration and gate")
    parser.add_argument("--note", default="", help="a line printed under the title (e.g. which model this is)")
    parser.add_argument("--out", default="benchmarks/results/int8_reference", help="output stem (.md and .json)")
    return parser


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    command = f"{PROG} " + " ".join(shlex.quote(a) for a in argv)
    fp32 = Path(args.fp32) if args.fp32 else export_checkpoint(
        args.checkpoint, Path(tempfile.mkdtemp(prefix="fer-int8-fp32-")), args.val, args.val_split)
    synthetic = args.synthetic
    if synthetic == "shipped":
        synthetic = str(shipped_set_for_weights(sidecar_contract(fp32).source_weights_sha256))
    run(fp32, args.calib, args.calib_split, args.val, args.val_split, args.methods.split(","),
        args.calib_count, Path(args.out), command, args.note, synthetic, args.ablation)
    print(f"wrote {args.out}.md and {args.out}.json")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
