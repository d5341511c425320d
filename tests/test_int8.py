"""INT8 Q/DQ export: TensorRT's Q/DQ rules, the runtime contract, the cache, and the accuracy gate."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from conftest import needs_export_stack, synthetic_faces

pytestmark = needs_export_stack
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None

CONV_EXP = "/blocks/blocks.1/blocks.1.0/conv_exp/"  # exporter versions name the node .../Conv or .../conv/Conv
CONV_PWL = "/blocks/blocks.1/blocks.1.0/conv_pwl/"


def _options(**kw):
    from fer_edge.calibration.int8_export import Int8Options
    base = dict(calib_count=128, calib_method="max")
    base.update(kw)
    return Int8Options(**base)


@pytest.fixture(scope="module")
def int8_run(probe_exported, synthetic_npz, tmp_path_factory):
    from fer_edge.calibration.int8_export import export_int8
    out = tmp_path_factory.mktemp("int8")
    logs = []
    path = export_int8(probe_exported["fp32"].path, _options(), str(synthetic_npz), out_dir=out, log=logs.append)
    return path, logs, out


def _node_by_prefix(proto, prefix):
    return next(n for n in proto.graph.node if n.op_type == "Conv" and n.name.startswith(prefix))


def test_qdq_follows_tensorrt_rules(int8_run):
    import onnx
    from onnx import numpy_helper
    path, _, _ = int8_run
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:  # symmetric int8: every zero point is int8 and 0, every scale positive FP16 (opset 19)
        zero_point, scale = inits[node.input[2]], inits[node.input[1]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        assert scale.dtype == np.float16 and (scale > 0).all(), node.name
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    # Squeeze-excite convs (timm names them .../se/conv_reduce, .../se/conv_expand) act on pooled 1x1 tensors:
    # tiny GEMVs that stay FP16; every other conv is INT8.
    se = [c for c in convs if "/se/conv_" in c.name]
    assert len(se) == 2 * sum(n.op_type == "ReduceMean" for n in proto.graph.node) > 0
    for conv in convs:
        act, weight = producer.get(conv.input[0]), producer.get(conv.input[1])
        if conv in se:
            assert act.op_type != "DequantizeLinear" and weight is None, f"{conv.name}: SE conv quantized"
            continue
        assert act is not None and act.op_type == "DequantizeLinear", f"{conv.name}: input not quantized"
        assert weight is not None and weight.op_type == "DequantizeLinear", f"{conv.name}: weight not quantized"
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        out_channels = inits[weight.input[1]].shape
        weight_q = producer[weight.input[0]]
        assert axis == 0 and out_channels == (inits[weight_q.input[0]].shape[0],), conv.name
        assert len(conv.input) < 3 or conv.input[2] in inits and inits[conv.input[2]].dtype == np.float16  # FP16 bias
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")  # 7 outputs: float, not INT8
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in gemm.input), gemm.input
    for out in proto.graph.output:  # no Q/DQ on the graph output
        assert producer[out.name].op_type not in ("QuantizeLinear", "DequantizeLinear")
    for node in proto.graph.node:
        if node.op_type == "Add":  # conv -> Add has no Q/DQ (fusable residual); the skip input keeps one
            sources = [producer[i] for i in node.input]
            assert [s.op_type for s in sources].count("Conv") == 1 and \
                [s.op_type for s in sources].count("DequantizeLinear") == 1, node.name
        if node.op_type == "Sigmoid":  # Conv -> SiLU stays fusable: nothing quantized in between
            assert producer[node.input[0]].op_type == "Conv"


def test_no_fp32_compute_between_the_input_and_output_casts(int8_run):
    """Strong typing runs every op in its tensors' type: FP32 input and output, everything else INT8 or FP16."""
    import onnx
    from onnx import TensorProto
    path, _, _ = int8_run
    proto = onnx.load(str(path))
    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(inferred.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    readers = [n for n in graph.node if graph.input[0].name in n.input]
    assert len(readers) == 1, [n.op_type for n in readers]  # the input cast is the only reader of the input
    first, last = readers[0], next(n for n in graph.node if graph.output[0].name in n.output)
    assert first.op_type == last.op_type == "Cast"
    assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    inner = [n for n in graph.node if n is not first and n is not last]
    fp32 = [(n.name, t) for n in inner for t in list(n.input) + list(n.output)
            if t and types.get(t, TensorProto.FLOAT) == TensorProto.FLOAT]
    assert fp32 == [], fp32[:5]
    assert {types[t] for n in inner if n.op_type == "Conv" for t in n.output} == {TensorProto.FLOAT16}


@pytest.mark.skipif(not HAS_RTX, reason="needs tensorrt-rtx (pip install tensorrt-rtx-cu12) to parse ONNX on CPU")
def test_tensorrt_parses_a_strongly_typed_int8_fp16_network_and_builds_it(int8_run):
    """What TensorRT itself infers: in the strongly typed network parsed from the INT8 file, no layer but the output
    cast computes in FP32 (constants aside); and the network builds (TensorRT-RTX builds on a CPU)."""
    import tensorrt_rtx as trt
    path, _, _ = int8_run
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    fp32 = [layer for layer in layers if layer.type != trt.LayerType.CONSTANT
            and any(layer.get_output(j).dtype == trt.float32 for j in range(layer.num_outputs))]
    assert [(layer.type, layer.get_output(0).name) for layer in fp32] == \
        [(trt.LayerType.CAST, network.get_output(0).name)], [(layer.name, layer.type) for layer in fp32][:5]
    convs = [layer for layer in layers if layer.type == trt.LayerType.CONVOLUTION]
    assert convs and all(layer.get_output(0).dtype == trt.float16 for layer in convs)
    assert sum(layer.type == trt.LayerType.QUANTIZE for layer in layers) > 0
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = tuple(network.get_input(0).shape)[1:]
    profile.set_shape(network.get_input(0).name, (1, *shape), (1, *shape), (2, *shape))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


def test_int8_runs_in_the_runtime_with_an_int8_contract(int8_run, synthetic_npz, probe_exported):
    from fer_edge.runtime import model as runtime_model
    path, logs, _ = int8_run
    model = runtime_model.load(str(path))
    assert model.contract.precision == "int8" and model.precision == "int8"
    faces = np.load(synthetic_npz)["x"][:40]
    fp32 = runtime_model.load(str(probe_exported["fp32"].path))
    agreement = (model.predict_proba(faces).argmax(1) == fp32.predict_proba(faces).argmax(1)).mean()
    assert agreement >= 0.9
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["contract"]["precision"] == "int8"
    calib, gate = sidecar["calibration"], sidecar["gate"]
    assert calib["method"] == "max" and calib["count"] == 128 and len(calib["hash"]) == 16
    assert gate["held_apart_from_calibration"] and gate["validation_count"] == 172
    for key in ("before", "after"):
        assert {"agreement", "fp32_top1", "int8_top1", "drop_points"} <= set(gate[key])
    assert "kept_in_higher_precision" in gate and any("gate" in m for m in logs)


def test_contract_records_the_real_int8_fp16_mix(int8_run):
    """precision stays "int8" (readers keep working); precision_mix says what is not INT8, counted on the graph."""
    import onnx
    from fer_edge.runtime.artifact_io import sidecar_contract
    path, _, _ = int8_run
    contract = sidecar_contract(path)
    mix = contract.precision_mix
    graph = onnx.load(str(path)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    int8 = [n for n in weighted if n.input[0] in dq_out and n.input[1] in dq_out]
    assert mix["float_dtype"] == "float16" and mix["int8_layers"] == len(int8) > 0
    # 32 squeeze-excite convs + the classifier, plus the layers of any block the gate kept in float
    assert mix["float_layers"] == len(weighted) - len(int8) >= 33
    assert "classifier" in mix["float_blocks"] and mix["blocks"] == 24
    gate_kept = json.loads(path.with_name(path.name + ".json").read_text())["gate"]["kept_in_higher_precision"]
    assert set(gate_kept["blocks"]) | {"classifier"} == set(mix["float_blocks"])
    assert mix["float_share"] == round(len(mix["float_blocks"]) / 24, 4)
    assert contract.precision == "int8"
    assert contract.precision_label() == f"int8+fp16 ({len(mix['float_blocks'])}/24 blocks fp16)"
    quantization = json.loads(path.with_name(path.name + ".json").read_text())["artifact"]["quantization"]
    assert quantization["float_dtype"] == "float16" and len(quantization["float_by_recipe"]) == 33


def test_fer_bench_shows_the_int8_mix(int8_run, probe_exported, synthetic_npz, tmp_path):
    import csv
    from fer_edge.benchmarks.fer_bench import BenchOptions, run_benchmark
    from fer_edge.benchmarks.report import markdown_table
    from fer_edge.runtime.artifact_io import sidecar_contract
    path, _, _ = int8_run
    label = sidecar_contract(path).precision_label()
    assert label.startswith("int8+fp16 (")
    report = run_benchmark(BenchOptions(models=[str(probe_exported["fp32"].path), str(path)], batches=[1], warmup=1,
                                        iterations=2, threads=1, data=str(synthetic_npz), limit=32, progress=False,
                                        report_dir=tmp_path), log=lambda m: None)
    assert [m["precision_label"] for m in report["models"]] == ["fp32", label]
    assert report["models"][1]["precision_mix"]["float_dtype"] == "float16"
    assert f"| {path.name} | {label} |" in markdown_table(report["models"], [1])
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert {r["precision_label"] for r in rows if r["precision"] == "int8"} == {label}


def test_gate_replays_on_the_same_faces_with_the_same_rule(int8_run, probe_exported, synthetic_npz, tmp_path):
    """What gpu_check does with the engine's logits, done with the INT8 ONNX's own: the same numbers as the gate."""
    from fer_edge.calibration.gate import onnx_logits
    from fer_edge.calibration.gate_replay import recorded_gate
    from fer_edge.runtime.errors import DataError
    path, _, _ = int8_run
    int8 = tmp_path / path.name
    for src, dst in ((path, int8), (path.with_name(path.name + ".json"), tmp_path / (path.name + ".json"))):
        shutil.copy(src, dst)
    with pytest.raises(DataError, match="FP32 artifact it was made from .* not next to it"):
        recorded_gate(int8)
    fp32 = probe_exported["fp32"].path
    for name in (fp32.name, fp32.name + ".json"):
        shutil.copy(fp32.parent / name, tmp_path / name)
    gate = recorded_gate(int8)
    recorded = json.loads((tmp_path / (path.name + ".json")).read_text())["gate"]
    assert len(gate.tensors) == recorded["validation_count"] == 172
    reference = gate.fp32_logits("input")
    verdict = gate.judge(reference, onnx_logits(int8.read_bytes(), gate.tensors))
    assert verdict["candidate"] == recorded["after"] and verdict["passed"] and verdict["rule"] == recorded["rule"]
    broken = np.roll(reference, 3, axis=1)                # an engine whose logits come out in the wrong order
    assert not gate.judge(reference, broken)["passed"]
    other = tmp_path / "other.npz"                         # faces moved or changed: refused, not silently used
    data = dict(np.load(synthetic_npz))
    data["x"] = data["x"][::-1].copy()
    np.savez(other, **data)
    with pytest.raises(DataError, match="not the ones the gate used"):
        recorded_gate(int8, calib=str(other))


def test_cpu_target_and_float32_recipe_keep_the_earlier_graph(probe_exported):
    """--int8-target cpu is untouched (opset 17, FP32, every conv quantized), and TrtRecipe('float32', False) is
    the earlier TensorRT graph, the one TensorRT 8.6 can parse: same Q/DQ placement, FP32 scales."""
    import onnx
    from onnx import TensorProto
    from fer_edge.calibration import quantize
    from fer_edge.runtime.preprocess import prepare_batch
    fp32 = probe_exported["fp32"].path.read_bytes()
    tensors = prepare_batch(synthetic_faces(16, seed=4)[0], probe_exported["fp32"].contract)
    ranges = quantize.compute_ranges(fp32, "input", tensors, "max")

    def graph(**kw):
        proto = onnx.load_from_string(quantize.quantize(fp32, ranges, "max", **kw))
        scales = {t.data_type for t in proto.graph.initializer if t.name.endswith("_scale")}
        return proto, max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), scales
    for kw in ({"target": "cpu"}, {"recipe": quantize.TrtRecipe("float32", False)}):
        proto, opset, scales = graph(**kw)
        assert opset == 17 and scales == {TensorProto.FLOAT}, kw
        assert "Cast" not in {n.op_type for n in proto.graph.node}
        assert all(quantize.int8_layers(proto.SerializeToString()).values()), kw  # SE convs and Gemm included
    new, opset, scales = graph()
    assert opset == 19 and scales == {TensorProto.FLOAT16}
    layers = quantize.int8_layers(new.SerializeToString())
    assert sorted(n for n, q in layers.items() if not q) == sorted(quantize.float_by_recipe(fp32))


def test_openvino_still_runs_the_int8_fp16_file_on_int8_kernels(int8_run, synthetic_npz):
    pytest.importorskip("openvino")
    from fer_edge.runtime import model as runtime_model
    path, _, _ = int8_run
    faces = np.load(synthetic_npz)["x"][:60]
    on_openvino = runtime_model.load(str(path), backend="openvino")   # refuses an INT8 file without INT8 kernels
    assert on_openvino.backend.name == "openvino"
    agreement = (on_openvino.predict_proba(faces).argmax(1) == runtime_model.load(str(path)).predict_proba(faces)
                 .argmax(1)).mean()
    assert agreement >= 0.9


def test_second_run_reuses_the_cache_and_new_weights_rebuild_it(int8_run, probe_exported, synthetic_npz, tmp_path):
    from fer_edge.calibration.int8_export import export_int8
    from fer_edge.runtime.artifact_io import sidecar_path
    _, _, out = int8_run
    logs = []
    export_int8(probe_exported["fp32"].path, _options(), str(synthetic_npz), out_dir=out, log=logs.append)
    assert any("tensors: reused from cache" in m for m in logs) and any("ranges (max): reused" in m for m in logs)
    # Same graph, other weights sha in the contract: the ranges must be rebuilt and the reason printed.
    fp32_copy = tmp_path / probe_exported["fp32"].path.name
    shutil.copy(probe_exported["fp32"].path, fp32_copy)
    sidecar = json.loads(sidecar_path(probe_exported["fp32"].path).read_text())
    sidecar["contract"]["source_weights_sha256"] = "f" * 64
    sidecar_path(fp32_copy).write_text(json.dumps(sidecar))
    logs = []
    export_int8(fp32_copy, _options(calib_cache=str(out / ".calib-cache")), str(synthetic_npz), out_dir=tmp_path,
                log=logs.append)
    assert any("calibration cache stale" in m and "weights changed" in m for m in logs), logs


def _outlier_model(fp32_path, out_dir, factor=1000.0):
    """Same function, but one channel of blocks.1.0's expand conv is huge: its per-tensor activation range
    crushes every other channel feeding conv_pwl when quantized."""
    import onnx
    from onnx import numpy_helper
    from fer_edge.runtime.artifact_io import sidecar_path
    proto = onnx.load(str(fp32_path))
    inits = {t.name: t for t in proto.graph.initializer}
    exp, pwl = _node_by_prefix(proto, CONV_EXP), _node_by_prefix(proto, CONV_PWL)

    def scale(name, fn):
        array = numpy_helper.to_array(inits[name]).copy()
        fn(array)
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    scale(exp.input[1], lambda w: w.__setitem__(0, w[0] * factor))
    scale(exp.input[2], lambda b: b.__setitem__(0, b[0] * factor))
    scale(pwl.input[1], lambda w: w.__setitem__((slice(None), 0), w[:, 0] / factor))
    path = out_dir / fp32_path.name
    path.write_bytes(proto.SerializeToString())
    shutil.copy(sidecar_path(fp32_path), sidecar_path(path))
    return path


def test_gate_finds_and_excludes_the_sensitive_block(probe_exported, synthetic_npz, tmp_path):
    from fer_edge.calibration.int8_export import export_int8
    fp32 = _outlier_model(probe_exported["fp32"].path, tmp_path)
    logs = []
    path = export_int8(fp32, _options(max_drop=0.5), str(synthetic_npz), out_dir=tmp_path, log=logs.append)
    gate = json.loads(path.with_name(path.name + ".json").read_text())["gate"]
    assert gate["sensitivity"][0]["group"] == "blocks.1.0"
    assert "blocks.1.0" in gate["kept_in_higher_precision"]["blocks"]
    assert any(n.startswith(CONV_PWL) for n in gate["kept_in_higher_precision"]["nodes"])
    assert gate["after"]["agreement"] > gate["before"]["agreement"] + 0.2
    assert gate["after"]["drop_points"] <= 0.5 < gate["before"]["drop_points"]


def test_failed_gate_writes_nothing(probe_exported, synthetic_npz, tmp_path, monkeypatch):
    from fer_edge.calibration import int8_export, quantize
    from fer_edge.calibration.gate import GateFailed
    fp32 = _outlier_model(probe_exported["fp32"].path, tmp_path)
    real = quantize.quantizable_nodes
    # Offer the gate only blocks that do not contain the outlier: it cannot pass, and must say so.
    monkeypatch.setattr(quantize, "quantizable_nodes",
                        lambda model, *recipe: [n for n in real(model, *recipe)
                                                if n[0].startswith(("/conv_stem", "/blocks/blocks.0/"))])
    out = tmp_path / "out"
    with pytest.raises(GateFailed, match="Nothing was written"):
        int8_export.export_int8(fp32, _options(), str(synthetic_npz), out_dir=out, log=lambda m: None)
    assert not list(out.glob("*.onnx*"))


def test_synthesis_matches_batchnorm_statistics_better_than_noise(exported):
    """BatchNorm-matched synthesis (the shipped calibration set's recipe): on a small CNN whose BatchNorm statistics
    were recorded on faces, the synthesised images match those statistics far better than noise does, and come
    out as uint8 images of the contract's size."""
    import torch
    from fer_edge.calibration.synthesize import SynthesisOptions, batchnorm_loss, synthesize
    from fer_edge.runtime.preprocess import prepare_batch
    contract = exported["fp32"].contract
    torch.manual_seed(0)
    layers = []
    for c_in, c_out in ((1, 8), (8, 16), (16, 16)):
        layers += [torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), torch.nn.BatchNorm2d(c_out, momentum=None),
                   torch.nn.SiLU()]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 7))
    faces, _ = synthetic_faces(256, size=contract.input_size, seed=3)
    with torch.no_grad():  # momentum=None: the running statistics become the exact average over the faces
        model.train()(torch.from_numpy(prepare_batch(faces, contract)))
    result = synthesize(model, contract, SynthesisOptions(count=16, batch=16, steps=60), log=lambda m: None)
    x = result["x"]
    assert x.dtype == np.uint8 and x.shape == (16, contract.input_size, contract.input_size)
    noise = np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    synthetic_loss = batchnorm_loss(model, torch.from_numpy(prepare_batch(x, contract)))
    noise_loss = batchnorm_loss(model, torch.from_numpy(prepare_batch(noise, contract)))
    assert synthetic_loss < 0.3 * noise_loss, (synthetic_loss, noise_loss)
