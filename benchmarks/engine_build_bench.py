"""CPU-only engine builds with tensorrt-rtx: build time and engine size for FP32 / FP16 / INT8 Q/DQ ONNX.

What CI (no GPU) can measure about the engine path. Weights are random (build time and size do not
depend on them). The INT8 Q/DQ ONNX is made by fer-export --int8's own recipe (calibration/quantize.py,
target "tensorrt", its default calibration method) without the accuracy gate, which random weights would fail;
the scales come from a few real FER-2013 faces only so that they exist - its accuracy is meaningless.

    python -m fer_edge.benchmarks.engine_build_bench --sizes 48 112 --out benchmarks/results/engine_build_rtx_cpu
"""
from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from fer_edge.benchmarks.report import environment, environment_markdown
from fer_edge.benchmarks.untrained_model import build_untrained, export_untrained
from fer_edge.calibration import quantize
from fer_edge.calibration.int8_export import DEFAULT_METHOD
from fer_edge.cli_support import new_parser, run_cli
from fer_edge.data.datasets import default_fer2013_publictest, load_faces
from fer_edge.export import onnx_export
from fer_edge.export.engine_build import BuildOptions, build_engine
from fer_edge.models.artifact_writer import atomic_write_bytes, atomic_write_json, embed_contract
from fer_edge.runtime.artifact_io import sidecar_path
from fer_edge.runtime.errors import DataError
from fer_edge.runtime.preprocess import prepare_batch


def int8_qdq(fp32: Path, contract, out: Path, faces) -> Path:
    """The Q/DQ graph fer-export --int8 writes (same quantizer, target and method), minus the gate."""
    fp32_bytes = fp32.read_bytes()
    tensors = prepare_batch(list(faces), contract)
    ranges = quantize.compute_ranges(fp32_bytes, contract.input_name, tensors, DEFAULT_METHOD)
    atomic_write_bytes(out, quantize.quantize(fp32_bytes, ranges, DEFAULT_METHOD, target="tensorrt"))
    atomic_write_json(sidecar_path(out), {"contract": contract.with_precision("int8").to_dict()})
    return out


def measure(sizes: List[int], work: Path, faces) -> List[Dict[str, object]]:
    import onnx
    rows = []
    for size in sizes:
        model, contract = build_untrained(size)
        sources = {"fp32": export_untrained(model, contract, work / f"b0_{size}_fp32.onnx")}
        atomic_write_json(sidecar_path(sources["fp32"]), {"contract": contract.to_dict()})
        proto16 = onnx_export.convert_fp16(onnx.load(str(sources["fp32"])))
        embed_contract(proto16, contract.with_precision("fp16"))
        sources["fp16"] = atomic_write_bytes(work / f"b0_{size}_fp16.onnx", proto16.SerializeToString())
        atomic_write_json(sidecar_path(sources["fp16"]), {"contract": contract.with_precision("fp16").to_dict()})
        sources["int8"] = int8_qdq(sources["fp32"], contract, work / f"b0_{size}_int8.onnx", faces)
        for precision, onnx_path in sources.items():
            for batch in ((1, 1, 1), (1, 8, 32)):
                start = time.perf_counter()
                built = build_engine(onnx_path, out_dir=work, flavour="tensorrt_rtx", log=lambda m: None,
                                     options=BuildOptions(batch=batch))
                rows.append({"size_px": size, "precision": precision, "profile": ":".join(map(str, batch)),
                             "build_s": round(time.perf_counter() - start, 2),
                             "engine_mb": round(built.path.stat().st_size / 1e6, 2),
                             "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2),
                             "strongly_typed": built.engine_meta["strongly_typed"]})
                print(rows[-1], flush=True)
    return rows


def results_markdown(rows, env: Dict[str, object]) -> str:
    lines = ["# TensorRT-RTX engine builds on a CPU-only machine", "", environment_markdown(env), "",
             "Random-weight tf_efficientnetv2_b0 (1 channel, 7 classes). Build time and size only: no GPU, so no "
             "latency. The INT8 ONNX is fer-export --int8's Q/DQ recipe (symmetric int8, per-channel weights, "
             "Conv/Gemm/Add inputs, no Q/DQ between a Conv and its residual Add) with scales from 16 faces and no "
             "accuracy gate (accuracy meaningless); it keeps float weights behind Q/DQ pairs, so its ONNX is a little "
             "larger than the FP32 one. Build times on a shared 2-core machine are noisy upper bounds.",
             "", "| size | precision | profile | build s | engine MB | ONNX MB | strongly typed |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size_px']} | {r['precision']} | {r['profile']} | {r['build_s']} | {r['engine_mb']} | "
              f"{r['onnx_mb']} | {r['strongly_typed']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(rows, out: Path, command: str) -> None:
    env = environment(command)
    atomic_write_json(out.with_suffix(".json"), {"command": command, "environment": env, "rows": rows})
    atomic_write_bytes(out.with_suffix(".md"), results_markdown(rows, env).encode())


PROG = "python -m fer_edge.benchmarks.engine_build_bench"


def build_parser():
    parser = new_parser(PROG, description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 112])
    parser.add_argument("--data", help="faces for INT8 scales (default FER-2013 PublicTest from ../shared)")
    parser.add_argument("--out", default="benchmarks/results/engine_build_rtx_cpu", help="results path without suffix")
    return parser


def _main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    data = args.data or default_fer2013_publictest()
    if data is None:
        raise DataError("no faces for the INT8 scales (../shared/data/fer2013 is absent); pass --data with an .npz, "
                        "fer2013.csv or image folder")
    faces = load_faces(data, limit=16).images
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.sizes, Path(tmp), faces)
    write_results(rows, Path(args.out), f"{PROG} " + shlex.join(argv))
    print(f"wrote {args.out}.md and .json")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
