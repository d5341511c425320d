"""Artifacts that are not what they claim, contracts the graph contradicts and ambiguous inputs are refused
with an error that names the problem and the fix: real exported ONNX files, corrupted in tmp_path."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FER2013_LABELS, needs_export_stack, synthetic_faces
from fer_edge.runtime import artifact_io, load, preprocess
from fer_edge.runtime.tensorrt import engine_compat
from fer_edge.runtime.artifact_io import sha256_file, sidecar_path
from fer_edge.runtime.contract import METADATA_KEY, ModelContract
from fer_edge.runtime.errors import (ContractError, FerEdgeError, InputError, IntegrityWarning, ModelLoadError)


def _copy(exported, tmp_path: Path, precision: str = "fp32", sidecar: bool = True) -> Path:
    target = tmp_path / exported[precision].path.name
    shutil.copy(exported[precision].path, target)
    if sidecar:
        shutil.copy(exported[precision].sidecar, sidecar_path(target))
    return target


def _flip_middle_bytes(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def _edit_onnx(path: Path, edit_graph=None, **contract_changes) -> None:
    """Rewrite an ONNX in place: its embedded contract (and graph, via edit_graph); drop the sidecar."""
    import onnx
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), **contract_changes})
    if edit_graph:
        edit_graph(proto.graph)
    onnx.save(proto, str(path))
    sidecar_path(path).unlink(missing_ok=True)


def _load_unverified(path: Path, **kwargs):
    with pytest.warns(IntegrityWarning, match="cannot be checked"):
        return load(path, threads=1, **kwargs)


@pytest.fixture
def no_onnxruntime_session(monkeypatch):
    """Building an ONNX Runtime session fails the test: the integrity check must come first."""
    import onnxruntime

    def forbidden(*args, **kwargs):
        raise AssertionError("ONNX Runtime was handed the file")
    monkeypatch.setattr(onnxruntime, "InferenceSession", forbidden)


# ---------------------------------------------------------------- 1. integrity
@needs_export_stack
def test_flipped_bytes_are_refused_before_onnxruntime_naming_both_hashes(exported, tmp_path, no_onnxruntime_session):
    path = _copy(exported, tmp_path)
    expected = json.loads(sidecar_path(path).read_text())["artifact"]["sha256"]
    _flip_middle_bytes(path)
    with pytest.raises(ModelLoadError) as err:
        load(path)
    message = str(err.value)
    assert expected in message and sha256_file(path) in message
    assert "corrupted" in message and "re-export" in message and "fer-export" in message


@needs_export_stack
def test_truncated_or_padded_file_with_sidecar_is_refused_naming_the_sizes(exported, tmp_path, no_onnxruntime_session):
    path = _copy(exported, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    sizes = rf"has {len(data) // 2} bytes .* records {len(data)} bytes \(truncated"
    with pytest.raises(ModelLoadError, match=sizes) as err:
        load(path)
    assert "fer-export" in str(err.value)
    path.write_bytes(data + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="extra bytes"):
        load(path)


@needs_export_stack
def test_intact_fp32_and_fp16_load_without_integrity_warning(exported, tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrityWarning)
        for precision in ("fp32", "fp16"):
            model = load(_copy(exported, tmp_path, precision), threads=1)
            assert model.labels == FER2013_LABELS and model.precision == precision


@needs_export_stack
def test_onnx_without_sidecar_loads_from_its_contract_with_an_integrity_warning(exported, tmp_path):
    path = _copy(exported, tmp_path, sidecar=False)
    with pytest.warns(IntegrityWarning, match="no sidecar") as record:
        model = load(path, threads=1)
    assert "fer-export" in str(record[0].message)
    assert model.labels == FER2013_LABELS and len(model.predict(synthetic_faces(2)[0])) == 2


@needs_export_stack
def test_sidecar_that_records_no_hash_warns_and_a_damaged_size_is_refused(exported, tmp_path):
    path = _copy(exported, tmp_path)
    sidecar = json.loads(sidecar_path(path).read_text())
    del sidecar["artifact"]["sha256"]
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.warns(IntegrityWarning, match="records no artifact.sha256"):
        load(path, threads=1)
    sidecar["artifact"].update(sha256=sha256_file(path), bytes="many")
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="artifact.bytes is 'many'.*re-export"):
        load(path)


ENGINE_SIDECAR = {"contract": {}, "engine": {
    "flavour": "tensorrt", "version": "10.3.0.30",
    "rebuild_args": ["--engine", "--onnx", "fer-artifacts/m_fp16.onnx", "--out", "fer-artifacts"]}}
REBUILD = "fer-export --engine --onnx fer-artifacts/m_fp16.onnx --out fer-artifacts"


def test_engines_share_the_integrity_check_and_keep_the_rebuild_command(tmp_path):
    assert engine_compat.verify_artifact is artifact_io.verify_artifact
    plan = tmp_path / "m.engine"
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    plan.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    sidecar = {**ENGINE_SIDECAR, "artifact": {"kind": "engine", "sha256": expected, "bytes": len(data)}}
    engine_compat.verify_engine_file(plan, sidecar)                   # intact: no error
    _flip_middle_bytes(plan)
    with pytest.raises(ModelLoadError) as err:
        engine_compat.verify_engine_file(plan, sidecar)
    assert expected in str(err.value) and sha256_file(plan) in str(err.value) and REBUILD in str(err.value)
    plan.write_bytes(data[:100])
    with pytest.raises(ModelLoadError, match="has 100 bytes .* records 4096 bytes") as err:
        engine_compat.verify_engine_file(plan, sidecar)
    assert REBUILD in str(err.value)
    with pytest.warns(IntegrityWarning, match="records no artifact.sha256"):
        engine_compat.verify_engine_file(plan, {**ENGINE_SIDECAR, "artifact": {}})


# ---------------------------------------------------------------- 2. contract against the graph
@needs_export_stack
@pytest.mark.parametrize("labels", [FER2013_LABELS[:6], FER2013_LABELS + ["contempt"]], ids=["6 labels", "8 labels"])
def test_label_count_that_does_not_match_the_graph_is_refused_at_load(exported, tmp_path, labels):
    path = _copy(exported, tmp_path)
    _edit_onnx(path, labels=labels)
    with pytest.raises(ContractError) as err:
        _load_unverified(path)
    message = str(err.value)
    assert f"outputs 7 classes but the contract lists {len(labels)} labels" in message
    assert "belongs to another model" in message and "re-export it with fer-export" in message


@needs_export_stack
def test_symbolic_class_axis_is_still_inferred_and_checked_at_load(exported, tmp_path):
    def symbolic_class_axis(graph):
        graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    path = _copy(exported, tmp_path)
    _edit_onnx(path, symbolic_class_axis, labels=FER2013_LABELS + ["contempt"])
    with pytest.raises(ContractError, match="outputs 7 classes but the contract lists 8 labels"):
        _load_unverified(path)            # ONNX Runtime infers the width from the graph itself


@needs_export_stack
def test_output_width_the_graph_does_not_state_is_checked_at_predict(exported):
    import dataclasses
    from fer_edge.runtime.model import FerModel
    real = load(exported["fp32"].path, threads=1)    # FerModel built directly: as if the graph hid its width
    eight = dataclasses.replace(real.contract, labels=FER2013_LABELS + ["contempt"])
    model = FerModel(real.path, eight, real.backend)
    with pytest.raises(ContractError, match=r"outputs of shape \(2, 7\) but its contract lists 8 labels.*fer-export"):
        model.predict(synthetic_faces(2)[0])


@needs_export_stack
def test_probabilities_contract_on_a_logits_graph_is_refused_at_predict(exported, tmp_path):
    path = _copy(exported, tmp_path)
    _edit_onnx(path, output_kind="probabilities")
    model = _load_unverified(path)
    with pytest.raises(ContractError) as err:
        model.predict(synthetic_faces(4)[0])
    message = str(err.value)
    assert "output_kind 'probabilities'" in message and "returns logits" in message
    assert "re-export" in message.lower() and "output_kind to 'logits'" in message


@needs_export_stack
def test_probabilities_contract_on_a_softmax_graph_is_accepted(exported, tmp_path):
    from onnx import TensorProto, helper

    def append_softmax(graph):
        graph.node.append(helper.make_node("Softmax", [graph.output[0].name], ["probabilities"], axis=1))
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 7]))
    reference = load(exported["fp32"].path, threads=1)
    path = _copy(exported, tmp_path)
    _edit_onnx(path, append_softmax, output_kind="probabilities", output_name="probabilities")
    faces = synthetic_faces(8)[0]
    np.testing.assert_allclose(_load_unverified(path).predict_proba(faces), reference.predict_proba(faces), atol=1e-5)


@needs_export_stack
def test_half_precision_graph_input_is_refused_at_load(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from fer_edge.models.artifact_writer import embed_contract
    weight = numpy_helper.from_array(np.zeros((32 * 32, 7), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "fp16-input", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    embed_contract(proto, ModelContract(arch="tiny", labels=list(FER2013_LABELS), input_size=32, channels=1,
                                        color_order="GRAY", mean=[0.5], std=[0.5]).validate())
    path = tmp_path / "fp16_input.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ContractError, match=r"graph input is tensor\(float16\) but .* produces float32.*fer-export"):
        _load_unverified(path)


def test_engine_output_width_is_checked_against_the_labels(monkeypatch):
    import dataclasses
    from test_engine import _fake_backend
    backend, _, contract = _fake_backend(monkeypatch, cuda_graph=False)    # its engine outputs (-1, 7)
    problem_and_fix = "engine outputs 7 classes but the contract lists 6 labels.*fer-export --engine"
    with pytest.raises(ContractError, match=problem_and_fix):
        backend._check_contract(dataclasses.replace(contract, labels=list("abcdef")), "m.engine")


# ---------------------------------------------------------------- 3. inputs
@pytest.fixture(scope="module")
def fp32(exported):
    return load(exported["fp32"].path, threads=1)


@needs_export_stack
@pytest.mark.parametrize("channels", [2, 5])
def test_3d_array_fitting_neither_reading_names_both(fp32, channels):
    with pytest.raises(InputError) as err:
        fp32.predict(np.zeros((48, 48, channels), np.uint8))
    message = str(err.value)
    assert f"shape (48, 48, {channels})" in message and "fits neither reading" in message
    assert f"as one crop (H, W, C) its last axis would be {channels} channels" in message
    assert "as a batch of 48 gray crops (N, H, W)" in message
    assert "(H, W, 3) BGR" in message and "(N, H, W) gray with H, W >= 8" in message
    with pytest.raises(InputError, match=f"{channels} channels, but a crop .* needs 1 .*, 3 .* or 4"):
        fp32.predict([np.zeros((48, 48, channels), np.uint8)])          # the same array as a list item


@needs_export_stack
def test_3d_rule_reads_channels_last_as_one_crop_and_the_rest_as_batches(fp32):
    faces = synthetic_faces(3, size=48)[0]
    assert len(fp32.predict(faces)) == 3                                 # (3, 48, 48): three gray crops
    assert len(fp32.predict(np.stack([faces[0]] * 3, axis=-1))) == 1     # (48, 48, 3): one BGR crop
    assert len(fp32.predict(faces[0][:, :, None])) == 1                  # (48, 48, 1): one gray crop
    np.testing.assert_allclose(fp32.predict_proba(faces), fp32.predict_proba(list(faces)), atol=1e-6)
    assert len(fp32.predict(np.zeros((48, 48, 8), np.uint8))) == 48      # 8 px wide: the rule's smallest batch


def test_every_input_error_is_a_fer_edge_error_and_a_value_error():
    assert issubclass(InputError, FerEdgeError) and issubclass(InputError, ValueError)
    for faces in ([], np.zeros((0, 8), np.uint8), np.zeros((4, 5, 5), np.uint8), np.zeros((8, 8), np.float32),
                  [np.zeros((8, 8, 2), np.uint8)], "face.png", np.zeros((1, 1, 8, 8, 1), np.uint8)):
        with pytest.raises(InputError):
            preprocess.split_faces(faces)


CONTRACT = ModelContract(arch="tiny", labels=list(FER2013_LABELS), input_size=32, channels=1, color_order="GRAY",
                         mean=[0.5], std=[0.5]).validate()


@pytest.mark.parametrize("box,problem", [
    ((-1e6, -1e6, 2e6, 2e6), r"becomes a 2400000-pixel crop, more than 4x the 640x480 frame's larger side"),
    ((float("nan"), 10, 50, 50), "NaN or infinite"),
    ((10, 10, float("inf"), 50), "NaN or infinite"),
    ((10, 10, 0, 50), "non-positive width or height"),
    ((700, 10, 50, 50), "lies outside the 640x480 frame"),
    ((10, 10, 50), "not four numbers"),
])
def test_absurd_face_box_is_refused_before_any_allocation(monkeypatch, box, problem):
    def forbidden(*args, **kwargs):
        raise AssertionError("crop_face padded a box it should have refused")
    monkeypatch.setattr(preprocess.cv2, "copyMakeBorder", forbidden)
    start = time.perf_counter()
    with pytest.raises(InputError, match=problem) as err:
        preprocess.crop_face(np.zeros((480, 640, 3), np.uint8), box, CONTRACT)
    assert time.perf_counter() - start < 0.5
    assert "Pass boxes as (x, y, w, h) in this frame's pixels" in str(err.value)


def test_box_partly_outside_the_frame_is_edge_replicated():
    frame = np.arange(480 * 640, dtype=np.uint32).reshape(480, 640).astype(np.uint8)
    crop = preprocess.crop_face(frame, (-10, -10, 50, 50), CONTRACT)    # 50 px + 10% margin per side = 60 px
    assert crop.shape == (60, 60)
    np.testing.assert_array_equal(crop[:15, 15], np.full(15, frame[0, 0]))
    big = preprocess.crop_face(frame, (0, 0, 640, 640), CONTRACT)       # a face filling the frame still crops
    assert big.shape == (768, 768)
    assert preprocess.face_box_problem((0, 0, 640, 640), frame.shape, CONTRACT) is None
