"""GPU self-check: build TensorRT engines from fer-edge ONNX artifacts, check them against ONNX Runtime on
real faces, and print trtexec-style latency. Run it on the Jetson / desktop GPU that will serve the model.

    python -m fer_edge.benchmarks.gpu_check --artifacts fer-artifacts --data fer2013_publictest.npz

Per engine: parity with ONNX Runtime; batch sizes 1 -> 2 -> 1 -> 3 -> 1 with CUDA graphs on and calls from 8
threads, every output row against ONNX Runtime (benchmarks/serving_checks); for FP16 and INT8, the layer
precisions from TensorRT's engine inspector (benchmarks/layer_precisions: INT8 where the ONNX is quantized, FP16
elsewhere, no FP32 compute); for INT8, the accuracy gate the ONNX passed, re-run on the engine with the same
validation faces and rule (calibration/gate_replay). Any failed check: exit 1, with FAIL lines saying why.
It refuses (exit 3) on a machine without TensorRT or a CUDA GPU, naming what is missing. Budget: under 10
minutes for the FP16 and INT8 engines of the bundled model on one GPU (two builds dominate).
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from fer_edge.benchmarks import serving_checks, trtexec_stats
from fer_edge.benchmarks.jetson import jetson_state
from fer_edge.benchmarks.latency import summarize
from fer_edge.benchmarks.layer_precisions import InspectorFormatError, engine_information, layer_precision_problems
from fer_edge.calibration.gate_replay import recorded_gate
from fer_edge.calibration.quantize import int8_layers
from fer_edge.cli_support import EXIT_CHECK_FAILED, EXIT_OK, new_parser, run_cli
from fer_edge.data.datasets import default_fer2013_publictest, load_faces
from fer_edge.data.metrics import Comparison, compare_outputs
from fer_edge.export.engine_build import BuildOptions, build_engine, import_builder, local_gpu, options_with_preset
from fer_edge.models.artifact_writer import atomic_write_json
from fer_edge.runtime import load
from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError


PROG = "python -m fer_edge.benchmarks.gpu_check"
EXAMPLES = """examples:
  fer-export --fp16 && fer-export --int8 --calib ../shared/data/fer2013/fer2013_train_1of2.npz --calib-split Training
  python -m fer_edge.benchmarks.gpu_check                                  # fer-artifacts/*_{fp16,int8}.onnx
  python -m fer_edge.benchmarks.gpu_check --onnx m_fp16.onnx --data faces/ --iterations 2000 --report gpu.json
"""
# Least top-1 agreement of a TensorRT engine with ONNX Runtime running the same ONNX, per precision: the engine
# should only differ by kernel rounding, which flips more near-ties the lower the precision.
ENGINE_MIN_AGREEMENT = {"fp32": 0.995, "fp16": 0.99, "int8": 0.98}


def require_gpu_stack(flavour: str = "auto"):
    """TensorRT builder + a CUDA GPU, or BackendUnavailableError saying which is missing."""
    return import_builder(flavour), local_gpu()


def find_sources(artifacts: Path, onnx: Optional[List[str]]) -> List[Path]:
    if onnx:
        return [Path(p) for p in onnx]
    found = sorted(p for p in artifacts.glob("*.onnx") if p.stem.endswith(("_fp16", "_int8")))
    if not found:
        raise FerEdgeError(f"no *_fp16.onnx or *_int8.onnx in {artifacts}; create them with `fer-export --fp16` and "
                           "`fer-export --int8 --calib ...`, or pass --onnx PATH")
    return found


def layer_check(onnx_path: Path, engine_model) -> Dict[str, object]:
    """The engine inspector's layer precisions against the ONNX: INT8 where it reads Q/DQ, FP16 elsewhere."""
    layers = int8_layers(onnx_path.read_bytes())
    info = engine_information(engine_model.backend.engine, engine_model.backend.flavour.module)
    int8 = [name for name, quantized in layers.items() if quantized]
    problems = layer_precision_problems(info, int8, [name for name in layers if name not in int8])
    return {"layers": len(info["Layers"]), "problems": problems, "passed": not problems}


def gate_check(onnx_path: Path, engine_model, args) -> Dict[str, object]:
    """The INT8 gate the ONNX passed, re-run on the engine: same validation faces, same rule, FP32 reference."""
    gate = recorded_gate(onnx_path, args.gate_calib, args.gate_val)
    return gate.judge(gate.fp32_logits(engine_model.contract.input_name), engine_model.infer(gate.tensors))


