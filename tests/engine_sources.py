"""Source ONNX files for engine-build tests: a random-weight tf_efficientnetv2_b0 at 32 px as FP32, FP16 and INT8
Q/DQ (fer-export --int8's recipe, ungated: the weights are random), named and sidecar'd as fer-export names them.

Engine builds do not depend on the weights, and this takes seconds (no training). Import the fixture into a
test module with `from engine_sources import engine_sources  # noqa: F401`.
"""
from __future__ import annotations

import importlib.util

import pytest

from conftest import has_torch_stack, synthetic_faces

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="needs tensorrt-rtx (pip install tensorrt-rtx-cu12) to build "
                                                   "engines on CPU")
needs_export_stack = pytest.mark.skipif(not has_torch_stack(), reason="needs the [export] extra (torch, timm, onnx)")


@pytest.fixture(scope="module")
def engine_sources(tmp_path_factory):
    import onnx
    from fer_edge.benchmarks.engine_build_bench import int8_qdq
    from fer_edge.benchmarks.untrained_model import build_untrained, export_untrained
    from fer_edge.export import onnx_export
    from fer_edge.models.artifact_writer import artifact_name, atomic_write_bytes, atomic_write_json, embed_contract
    from fer_edge.runtime.artifact_io import sidecar_path
    out = tmp_path_factory.mktemp("engine-sources")
    model, contract = build_untrained(32)
    fp32 = export_untrained(model, contract, out / artifact_name(contract, "fp32"))
    atomic_write_json(sidecar_path(fp32), {"contract": contract.to_dict()})
    proto16 = onnx_export.convert_fp16(onnx.load(str(fp32)))
    embed_contract(proto16, contract.with_precision("fp16"))
    fp16 = atomic_write_bytes(out / artifact_name(contract, "fp16"), proto16.SerializeToString())
    atomic_write_json(sidecar_path(fp16), {"contract": contract.with_precision("fp16").to_dict()})
    faces, _ = synthetic_faces(16, seed=3)
    int8 = int8_qdq(fp32, contract, out / artifact_name(contract, "int8"), faces)
    return {"fp32": fp32, "fp16": fp16, "int8": int8, "contract": contract, "dir": out}
