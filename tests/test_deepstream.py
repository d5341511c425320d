"""The DeepStream nvinfer classifier config: keys and normalisation from the contract, DeepStream's label format,
a warning for each contract field nvinfer cannot express, and the resize benchmark's smoke run."""
from __future__ import annotations

import configparser
import json

import numpy as np
import pytest

from tests.conftest import FER2013_LABELS, needs_export_stack


def contract(**changes):
    from fer_edge.runtime.contract import ModelContract
    base = dict(arch="tf_efficientnetv2_b0", labels=list(FER2013_LABELS), input_size=48, channels=1,
                color_order="GRAY", mean=[0.5], std=[0.5], output_kind="probabilities", output_name="probabilities",
                precision="fp16")
    return ModelContract(**{**base, **changes}).validate()


def properties(text: str):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser["property"]


def test_gray_model_keys_and_normalisation():
    from fer_edge.export.deepstream import DeepStreamOptions, deepstream_config
    text, warnings = deepstream_config(contract(), "m_probs.onnx", DeepStreamOptions(operate_on_class_ids=(0, 2)))
    p = properties(text)
    assert (p["network-type"], p["process-mode"], p["network-mode"], p["model-color-format"]) == ("1", "2", "2", "2")
    assert (p["infer-dims"], p["onnx-file"], p["output-blob-names"]) == ("1;48;48", "m_probs.onnx", "probabilities")
    assert float(p["net-scale-factor"]) == pytest.approx(1 / 127.5, rel=1e-9) and float(p["offsets"]) == 127.5
    assert (p["scaling-filter"], p["maintain-aspect-ratio"], p["labelfile-path"]) == ("1", "0", "labels.txt")
    assert (p["gie-unique-id"], p["operate-on-gie-id"], p["operate-on-class-ids"]) == ("2", "1", "0;2")
    assert (p["input-object-min-width"], p["input-object-min-height"]) == ("24", "24")  # half the model input
    assert (p["classifier-threshold"], p["secondary-reinfer-interval"]) == ("0", "10")
    # area kernel, 10% margin and squaring are the three things nvinfer does differently for this contract
    assert len(warnings) == 3 and all(f"# WARNING: {w}" in text for w in warnings)
    assert any("'area' kernel" in w and "benchmarks/results/deepstream_resize_fer2013.md" in w for w in warnings)
    assert any("crops 10% of the face box" in w for w in warnings)
    assert any("squares each face box" in w for w in warnings)


def test_nvinfer_equation_reproduces_the_runtime_normalisation():
    """y = net-scale-factor * (x - offsets[c]) on every pixel value equals prepare_batch's normalisation when the
    channels share one std; with different stds the error per channel is what the warning reports."""
    from fer_edge.export.deepstream import nvinfer_normalization
    from fer_edge.runtime.preprocess import normalize_batch
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    same = contract(channels=3, color_order="RGB", mean=[0.485, 0.456, 0.406], std=[0.25] * 3)
    factor, offsets, warnings = nvinfer_normalization(same)
    nvinfer = factor * (pixels.transpose(0, 3, 1, 2).astype(np.float64) - np.reshape(offsets, (1, 3, 1, 1)))
    np.testing.assert_allclose(nvinfer, normalize_batch(pixels, same), rtol=1e-5, atol=1e-5)
    assert warnings == []
    imagenet = contract(channels=3, color_order="RGB", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    factor, offsets, warnings = nvinfer_normalization(imagenet)
    assert offsets == pytest.approx([255 * m for m in imagenet.mean])
    (warning,) = warnings
    exact = normalize_batch(pixels, imagenet).astype(np.float64)
    nvinfer = factor * (pixels.transpose(0, 3, 1, 2).astype(np.float64) - np.reshape(offsets, (1, 3, 1, 1)))
    centred = np.abs(exact) > 0.5
    ratio = [float(np.median((nvinfer / np.where(centred, exact, 1))[0, c][centred[0, c]])) for c in range(3)]
    for channel, r in zip("RGB", ratio):
        assert f"{channel} {100 * (r - 1):+.1f}%" in warning


def test_contracts_nvinfer_expresses_exactly_give_no_warnings():
    from fer_edge.export.deepstream import DeepStreamOptions, deepstream_config
    text, warnings = deepstream_config(contract(interpolation="linear", crop_margin=0.0, crop_square=False,
                                                channels=3, color_order="BGR", mean=[0.5] * 3, std=[0.5] * 3,
                                                precision="fp32"), "m.onnx", DeepStreamOptions())
    p = properties(text)
    assert warnings == [] and "#   nowhere" in text
    assert (p["model-color-format"], p["network-mode"], p["infer-dims"], p["offsets"]) == ("1", "0", "3;48;48",
                                                                                           "127.5;127.5;127.5")


def test_refusals():
    from fer_edge.export.deepstream import DeepStreamOptions, deepstream_config
    from fer_edge.models.artifact_writer import ExportError
    cases = [(contract(output_kind="logits", output_name="logits"), "_probs.onnx"),
             (contract(dtype="uint8", layout="NHWC"), "without --uint8-input"),
             (contract(labels=["a;b", "c"]), "contain ';'")]
    for bad, match in cases:
        with pytest.raises(ExportError, match=match):
            deepstream_config(bad, "m.onnx", DeepStreamOptions())
    for options, match in ((DeepStreamOptions(gie_id=1), "must be positive and different"),
                           (DeepStreamOptions(threshold=1.5), r"\(--ds-threshold\)"),
                           (DeepStreamOptions(operate_on_class_ids=()), "--ds-face-classes")):
        with pytest.raises(ExportError, match=match):
            deepstream_config(contract(), "m.onnx", options)


@needs_export_stack
def test_cli_writes_the_probabilities_export_labels_and_config(exported, synthetic_npz, tmp_path, capsys):
    from fer_edge import runtime
    from fer_edge.cli.export import main
    rc = main(["--from", str(exported["fp32"].path), "--deepstream", str(tmp_path / "ds"), "--out",
               str(tmp_path / "art"), "--parity-data", str(synthetic_npz), "--ds-min-face", "40"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    ds = tmp_path / "ds"
    p = properties((ds / "config_infer_fer.txt").read_text())
    assert (ds / "labels.txt").read_text() == ";".join(FER2013_LABELS) + "\n"       # one line: one output layer
    model = ds / p["onnx-file"]
    assert model.name.endswith("_fp32_probs.onnx") and p["infer-dims"] == "1;32;32"
    assert p["input-object-min-width"] == "40" and p["network-mode"] == "0"
    with runtime.load(model) as probs:          # the copy carries its sidecar and passes the integrity check
        assert probs.contract.output_kind == "probabilities" and probs.contract.output_name == p["output-blob-names"]
    assert json.loads((tmp_path / "art" / (model.name + ".json")).read_text())["parity"]["passed"]
    assert "wrote" in out


@needs_export_stack
def test_resize_benchmark_runs_and_writes_its_result(exported, synthetic_npz, tmp_path, capsys):
    from fer_edge.benchmarks.deepstream_resize import main
    out = tmp_path / "resize"
    assert main(["--model", str(exported["fp32"].path), "--data", str(synthetic_npz), "--limit", "40",
                 "--sizes", "50", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["crop_px"], r["kernel"]) for r in rows] == [(32, "area"), (50, "area"), (50, "linear"), (50, "nearest")]
    assert all(r["faces"] == 40 and 0 <= r["top1"] <= 1 for r in rows)
    assert "| 50 | linear: bilinear (fer-export --deepstream) |" in out.with_suffix(".md").read_text()
