"""INT8 engine builds that TensorRT rejects (TensorRT 10.3 fails on graphs 10.7+ builds): retry with more blocks in
float in the gate's sensitivity order, then FP16, each step reported, nothing half-written (issue #10, point 16).

The orchestration is driven by a fake builder that fails the first N attempts; the re-quantization
(calibration/float_fallback.py) and one end-to-end retry run for real (ONNX Runtime, tensorrt-rtx on the CPU).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine_sources import engine_sources, needs_export_stack, needs_rtx  # noqa: F401 (fixture)
from fer_edge.cli.engine_retry import build_with_int8_fallback, retry_schedule
from fer_edge.export.engine_build import BuiltEngine, EngineBuildError, TensorRTBuildFailed
from fer_edge.models.artifact_writer import artifact_name, atomic_write_json
from fer_edge.runtime.artifact_io import sidecar_path
from fer_edge.runtime.contract import ModelContract

CONTRACT = ModelContract(arch="tf_efficientnetv2_b0", labels=["a", "b", "c"], input_size=32, channels=1,
                         color_order="GRAY", mean=[0.5], std=[0.5])


class FakeBuilder:
    """build_engine's stand-in: TensorRT rejects the first `failures` networks, then builds."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, []

    def __call__(self, onnx_path, log=print, extra_meta=None, **kwargs):
        self.calls.append((Path(onnx_path).name, extra_meta))
        if len(self.calls) <= self.failures:
            raise TensorRTBuildFailed(f"TensorRT failed to build {Path(onnx_path).name}: Could not find any "
                                      "implementation for node /blocks.2.0/conv_pw/Conv")
        return BuiltEngine(Path(onnx_path).with_suffix(".engine"), Path("x.json"), CONTRACT, dict(extra_meta or {}))


class FakeFallback:
    """FloatFallback's stand-in: five blocks in sensitivity order; writes marker files."""

    def __init__(self, int8_path: Path, out_dir: Path):
        self.int8_path, self.out_dir = Path(int8_path), Path(out_dir)
        self.kept, self.order = ["stem"], ["blocks.5.0", "blocks.1.0", "head", "blocks.3.2", "classifier"]
        self.order_source, self.contract, self.removed = "the accuracy gate's sensitivity ranking", CONTRACT, []

    def write(self, extra: int) -> Path:
        path = self.out_dir / f"m_int8_float{len(self.kept) + extra}.onnx"
        path.write_bytes(b"onnx")
        return path

    def remove(self, path: Path) -> None:
        Path(path).unlink()
        self.removed.append(Path(path).name)


@pytest.fixture
def int8_source(tmp_path):
    path = tmp_path / "m_int8.onnx"
    path.write_bytes(b"onnx")
    atomic_write_json(sidecar_path(path), {"contract": CONTRACT.with_precision("int8").to_dict()})
    return path


def test_retry_schedule_doubles_and_stops_at_what_is_left():
    assert retry_schedule(3, 24) == [1, 2, 4]
    assert retry_schedule(5, 5) == [1, 2, 4, 5]
    assert retry_schedule(3, 1) == [1]
    assert retry_schedule(3, 0) == [] and retry_schedule(0, 24) == []


def test_int8_build_retries_with_more_blocks_in_float_until_one_builds(int8_source, tmp_path):
    builder, logs, plans = FakeBuilder(failures=2), [], []

    def fallback(path, out):
        plans.append(FakeFallback(path, out))
        return plans[-1]
    built = build_with_int8_fallback(int8_source, retries=3, log=logs.append, build=builder, fallback_for=fallback,
                                     out_dir=tmp_path)
    assert [c[0] for c in builder.calls] == ["m_int8.onnx", "m_int8_float2.onnx", "m_int8_float3.onnx"]
    assert plans[0].removed == ["m_int8_float2.onnx"]                    # the failed derived ONNX is gone
    assert (tmp_path / "m_int8_float3.onnx").exists()                   # the engine's source stays
    steps = built.engine_meta["int8_fallback"]["steps"]
    assert [(s["source"], s["blocks_in_float"], s["error"] is None) for s in steps] == [
        ("m_int8.onnx", 1, False), ("m_int8_float2.onnx", 2, False), ("m_int8_float3.onnx", 3, True)]
    text = "\n".join(logs)
    assert "INT8 engine build failed" in text and "sensitivity ranking" in text
    assert "retry 1/3: 1 more block(s) in float (blocks.5.0)" in text
    assert "retry 2/3: 2 more block(s) in float (blocks.5.0, blocks.1.0)" in text
    assert "INT8 engine built with 3 block(s) in float" in text


