"""INT8 Q/DQ export: TensorRT's Q/DQ rules, the runtime contract, the cache, and the accuracy gate."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FER2013_LABELS, needs_export_stack, synthetic_faces

pytestmark = needs_export_stack

CONV_EXP = "/blocks/blocks.1/blocks.1.0/conv_exp/"  # exporter versions name the node .../Conv or .../conv/Conv
CONV_PWL = "/blocks/blocks.1/blocks.1.0/conv_pwl/"


def _options(**kw):
    from fer_edge.calibration.int8_export import Int8Options
    base = dict(calib_count=128, calib_method="max")
    base.update(kw)
    return Int8Options(**base)


@pytest.fixture(scope="module")
def probe_exported(synthetic_npz, tmp_path_factory):
    """Like conftest's `exported`, but seconds instead of minutes on a busy 2-core machine: a random-init
    tf_efficientnetv2_b0 whose classifier is ridge-fitted on its own features (decisive logits, 100% on the
    synthetic faces), exported to FP32 ONNX with the usual parity check."""
    import torch
    from fer_edge.export.exporter import export_model
    from fer_edge.models.timm_compat import import_timm
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnetv2_b0", num_classes=7, in_chans=1).eval()
    x, y = synthetic_faces(512)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(
            torch.from_numpy((x[:, None].astype(np.float32) / 255 - 0.5) / 0.5)), pre_logits=True).double()
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    target = torch.full((len(y), 7), -4.0, dtype=torch.float64)
    target[torch.arange(len(y)), torch.from_numpy(y)] = 4.0
    w = torch.linalg.solve(z.T @ z + 10 * torch.eye(z.shape[1], dtype=torch.float64), z.T @ target)
    model.classifier.weight.data = (w / sd[:, None]).T.float()
    model.classifier.bias.data = (-(mu / sd) @ w).float()
    ckpt = tmp_path_factory.mktemp("probe") / "probe.pt"
    torch.save({"format": "fer_edge.checkpoint.v1", "arch": "tf_efficientnetv2_b0", "img_size": 32, "in_chans": 1,
                "labels": FER2013_LABELS, "mean": [0.5], "std": [0.5], "interpolation": "area",
                "state_dict": model.state_dict()}, ckpt)
    return export_model(checkpoint=str(ckpt), out_dir=str(tmp_path_factory.mktemp("fp32")),
                        parity_data=str(synthetic_npz), log=lambda m: None)


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
    for node in qdq:  # symmetric int8: every zero point is int8 and 0, every scale positive
        zero_point, scale = inits[node.input[2]], inits[node.input[1]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
        assert (scale > 0).all()
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    for conv in convs:
        act, weight = producer.get(conv.input[0]), producer.get(conv.input[1])
        assert act is not None and act.op_type == "DequantizeLinear", f"{conv.name}: input not quantized"
        assert weight is not None and weight.op_type == "DequantizeLinear", f"{conv.name}: weight not quantized"
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        out_channels = inits[weight.input[1]].shape
        weight_q = producer[weight.input[0]]
        assert axis == 0 and out_channels == (inits[weight_q.input[0]].shape[0],), conv.name
        assert len(conv.input) < 3 or conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32  # float bias
    for out in proto.graph.output:  # no Q/DQ on the graph output
        assert producer[out.name].op_type not in ("QuantizeLinear", "DequantizeLinear")
    for node in proto.graph.node:
        if node.op_type == "Add":  # conv -> Add has no Q/DQ (fusable residual); the skip input keeps one
            sources = [producer[i] for i in node.input]
            assert [s.op_type for s in sources].count("Conv") == 1 and \
                [s.op_type for s in sources].count("DequantizeLinear") == 1, node.name
        if node.op_type == "Sigmoid":  # Conv -> SiLU stays fusable: nothing quantized in between
            assert producer[node.input[0]].op_type == "Conv"


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
                        lambda model: [n for n in real(model) if n[0].startswith(("/conv_stem", "/blocks/blocks.0/"))])
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
