"""fer-export: real timm model -> ONNX FP32/FP16 with contract, parity, atomic writes and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FER2013_LABELS, needs_export_stack

pytestmark = [needs_export_stack, pytest.mark.slow]


def test_fp32_and_fp16_artifacts_carry_contract_and_parity(exported):
    import onnx
    assert set(exported) == {"fp32", "fp16"}
    for precision, artifact in exported.items():
        assert artifact.path.name == f"tf_efficientnetv2_b0_32px_fer2013_{precision}.onnx"
        proto = onnx.load(str(artifact.path))
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
        contract = meta["fer_edge.contract"]
        assert contract["precision"] == precision
        assert contract["labels"] == FER2013_LABELS
        assert (contract["input_size"], contract["channels"], contract["color_order"]) == (32, 1, "GRAY")
        assert len(contract["source_weights_sha256"]) == 64
        sidecar = json.loads(artifact.sidecar.read_text())
        assert sidecar["contract"] == contract
        assert sidecar["parity"]["passed"] and sidecar["parity"]["images"] == 300
        assert set(sidecar["parity"]) == {"precision", "images", "data", "top1_agreement", "max_abs_logit_diff",
                                          "mean_abs_logit_diff", "required_agreement", "passed"}
        assert sidecar["artifact"]["opset"] == 17
        # Dynamic batch: the input's first dimension is symbolic.
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert exported["fp32"].parity.comparison.top1_agreement >= 0.999
    # Float32 kernels differ between CPUs (oneDNN on AMD vs Intel): up to 1.3e-3 was seen on a Xeon for this
    # decisive fixture model's logits. A wrong export moves logits by whole units.
    assert exported["fp32"].parity.comparison.max_abs_diff < 1e-2
    assert exported["fp16"].parity.comparison.top1_agreement >= 0.995


def test_fp16_graph_is_explicit_fp16_with_fp32_io(exported):
    import onnx
    proto = onnx.load(str(exported["fp16"].path))
    f16 = onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    assert conv_weights and all(inits[w] == f16 for w in conv_weights if w in inits)
    # onnxslim removed the dynamic SAME-padding arithmetic of the tf_ variant.
    assert sum(1 for n in proto.graph.node if n.op_type in ("Shape", "Gather", "Unsqueeze")) == 0


def test_cli_writes_named_artifacts_and_prints_paths(fitted_checkpoint, synthetic_npz, tmp_path, capsys):
    from fer_edge.cli.export import main
    rc = main(["--checkpoint", str(fitted_checkpoint), "--out", str(tmp_path / "a"),
               "--parity-data", str(synthetic_npz), "--parity-count", "50"])
    out = capsys.readouterr().out
    assert rc == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["tf_efficientnetv2_b0_32px_fer2013_fp32.onnx", "tf_efficientnetv2_b0_32px_fer2013_fp32.onnx.json"]
    assert "wrote" in out and "parity fp32" in out


def test_failed_parity_writes_nothing(fitted_checkpoint, synthetic_npz, tmp_path, monkeypatch):
    from fer_edge.export import exporter, parity
    monkeypatch.setitem(parity.PARITY_MIN_AGREEMENT, "fp32", 1.01)  # impossible threshold: the check must fail
    with pytest.raises(exporter.ExportError, match="nothing written"):
        exporter.export_model(checkpoint=str(fitted_checkpoint), out_dir=str(tmp_path / "o"),
                              parity_data=str(synthetic_npz), parity_count=20, log=lambda m: None)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_plain_state_dict_needs_arch_and_size(fitted_checkpoint, tmp_path, capsys):
    import torch
    from fer_edge.cli.export import main
    state = torch.load(fitted_checkpoint, weights_only=True)["state_dict"]
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    assert main(["--checkpoint", str(plain), "--out", str(tmp_path)]) == 2
    assert "--arch" in capsys.readouterr().err


def test_pickled_checkpoint_refused_without_opt_in(tmp_path, capsys):
    import argparse
    import torch
    from fer_edge.cli.export import main
    bad = tmp_path / "pickled.pt"
    # Old training scripts store their argparse.Namespace: loading it needs full unpickling.
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, bad)
    assert main(["--checkpoint", str(bad)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err


def test_wrong_arch_names_the_mismatch(fitted_checkpoint, capsys):
    from fer_edge.cli.export import main
    assert main(["--checkpoint", str(fitted_checkpoint), "--arch", "tf_efficientnetv2_b1"]) == 2
    assert "contradicts" in capsys.readouterr().err


def test_safetensors_checkpoint_with_metadata(fitted_checkpoint, synthetic_npz, tmp_path):
    import torch
    from safetensors.torch import save_file
    from fer_edge.export.exporter import export_model
    ckpt = torch.load(fitted_checkpoint, weights_only=True)
    meta = {k: ckpt[k] for k in ("arch", "img_size", "in_chans", "labels", "mean", "std", "interpolation")}
    st = tmp_path / "w.safetensors"
    save_file({k.removeprefix("module."): v.half() for k, v in ckpt["state_dict"].items() if v.is_floating_point()},
              str(st), metadata={"fer_edge": json.dumps(meta)})
    written = export_model(checkpoint=str(st), out_dir=str(tmp_path / "o"), parity_data=str(synthetic_npz),
                           parity_count=64, log=lambda m: None)
    assert written["fp32"].contract.input_size == 32


def test_48px_export_matches_torch_exactly():
    """At 48 px a feature map of 3 is padded asymmetrically; onnxslim's folding of timm's dynamic SAME
    padding got this wrong (|dlogit| up to 2 on the reference model) until export fixed the pads."""
    import onnxruntime as ort
    import torch
    from fer_edge.models.factory import build_model
    from fer_edge.export.onnx_export import export_fp32
    from fer_edge.models.timm_compat import import_timm
    from fer_edge.runtime.contract import ModelContract
    timm = import_timm()
    torch.manual_seed(0)
    state = timm.create_model("tf_efficientnetv2_b0", num_classes=7, in_chans=1).state_dict()
    model = build_model("tf_efficientnetv2_b0", 7, 1, state)
    contract = ModelContract(arch="tf_efficientnetv2_b0", labels=FER2013_LABELS, input_size=48, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5])
    proto = export_fp32(model, contract)
    assert not [n for n in proto.graph.node if n.op_type in ("Pad", "Shape")]  # pads fused into the Convs
    x = np.random.default_rng(0).standard_normal((8, 1, 48, 48)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-7