def test_when_every_int8_build_fails_fp16_is_offered_or_built_when_asked(int8_source, tmp_path):
    builder = FakeBuilder(failures=99)
    with pytest.raises(TensorRTBuildFailed) as err:
        build_with_int8_fallback(int8_source, retries=2, log=lambda m: None, build=builder, fallback_for=FakeFallback,
                                 out_dir=tmp_path)
    text = str(err.value)
    assert "tried m_int8.onnx (1 blocks in float); m_int8_float2.onnx (2 blocks in float); m_int8_float3.onnx" in text
    assert "no FP16 ONNX" in text and "fer-export --fp16" in text
    assert not list(tmp_path.glob("*_float*.onnx"))                      # nothing half-done is left
    fp16 = int8_source.parent / artifact_name(CONTRACT, "fp16")
    fp16.write_bytes(b"onnx")
    with pytest.raises(TensorRTBuildFailed, match=f"fer-export --engine --onnx {fp16}.*--int8-fallback-fp16"):
        build_with_int8_fallback(int8_source, retries=1, log=lambda m: None, build=FakeBuilder(99),
                                 fallback_for=FakeFallback, out_dir=tmp_path)
    builder = FakeBuilder(failures=2)   # the INT8 build and its one retry fail; FP16 builds
    built = build_with_int8_fallback(int8_source, retries=1, fp16_fallback=True, log=lambda m: None, build=builder,
                                     fallback_for=FakeFallback, out_dir=tmp_path)
    assert builder.calls[-1][0] == fp16.name and built.engine_meta["int8_fallback"]["gave_up_on_int8"] is True


def test_only_tensorrt_rejecting_an_int8_network_is_retried(int8_source, tmp_path):
    class BadOptions(FakeBuilder):
        def __call__(self, onnx_path, **kwargs):
            self.calls.append(onnx_path)
            raise EngineBuildError("--timing-cache x was written for another TensorRT")
    with pytest.raises(EngineBuildError, match="timing-cache"):
        build_with_int8_fallback(int8_source, build=BadOptions(0), fallback_for=pytest.fail, out_dir=tmp_path)
    fp16 = tmp_path / "m_fp16.onnx"
    fp16.write_bytes(b"onnx")
    atomic_write_json(sidecar_path(fp16), {"contract": CONTRACT.with_precision("fp16").to_dict()})
    with pytest.raises(TensorRTBuildFailed):                              # an FP16 failure is final
        build_with_int8_fallback(fp16, build=FakeBuilder(1), fallback_for=pytest.fail, out_dir=tmp_path)
    with pytest.raises(TensorRTBuildFailed):                              # --int8-retries 0
        build_with_int8_fallback(int8_source, retries=0, build=FakeBuilder(1), fallback_for=pytest.fail,
                                 out_dir=tmp_path)


# ---------------------------------------------------------------- real re-quantization and a real retry
def _gated_int8(engine_sources, folder: Path) -> Path:
    """The fixture's INT8 ONNX with the sidecar sections the gate writes: one block kept in float, a ranking."""
    from fer_edge.calibration import quantize
    from fer_edge.calibration.float_fallback import quantized_groups
    src = engine_sources["int8"]
    groups = quantized_groups(src.read_bytes())
    kept = list(groups)[3]
    path = folder / src.name
    path.write_bytes(quantize.keep_in_float(src.read_bytes(), groups[kept]))
    ranking = [g for g in reversed(list(groups)) if g != kept][:4]       # the gate ranked these most sensitive
    sidecar = json.loads(sidecar_path(src).read_text())
    sidecar["contract"]["precision_mix"] = quantize.precision_mix(path.read_bytes(), "float16")
    sidecar.update(artifact={"quantization": {"format": "QDQ", "target": "tensorrt"}},
                   gate={"kept_in_higher_precision": {"blocks": [kept], "nodes": groups[kept]},
                         "sensitivity": [{"group": g, "logit_mse": 1.0 / (i + 1)} for i, g in enumerate(ranking)]})
    atomic_write_json(sidecar_path(path), sidecar)
    return path


