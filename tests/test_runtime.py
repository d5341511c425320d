"""The lean runtime on real exported artifacts: predictions, input handling, and clear errors on bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, needs_export_stack, synthetic_faces
from fer_edge.runtime import ContractError, FerEdgeError, ModelLoadError, load
from fer_edge.runtime.artifact_io import sha256_file
from fer_edge.runtime.preprocess import prepare_batch

pytestmark = [needs_export_stack]


@pytest.fixture(scope="module")
def fp32(exported):
    return load(exported["fp32"].path, threads=1)


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(48, size=32, seed=7)


def test_fp32_fp16_and_torch_agree(exported, fp32, faces, fitted_checkpoint):
    import torch
    from fer_edge.models.factory import prepare_model
    x, y = faces
    fp16 = load(exported["fp16"].path, threads=1)
    assert (fp32.precision, fp16.precision) == ("fp32", "fp16")
    assert fp32.labels == FER2013_LABELS
    p32, p16 = fp32.predict_proba(x), fp16.predict_proba(x)
    assert p32.shape == (48, 7) and np.allclose(p32.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(p32.argmax(1) == p16.argmax(1)) >= 0.95
    assert np.abs(p32 - p16).max() < 0.05
    # The fixture fits until eval accuracy >= 0.9 on other synthetic faces (chance is 1/7), so agreement
    # here is not a tie-breaking accident.
    assert np.mean(p32.argmax(1) == y) >= 0.8
    torch_model = prepare_model(checkpoint=str(fitted_checkpoint)).model
    with torch.no_grad():
        reference = torch_model(torch.from_numpy(prepare_batch(x, fp32.contract))).numpy()
    # Same tolerance as the export parity test: CPUs' float32 kernels differ; a wrong path is off by whole units.
    assert np.abs(fp32.infer(fp32.preprocess(x)) - reference).max() < 1e-2


def test_predict_returns_face_predictions(fp32, faces):
    out = fp32.predict(faces[0][:3])
    assert len(out) == 3
    for face in out:
        assert face.label == FER2013_LABELS[face.index]
        assert face.score == pytest.approx(float(face.probabilities.max()))


def test_gray_bgr_bgra_and_any_size_agree(fp32, faces):
    gray = faces[0][:8]
    reference = fp32.predict_proba(gray)
    bgr = [cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in gray]
    bgra = [cv2.cvtColor(g, cv2.COLOR_GRAY2BGRA) for g in gray]
    single_channel = [g[:, :, None] for g in gray]
    # 2x nearest upscaling, then the contract's area downscaling, gives back the exact 32x32 pixels.
    larger = [cv2.resize(g, (64, 64), interpolation=cv2.INTER_NEAREST) for g in bgr]
    for variant in (bgr, bgra, single_channel, larger, np.stack(bgr)):
        np.testing.assert_allclose(fp32.predict_proba(variant), reference, atol=1e-5)
    # Other sizes and aspect ratios still work and mostly keep the decision.
    odd = [cv2.resize(g, (45, 37), interpolation=cv2.INTER_LINEAR) for g in gray]
    assert fp32.predict_proba(odd).shape == reference.shape


def test_batch_equals_one_by_one(fp32, faces):
    x = faces[0][:6]
    batched = fp32.predict_proba(x)
    single = np.concatenate([fp32.predict_proba(face) for face in x])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert [p.label for p in fp32.predict(x)] == [fp32.predict(face)[0].label for face in x]


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_respected(exported, threads):
    model = load(exported["fp32"].path, threads=threads)
    assert model.backend.session.get_session_options().intra_op_num_threads == threads


BAD_INPUTS = {
    "empty array": (np.zeros((0, 32, 32), np.uint8), "empty"),
    "empty list": ([], "empty list"),
    "float dtype": (np.zeros((32, 32), np.float32), "dtype float32"),
    "int16 dtype": (np.zeros((32, 32), np.int16), "dtype int16"),
    "NaN in float": (np.full((32, 32), np.nan, np.float32), "NaN"),
    "ndim 5": (np.zeros((1, 2, 32, 32, 3), np.uint8), "ndim 5"),
    "zero-size crop": ([np.zeros((0, 10), np.uint8)], "zero-size"),
    "2-channel image": ([np.zeros((32, 32, 2), np.uint8)], "2 channels"),
    "not an array": ("face.png", "str"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_problem(fp32, name):
    faces, expected = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=expected):
        fp32.predict(faces)


def _copy_artifact(exported, tmp_path, name="model.onnx", sidecar=True):
    target = tmp_path / name
    shutil.copy(exported["fp32"].path, target)
    if sidecar:
        shutil.copy(exported["fp32"].sidecar, str(target) + ".json")
    return target


def test_missing_empty_folder_and_unknown_suffix(tmp_path, exported):
    with pytest.raises(ModelLoadError, match="no such file"):
        load(tmp_path / "absent.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load(empty)
    with pytest.raises(ModelLoadError, match="folder"):
        load(tmp_path)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"unknown artifact type '.pt'; fer-edge loads .onnx, .engine, .plan, .trt"):
        load(weights)


def test_with_block_closes_the_model_and_releases_the_session(exported, faces):
    import gc
    import weakref
    with load(exported["fp32"].path, threads=1) as model:
        assert len(model.predict(faces[0][:2])) == 2
        session = weakref.ref(model.backend.session)
    gc.collect()
    assert model.closed and session() is None            # the InferenceSession is gone, not just unreferenced here
    with pytest.raises(ModelLoadError, match="closed.*load it again"):
        model.predict(faces[0][:1])
    model.close()                                         # closing twice is harmless


def test_engine_options_on_an_onnx_model_are_refused(exported):
    with pytest.raises(ModelLoadError, match=r"engine options \['cuda_graph'\] apply to TensorRT engines only"):
        load(exported["fp32"].path, cuda_graph=True)


def test_ort_session_holds_the_one_session_policy(exported):
    from fer_edge.runtime import BackendUnavailableError
    from fer_edge.runtime.onnx_backend import ort_session
    data = exported["fp32"].path.read_bytes()
    options = ort_session(data, threads=2, spin_wait=False).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (2, 1, 3)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = ort_session(exported["fp32"].path).get_session_options()
    assert default.intra_op_num_threads == 0                   # None: ONNX Runtime's own default, spinning untouched
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider.*available.*install"):
        ort_session(data, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ModelLoadError, match=r"ONNX model in memory \(5 bytes\): ONNX Runtime cannot load it"):
        ort_session(b"xxxxx")


def test_truncated_onnx_is_a_clear_load_error(tmp_path, exported):
    data = exported["fp32"].path.read_bytes()
    for name, payload in {"truncated.onnx": data[:len(data) // 2], "garbage.onnx": b"\x00\xffnot onnx" * 50}.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it"):
            load(path)


def test_onnx_without_contract_is_refused(tmp_path, exported):
    import onnx
    proto = onnx.load(str(exported["fp32"].path))
    del proto.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ContractError, match="no fer-edge contract"):
        load(path)
    # The sidecar alone is enough, once it describes these bytes (the re-save changed them).
    side = json.loads(exported["fp32"].sidecar.read_text())
    side["artifact"].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (tmp_path / "bare.onnx.json").write_text(json.dumps(side))
    assert load(path).labels == FER2013_LABELS


def test_sidecar_contradicting_or_not_json_is_refused(tmp_path, exported):
    path = _copy_artifact(exported, tmp_path)
    sidecar = json.loads(exported["fp32"].sidecar.read_text())
    sidecar["contract"]["labels"] = list(reversed(sidecar["contract"]["labels"]))
    (tmp_path / "model.onnx.json").write_text(json.dumps(sidecar))
    with pytest.raises(ContractError, match="disagree"):
        load(path)
    (tmp_path / "model.onnx.json").write_text("{ not json")
    with pytest.raises(ContractError, match="not valid JSON"):
        load(path)


def test_every_error_is_a_fer_edge_error():
    for error in (ContractError, ModelLoadError):
        assert issubclass(error, FerEdgeError)


def test_runtime_import_pulls_no_torch_timm_or_onnx(exported):
    code = (
        "import sys, numpy as np\n"
        "import fer_edge.runtime as rt\n"
        f"m = rt.load({str(exported['fp32'].path)!r}, threads=1)\n"
        "m.predict(np.zeros((32, 32), np.uint8))\n"
        "heavy = sorted(n for n in ('torch', 'timm', 'onnx') if n in sys.modules)\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
