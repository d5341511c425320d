"""OpenVINO backend: the contract checks, the precision OpenVINO really compiled (f32, INT8 kernels, never a
silent bf16, read from the compiled model), one infer request shared safely by threads, fer-bench --backend,
the INT8 gate on OpenVINO and the CPU-backends benchmark script."""
from __future__ import annotations

import importlib.util
import json
import sys
import threading

import numpy as np
import pytest

from conftest import needs_export_stack, synthetic_faces
from fer_edge.runtime import ModelContract, load
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="needs OpenVINO: pip install 'fer-edge[openvino]' "
                                                             "(scripts/test.sh installs it)")
LOW_FLOAT = {"bf16", "f16"}


@pytest.fixture(scope="module")
def artifacts(probe_exported, synthetic_npz, tmp_path_factory):
    """FP32, FP16 and an INT8 Q/DQ artifact whose accuracy gate ran on OpenVINO."""
    from fer_edge.calibration.int8_export import Int8Options, export_int8
    logs = []
    options = Int8Options(calib_count=128, calib_method="max", gate_backend="openvino")
    int8 = export_int8(probe_exported["fp32"].path, options, str(synthetic_npz),
                       out_dir=tmp_path_factory.mktemp("int8_ov"), log=logs.append)
    return {"fp32": probe_exported["fp32"].path, "fp16": probe_exported["fp16"].path, "int8": int8, "logs": logs}