@needs_export_stack
def test_float_fallback_puts_the_gates_most_sensitive_blocks_back_in_float(engine_sources, tmp_path):
    from fer_edge.calibration.float_fallback import FloatFallback, quantized_groups
    from fer_edge.calibration.gate import onnx_logits
    from fer_edge.runtime.artifact_io import sidecar_contract
    int8 = _gated_int8(engine_sources, tmp_path)
    plan = FloatFallback(int8, tmp_path / "out")
    recorded = [r["group"] for r in json.loads(sidecar_path(int8).read_text())["gate"]["sensitivity"]]
    assert plan.order[:4] == recorded and plan.kept[0] not in plan.order
    assert sorted(plan.order) == sorted(quantized_groups(int8.read_bytes()))   # then every other INT8 block
    derived = plan.write(2)
    assert derived.name == int8.stem + "_float3.onnx"
    left = quantized_groups(derived.read_bytes())
    assert set(left) == set(plan.order[2:])                              # exactly those two went back to float
    side = json.loads(sidecar_path(derived).read_text())
    assert side["gate"]["kept_in_higher_precision"]["blocks"] == plan.kept + recorded[:2]
    assert side["derived"]["blocks_added_to_float"] == recorded[:2] and side["derived"]["gate_rerun"] is False
    assert side["artifact"]["quantization"]["target"] == "tensorrt"
    contract = sidecar_contract(derived)
    assert contract.precision == "int8"
    assert set(contract.precision_mix["float_blocks"]) >= set(plan.kept + recorded[:2])   # re-read from the graph
    faces = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    assert onnx_logits(derived.read_bytes(), faces).shape == (4, 7)      # a valid model ONNX Runtime runs
    plan.remove(derived)
    assert not derived.exists() and not sidecar_path(derived).exists()


@needs_export_stack
def test_float_fallback_without_a_ranking_goes_in_graph_order(engine_sources, tmp_path):
    from fer_edge.calibration.float_fallback import FloatFallback, quantized_groups
    plan = FloatFallback(engine_sources["int8"], tmp_path)                # int8_qdq's sidecar: no gate section
    assert plan.kept == [] and plan.order == list(quantized_groups(engine_sources["int8"].read_bytes()))
    assert "graph order" in plan.order_source


@needs_rtx
@needs_export_stack
def test_a_real_int8_build_that_fails_once_is_rebuilt_from_the_derived_onnx(engine_sources, tmp_path):
    from fer_edge.export.engine_build import BuildOptions, build_engine
    int8 = _gated_int8(engine_sources, tmp_path)
    calls = []

    def flaky(onnx_path, **kwargs):         # TensorRT 10.3 rejecting the gated graph, then the real build
        calls.append(Path(onnx_path).name)
        if len(calls) == 1:
            raise TensorRTBuildFailed("TensorRT failed to build: Could not find any implementation for node X")
        return build_engine(onnx_path, **kwargs)
    logs = []
    built = build_with_int8_fallback(int8, build=flaky, log=logs.append, out_dir=tmp_path / "engines",
                                     options=BuildOptions(batch=(1, 1, 1)), flavour="tensorrt_rtx")
    meta = json.loads(built.sidecar.read_text())["engine"]
    assert calls == [int8.name, int8.stem + "_float2.onnx"]
    assert built.path.name == int8.stem + "_float2_rtx_b1-1-1.engine" and built.path.stat().st_size > 100_000
    assert meta["source_onnx"]["path"] == str((tmp_path / "engines" / calls[1]).resolve())
    assert [s["blocks_in_float"] for s in meta["int8_fallback"]["steps"]] == [1, 2]
    assert meta["precision"] == "int8" and meta["strongly_typed"] is True