def _guarded(check: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """A check that cannot run (no inspector detail, no recorded gate faces) fails with its reason, loudly."""
    try:
        return check()
    except (FerEdgeError, InspectorFormatError) as exc:
        return {"passed": False, "error": str(exc)}


def parity_record(result: Comparison, precision: str) -> Dict[str, object]:
    """The report's "parity" block: engine vs ONNX Runtime probabilities, judged by ENGINE_MIN_AGREEMENT."""
    need = ENGINE_MIN_AGREEMENT[precision]
    record = {"faces": result.images, "top1_agreement": result.top1_agreement,
              "max_abs_prob_diff": result.max_abs_diff, "min_agreement": need,
              "passed": result.top1_agreement >= need}
    if result.reference_top1 is not None:
        record["accuracy_onnxruntime"] = result.reference_top1
        record["accuracy_engine"] = result.candidate_top1
    return record


def engine_latency(model, face, iterations: int, warmup_ms: float) -> Dict[str, object]:
    """Isolated batch-1 queries (sync after each: the robot's case), trtexec stage names."""
    batch = model.preprocess(face[None])
    end = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < end:
        model.backend.timed_run(batch)
    from tqdm import tqdm
    start = time.perf_counter()  # the bar's own cost is inside the wall time but not inside the event timings
    runs = [model.backend.timed_run(batch) for _ in tqdm(range(iterations), desc="batch-1 queries", leave=False)]
    wall_ms = (time.perf_counter() - start) * 1e3
    predict = []
    for _ in range(min(iterations, 500)):
        t0 = time.perf_counter()
        model.predict(face[None])
        predict.append((time.perf_counter() - t0) * 1e3)
    summary = trtexec_stats.summarize_stages(runs)
    summary["predict_end_to_end"] = summarize(predict)
    return {"summary": summary, "throughput_qps": trtexec_stats.throughput_qps(iterations, 1, wall_ms),
            "warnings": trtexec_stats.warnings_for(summary),
            "predict_over_gpu_compute": summary["predict_end_to_end"]["median"] / summary["gpu_compute"]["median"]}


def build_options(args) -> BuildOptions:
    # The layer check reads per-layer precisions, which TensorRT's inspector gives only for engines built with
    # ProfilingVerbosity.DETAILED; an engine_build without that option makes the layer check fail, saying so.
    detailed = {"detailed_profiling": True} if "detailed_profiling" in {
        f.name for f in dataclasses.fields(BuildOptions)} else {}
    return options_with_preset(None, batch=(1, 1, args.max_batch), timing_cache=args.timing_cache, **detailed)


def check_one(onnx_path: Path, args, data: str) -> Dict[str, object]:
    built = build_engine(onnx_path, out_dir=args.out, options=build_options(args), flavour=args.trt)
    with load(built.path, cuda_graph=not args.no_cuda_graph, spin_wait=args.spin_wait) as model:
        precision = model.precision
        faces = load_faces(data, labels=model.labels, split=args.split, limit=args.count)  # targets in model order
        ref = load(onnx_path).predict_proba(faces.images)
        result = {"onnx": str(onnx_path), "engine": str(built.path), "precision": precision,
                  "precision_label": model.contract.precision_label(), "bench_settings": model.backend.bench_settings,
                  "parity": parity_record(compare_outputs(ref, model.predict_proba(faces.images), faces.targets),
                                          precision),
                  "batch_sequence": _guarded(lambda: {"cuda_graph": not args.no_cuda_graph,
                                                      **serving_checks.batch_sequence_check(
                                                          model.predict_proba, faces.images, ref)}),
                  "threads": _guarded(lambda: serving_checks.threaded_check(model.predict_proba, faces.images, ref))}
        if precision in ("fp16", "int8"):
            result["layers"] = _guarded(lambda: layer_check(onnx_path, model))
        if precision == "int8":
            result["gate"] = _guarded(lambda: gate_check(onnx_path, model, args))
        result["latency_batch1"] = engine_latency(model, faces.images[0], args.iterations, args.warmup_ms)
        return result


CHECKS = ("parity", "batch_sequence", "threads", "layers", "gate")


def failures(result: Dict[str, object]) -> List[str]:
    """One line per failed check of an engine, saying why."""
    lines = []
    for name in CHECKS:
        check = result.get(name)
        if check is None or check.get("passed"):
            continue
        if "error" in check:
            why = f"could not run: {check['error']}"
        elif name == "gate":
            why = (f"the engine breaks the accuracy gate its ONNX passed ({check['rule']} on {check['validation']}): "
                   f"ONNX {check['onnx']}, engine {check['candidate']}")
        elif name == "layers":
            why = f"{len(check['problems'])} layer(s) in the wrong precision: " + "; ".join(check["problems"][:3])
        elif name == "batch_sequence":
            bad = [s for s in check["steps"] if not s["top1_match"]]
            why = (f"batch sizes {check['sizes']} (CUDA graphs {'on' if check['cuda_graph'] else 'off'}): wrong "
                   f"outputs at steps {bad[:3]}")
        elif name == "threads":
            why = (f"{check['mismatched_calls']} call(s) from {check['threads']} threads gave other faces' classes; "
                   f"errors: {check['errors'][:3]}")
        else:
            why = f"top-1 agreement {check['top1_agreement']:.4f} < {check['min_agreement']}"
        lines.append(f"FAIL {Path(result['engine']).name} {name}: {why}")
    return lines


def print_report(results: List[Dict[str, object]]) -> None:
    for r in results:
        p = r["parity"]
        print(f"\n## {Path(r['engine']).name} ({r['precision_label']})")
        print(f"parity vs ONNX Runtime on {p['faces']} faces: top-1 agreement {p['top1_agreement']:.4f} "
              f"(min {p['min_agreement']}), max |dprob| {p['max_abs_prob_diff']:.4f} -> "
              f"{'PASS' if p['passed'] else 'FAIL'}")
        if "accuracy_engine" in p:
            print(f"accuracy: engine {p['accuracy_engine']:.4f}, ONNX Runtime {p['accuracy_onnxruntime']:.4f}")
        lat = r["latency_batch1"]
        print(trtexec_stats.stages_markdown(lat["summary"]))
        e2e = lat["summary"]["predict_end_to_end"]
        print(f"predict() end to end median {e2e['median']:.4f} ms = {lat['predict_over_gpu_compute']:.2f}x GPU compute "
              f"(goal <= 1.5x); throughput {lat['throughput_qps']:.0f} qps")
        for note in lat["warnings"]:
            print(f"WARNING: {note}")
        passed = [name for name in CHECKS if name != "parity" and (r.get(name) or {}).get("passed")]
        print(f"passed: {', '.join(passed) or 'none'}")
        for line in failures(r):
            print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(PROG, description=__doc__, epilog=EXAMPLES)
    parser.add_argument("--artifacts", default="fer-artifacts", help="folder with *_fp16.onnx / *_int8.onnx")
    parser.add_argument("--onnx", nargs="+", metavar="PATH", help="check these ONNX files instead")
    parser.add_argument("--data", help="faces for parity: .npz, fer2013.csv or image folder "
                                       "(default: FER-2013 PublicTest from ../shared)")
    parser.add_argument("--split", help="split of a csv/npz, e.g. PublicTest")
    parser.add_argument("--count", type=int, default=1000, help="faces used for parity (default 1000)")
    parser.add_argument("--out", default="fer-artifacts/engines", help="where engines are written")
    parser.add_argument("--max-batch", type=int, default=32, help="profile max batch (opt is 1)")
    parser.add_argument("--iterations", type=int, default=1000, help="timed batch-1 queries (default 1000)")
    parser.add_argument("--warmup-ms", type=float, default=200.0, help="warm-up before timing (trtexec: 200)")
    parser.add_argument("--timing-cache", help="timing cache file reused across builds")
    parser.add_argument("--no-cuda-graph", action="store_true", help="plain enqueue instead of a CUDA graph")
    parser.add_argument("--spin-wait", action="store_true", help="busy-wait on events (lower latency, more CPU)")
    parser.add_argument("--trt", default="auto", choices=("auto", "tensorrt", "tensorrt_rtx"))
    parser.add_argument("--gate-calib", metavar="PATH", help="INT8 gate re-run: the calibration source the INT8 "
                        "artifact was gated on, when it is not at the path its sidecar records")
    parser.add_argument("--gate-val", metavar="PATH", help="INT8 gate re-run: its --val faces, when not at the "
                        "recorded path")
    parser.add_argument("--report", help="also write the results as JSON here")
    return parser


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        trt, gpu = require_gpu_stack(args.trt)
    except BackendUnavailableError as exc:  # exit 3 (documented above): "not this machine", not a bad input
        print(f"{PROG}: cannot run on this machine: {exc}", file=sys.stderr)
        return 3
    data = args.data or default_fer2013_publictest()
    if data is None:
        raise FerEdgeError("no faces for the parity check: pass --data (npz, fer2013.csv or image folder)")
    print(f"{trt.describe()} on {gpu['gpu_name']} (CC {gpu['compute_capability']}, driver {gpu.get('cuda_driver') or 'unknown'}), "
          f"{platform.machine()}; parity faces from {data}")
    results = [check_one(path, args, str(data)) for path in find_sources(Path(args.artifacts), args.onnx)]
    print_report(results)
    if args.report:
        atomic_write_json(args.report, {"gpu": gpu, "tensorrt": trt.describe(), "results": results,
                                        "jetson": jetson_state() if Path("/etc/nv_tegra_release").exists() else None,
                                        "command": ["python", "-m", "fer_edge.benchmarks.gpu_check"] + argv})
        print(f"wrote {args.report}")
    failed = [line for r in results for line in failures(r)]
    for line in failed:  # again on stderr, after the report, so a failure is the last thing seen
        print(line, file=sys.stderr)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