def _quantized_convs(path):
    """(Conv nodes whose weights come from a DequantizeLinear, all Conv nodes) in an ONNX file."""
    import onnx
    graph = onnx.load(str(path)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    return sum(node.input[1] in dequantized for node in convs), len(convs)


def _faces(n=24, seed=5):
    return synthetic_faces(n, size=32, seed=seed)


def test_missing_openvino_names_the_extra(monkeypatch):
    from fer_edge.runtime.openvino_backend import import_openvino
    monkeypatch.setitem(sys.modules, "openvino", None)    # import openvino now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'fer-edge\[openvino\]'"):
        import_openvino()


def test_fer_bench_backend_list_is_checked():
    from fer_edge.cli.bench import UsageError, parse_backends
    assert parse_backends("onnxruntime, openvino", ["a.onnx"]) == ["onnxruntime", "openvino"]
    assert parse_backends(None, ["a.onnx"]) is None
    for bad in ("tensorrt", "openvino,openvino", ","):
        with pytest.raises(UsageError, match="--backend"):
            parse_backends(bad, ["a.onnx"])
    with pytest.raises(UsageError, match="engines run on TensorRT"):
        parse_backends("openvino", ["a.engine"])


@needs_export_stack
def test_gate_backend_flag_reaches_the_int8_options():
    from fer_edge.cli.export import build_parser
    from fer_edge.cli.int8_args import options_from_args
    assert options_from_args(build_parser().parse_args(["--int8"])).gate_backend == "onnxruntime"
    args = build_parser().parse_args(["--int8", "--gate-backend", "openvino"])
    assert options_from_args(args).gate_backend == "openvino"


@needs_export_stack
@needs_openvino
def test_float_artifacts_compile_to_f32_kernels_and_match_onnxruntime(artifacts):
    import openvino as ov
    from fer_edge.runtime.openvino_backend import executed_kernels
    faces, _ = _faces()
    for precision, tolerance in (("fp32", 1e-4), ("fp16", 2e-2)):
        with load(artifacts[precision], backend="openvino", threads=1) as model, \
                load(artifacts[precision], threads=1) as reference:
            compiled = model.backend.compiled
            # What OpenVINO compiled, not what fer-edge asked for: the property and every layer's kernel.
            assert compiled.get_property(ov.properties.hint.inference_precision) == ov.Type.f32
            assert compiled.get_property(ov.properties.inference_num_threads) == 1
            kernels = executed_kernels(compiled)
            assert set(kernels["Convolution"]) == {"f32"} and set(kernels["FullyConnected"]) == {"f32"}
            assert not {p for counts in kernels.values() for p in counts} & LOW_FLOAT, kernels
            assert model.precision == precision and model.contract == reference.contract
            ours, theirs = model.predict_proba(faces), reference.predict_proba(faces)
            np.testing.assert_allclose(ours, theirs, atol=tolerance)
            assert (ours.argmax(1) == theirs.argmax(1)).all()


@needs_export_stack
@needs_openvino
def test_openvino_default_precision_would_be_refused(artifacts):
    """Without fer-edge's pin, OpenVINO runs an FP32 model in bf16 on CPUs that have it; the check catches that."""
    import openvino as ov
    from fer_edge.runtime.openvino_backend import executed_kernels, precision_problems
    core = ov.Core()
    default = core.get_property("CPU", ov.properties.hint.inference_precision).get_type_name()
    if default == "f32":
        pytest.skip("this CPU's OpenVINO default is already f32 (no bf16/f16 support): nothing to refuse")
    unpinned = core.compile_model(str(artifacts["fp32"]), "CPU")
    problems = precision_problems("fp32", executed_kernels(unpinned), default)
    assert any("reduced float precision" in p for p in problems), problems


@needs_export_stack
@needs_openvino
def test_int8_artifact_runs_on_int8_kernels_and_passes_its_openvino_gate(artifacts):
    from fer_edge.runtime.openvino_backend import executed_kernels
    sidecar = json.loads(artifacts["int8"].with_name(artifacts["int8"].name + ".json").read_text())
    assert sidecar["gate"]["backend"] == "openvino" and sidecar["gate"]["after"]["agreement"] >= 0.99
    assert any("openvino" in line for line in artifacts["logs"])
    faces, _ = _faces(64)
    with load(artifacts["int8"], backend="openvino", threads=1) as int8, \
            load(artifacts["fp32"], backend="openvino", threads=1) as fp32:
        kernels = executed_kernels(int8.backend.compiled)
        convs = kernels["Convolution"]
        # Every conv the recipe quantized runs on an INT8 kernel; the ones it kept float run in f32.
        quantized, total = _quantized_convs(artifacts["int8"])
        assert convs.get("u8", 0) + convs.get("i8", 0) == quantized > 0, kernels
        assert convs.get("f32", 0) == total - quantized, kernels
        assert not {p for counts in kernels.values() for p in counts} & LOW_FLOAT, kernels
        assert int8.backend.bench_settings["kernels"]["Convolution"] == convs
        agreement = (int8.predict_proba(faces).argmax(1) == fp32.predict_proba(faces).argmax(1)).mean()
        assert agreement >= 0.95


@needs_export_stack
@needs_openvino
def test_contract_checks_refuse_what_the_graph_or_kernels_contradict(artifacts, tmp_path):
    from fer_edge.runtime.openvino_backend import OpenVinoBackend
    fp32, int8 = OpenVinoBackend(artifacts["fp32"]), OpenVinoBackend(artifacts["int8"])
    contract = fp32.embedded_contract("fp32")
    assert contract is not None and contract.input_size == 32
    with pytest.raises(BackendUnavailableError, match="no convolution or matmul runs on INT8 kernels"):
        fp32.check_contract(contract.with_precision("int8"), "fp32.onnx")
    with pytest.raises(BackendUnavailableError, match="run on INT8 kernels"):
        int8.check_contract(contract, "int8.onnx")
    other = ModelContract.from_dict({**contract.to_dict(), "input_size": 48})
    with pytest.raises(ContractError, match="does not fit the graph"):
        fp32.check_contract(other, "fp32.onnx")
    with pytest.raises(ModelLoadError, match="OpenVINO cannot read it"):
        OpenVinoBackend(b"not an onnx model")
    with pytest.raises(ModelLoadError, match="providers"):
        load(artifacts["fp32"], backend="openvino", providers=["CPUExecutionProvider"])


@needs_export_stack
@needs_openvino
def test_threads_share_the_infer_requests_safely(artifacts):
    """Several threads on one model, each with its own batch size: every call returns its own batch's outputs
    (the requests are locked), and each batch size keeps its own request, so shapes never change under one."""
    with load(artifacts["int8"], backend="openvino", threads=1) as model:
        batches = [model.preprocess(_faces(n, seed=n)[0]) for n in (1, 3, 5, 8)]
        expected = [model.infer(b) for b in batches]
        start, failures = threading.Barrier(len(batches)), []

        def worker(i):
            start.wait()
            for _ in range(15):
                out = model.infer(batches[i])
                if out.shape != expected[i].shape or not np.allclose(out, expected[i], atol=1e-5):
                    failures.append(i)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures
        assert sorted(model.backend._requests) == [1, 3, 5, 8]
    with pytest.raises(ModelLoadError, match="closed"):
        model.backend.run(batches[0])


@needs_export_stack
@needs_openvino
def test_fer_bench_times_each_model_on_each_backend_in_one_run(artifacts, synthetic_npz):
    from fer_edge.benchmarks.fer_bench import BenchOptions, run_benchmark
    from fer_edge.benchmarks.report import markdown_table
    options = BenchOptions(models=[str(artifacts["fp32"]), str(artifacts["int8"])],
                           backends=["onnxruntime", "openvino"], batches=[1, 4], warmup=1, iterations=2, threads=1,
                           data=str(synthetic_npz), limit=64, progress=False)
    report = run_benchmark(options, log=lambda m: None)
    models = report["models"]
    assert [(m["precision"], m["backend"]) for m in models] == [
        ("fp32", "onnxruntime"), ("fp32", "openvino"), ("int8", "onnxruntime"), ("int8", "openvino")]
    assert report["settings"]["reference_backend"] == "onnxruntime"
    assert models[1]["agreement_with_reference"] == 1.0        # the same FP32 graph on two backends
    assert models[3]["bench_settings"]["kernels"]["Convolution"].get("u8")
    assert all(set(m["latency"]) == {"1", "4"} for m in models)
    assert markdown_table(models, [1, 4]).count("| openvino |") == 2


@needs_export_stack
@needs_openvino
def test_cpu_backends_script_writes_ratios_against_onnxruntime_fp32(artifacts, synthetic_npz, tmp_path):
    from fer_edge.benchmarks import cpu_backends
    out = tmp_path / "cpu"
    assert cpu_backends.main(["--fp32", str(artifacts["fp32"]), "--int8", str(artifacts["int8"]),
                              "--data", str(synthetic_npz), "--limit", "48", "--iterations", "2", "--warmup", "1",
                              "--no-progress", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["precision"], r["backend"]) for r in rows] == [
        ("fp32", "onnxruntime"), ("fp32", "openvino"), ("int8", "onnxruntime"), ("int8", "openvino")]
    for batch in ("1", "8"):
        assert rows[0]["batches"][batch]["end_to_end"]["ratio"] == 1.0
        for row in rows:
            stats = row["batches"][batch]["end_to_end"]
            assert stats["ratio"] == pytest.approx(stats["faces_per_s"] / rows[0]["batches"][batch]["end_to_end"]
                                                   ["faces_per_s"], abs=2e-3)   # ratios are rounded to 3 decimals
    if importlib.util.find_spec("skimage") is not None:
        assert rows[0]["agreement_lfw"] == 1.0 and rows[1]["agreement_lfw"] == 1.0     # FP32 on both backends
        assert 0.5 <= rows[3]["agreement_lfw"] <= 1.0      # a broken INT8 file agrees on ~1 face in 7
    assert f"**Verdict:** INT8 `{artifacts['int8']}` on " in out.with_suffix(".md").read_text()
