"""Calibration sources and the calibration cache: real files, no torch needed."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, synthetic_faces
from fer_edge.data.datasets import FaceSet
from fer_edge.calibration import sources
from fer_edge.calibration.cache import CalibrationCache, ranges_key, tensor_key
from fer_edge.calibration.int8_export import Int8Options, resolve_calibration
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import DataError

GRAY = ModelContract(arch="tf_efficientnetv2_b0", labels=list(FER2013_LABELS), input_size=32, channels=1,
                     color_order="GRAY", mean=[0.5], std=[0.5], source_weights_sha256="a" * 64)
RGB = dataclasses.replace(GRAY, channels=3, color_order="RGB", mean=[0.5] * 3, std=[0.5] * 3)


def _write_folder(root, n=12, classes=("happy", "sad"), color=False):
    x, _ = synthetic_faces(n, size=32)
    for i, im in enumerate(x):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if color else im)
    return root


# ------------------------------------------------------------------ sources
def test_folder_with_classes_is_stratified_and_seeded(tmp_path):
    faces = sources.load_source(str(_write_folder(tmp_path / "f", n=40, classes=("happy", "sad", "fear", "angry"))),
                                labels=FER2013_LABELS)
    calib, val = sources.split_calibration(faces, 20, seed=3, holdout=False)
    assert val is None and len(calib) == 20
    assert sorted(np.bincount(calib.targets)[np.bincount(calib.targets) > 0]) == [5, 5, 5, 5]
    again, _ = sources.split_calibration(faces, 20, seed=3, holdout=False)
    assert np.array_equal(again.images, calib.images)


def test_holdout_never_overlaps_calibration():
    x, y = synthetic_faces(300, seed=2)
    x[:, 0, 0] = np.arange(300) % 256  # make every image unique
    x[:, 0, 1] = np.arange(300) // 256
    faces = FaceSet(x, y.astype(np.int64), list(FER2013_LABELS), "synthetic")
    calib, val = sources.split_calibration(faces, 128, seed=0, holdout=True)
    ids = lambda s: {int(a) + 256 * int(b) for a, b in zip(s.images[:, 0, 0], s.images[:, 0, 1])}  # noqa: E731
    assert len(calib) == 128 and len(val) == 172 and not ids(calib) & ids(val)


def test_flat_folder_is_unlabelled(tmp_path):
    faces = sources.load_source(str(_write_folder(tmp_path / "flat", n=6, classes=())))
    assert not faces.labelled and len(faces) == 6


def test_video_every_nth_frame(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    faces = sources.load_source(str(path), frame_step=5)
    assert len(faces) == 4 and faces.images.shape[1:] == (48, 64, 3) and not faces.labelled


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        sources.load_source(str(tmp_path / "empty"))


def test_non_images_are_a_clear_error(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "face.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="not a readable image"):
        sources.load_source(str(folder))
    (folder / "face.png").unlink()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no images found"):
        sources.load_source(str(folder))


def test_gray_images_for_a_colour_model_are_refused(tmp_path):
    faces = sources.load_source(str(_write_folder(tmp_path / "g", n=4)))
    with pytest.raises(DataError, match="grayscale but the model takes 3-channel"):
        sources.check_fits_model(faces, RGB)
    sources.check_fits_model(faces, GRAY)
    colour = sources.load_source(str(_write_folder(tmp_path / "c", n=4, color=True)))
    sources.check_fits_model(colour, RGB)
    sources.check_fits_model(colour, GRAY)  # colour crops become gray by the contract's preprocessing


def test_two_channel_images_are_refused():
    faces = FaceSet(np.zeros((3, 32, 32, 2), np.uint8), None, [], "two-channel")
    with pytest.raises(DataError, match="2 channels"):
        sources.check_fits_model(faces, GRAY)


def test_fewer_images_than_count_is_a_clear_error(tmp_path):
    faces = sources.load_source(str(_write_folder(tmp_path / "few", n=10)))
    with pytest.raises(DataError, match="has 10 images but --calib-count asks for 512"):
        sources.split_calibration(faces, 512, seed=0, holdout=False)


def test_no_calib_for_a_user_checkpoint_explains_what_calibration_is():
    with pytest.raises(DataError, match="representative face crops"):
        resolve_calibration(Int8Options(), bundled=None)
    with pytest.raises(DataError, match="no such file"):
        resolve_calibration(Int8Options(calib="/nonexistent/faces"), bundled=None)


def test_reference_model_without_calib_uses_the_shipped_synthetic_set():
    from fer_edge.calibration.synthesize import SHIPPED_SET
    assert resolve_calibration(Int8Options(), bundled="fer2013") == str(SHIPPED_SET)
    assert resolve_calibration(Int8Options(calib=str(SHIPPED_SET)), bundled=None) == str(SHIPPED_SET)


@pytest.mark.parametrize("name", ["fer2013", "ferplus"])
def test_shipped_synthetic_set_is_unlabelled_and_made_from_the_shipped_weights(name):
    from fer_edge.calibration.synthesize import SHIPPED_SETS, read_provenance, shipped_set_for
    from fer_edge.models.bundled import BUNDLED_MODELS
    from fer_edge.runtime.artifact_io import sha256_file
    provenance = read_provenance(SHIPPED_SETS[name])
    assert provenance["weights_sha256"] == sha256_file(BUNDLED_MODELS[name].weights)
    assert resolve_calibration(Int8Options(), bundled=name) == str(shipped_set_for(name)) == str(SHIPPED_SETS[name])
    faces = sources.load_source(str(SHIPPED_SETS[name]))
    assert not faces.labelled and faces.images.dtype == np.uint8
    assert faces.images.shape[1:] == (provenance["input_size"],) * 2 and len(faces) >= 512 + 64
    # Not blank and not saturated: the images span the pixel range the way faces do.
    assert 20 < faces.images.std() < 100 and 60 < faces.images.mean() < 200


def test_stale_synthetic_set_is_refused_with_the_regenerate_command(tmp_path, monkeypatch):
    from fer_edge.models import bundled
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")
    monkeypatch.setattr(bundled, "bundled_model", lambda name: bundled.BundledModel(name, other, "test"))
    with pytest.raises(DataError, match="synthesised from other weights.*fer_edge.calibration.synthesize`"):
        resolve_calibration(Int8Options(), bundled="fer2013")
    with pytest.raises(DataError, match="bundled ferplus model.*synthesize --model ferplus`"):
        resolve_calibration(Int8Options(), bundled="ferplus")


def test_cli_refuses_int8_without_calib_before_exporting(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fer_edge.cli.export", "--checkpoint", str(tmp_path / "w.pt"),
                          "--int8", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2 and "--calib PATH" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------- cache
def _key(contract, data="d1", count=128, seed=0):
    return tensor_key(contract, data, count, seed)


def test_cache_reused_when_nothing_changed(tmp_path):
    logs = []
    cache = CalibrationCache(tmp_path, "slot", logs.append)
    tensors = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    cache.store_tensors(_key(GRAY), tensors, np.arange(4))
    cache.store_ranges(ranges_key(_key(GRAY), GRAY, "max", "r1"), "max", {"t": (-1.0, 2.0)})
    again = CalibrationCache(tmp_path, "slot", logs.append)
    got, targets = again.load_tensors(_key(GRAY))
    assert np.array_equal(got, tensors) and list(targets) == [0, 1, 2, 3]
    assert again.load_ranges(ranges_key(_key(GRAY), GRAY, "max", "r1"), "max") == {"t": (-1.0, 2.0)}
    assert not [m for m in logs if "stale" in m]


@pytest.mark.parametrize("change, reason", [
    (lambda c: (dataclasses.replace(c, source_weights_sha256="b" * 64), {}), "weights changed"),
    (lambda c: (dataclasses.replace(c, mean=[0.4]), {}), "preprocessing changed"),
    (lambda c: (dataclasses.replace(c, input_size=48), {}), "preprocessing changed"),
    (lambda c: (c, {"data": "d2"}), "data changed"),
    (lambda c: (c, {"count": 256}), "count changed"),
    (lambda c: (c, {"seed": 1}), "seed changed"),
])
def test_stale_cache_is_rebuilt_and_says_why(tmp_path, change, reason):
    logs = []
    cache = CalibrationCache(tmp_path, "slot", logs.append)
    cache.store_tensors(_key(GRAY), np.zeros((2, 1, 32, 32), np.float32), None)
    cache.store_ranges(ranges_key(_key(GRAY), GRAY, "max", "r1"), "max", {"t": (-1.0, 1.0)})
    contract, key_changes = change(GRAY)
    key = _key(contract, **key_changes)
    rkey = ranges_key(key, contract, "max", "r1")
    tensors_gone = cache.load_tensors(key) is None
    assert cache.load_ranges(rkey, "max") is None
    assert any("calibration cache stale" in m and reason in m for m in logs), logs
    # Weights do not change the tensors (only the ranges); everything else changes both.
    assert tensors_gone == (reason != "weights changed")


def test_method_has_its_own_ranges(tmp_path):
    cache = CalibrationCache(tmp_path, "slot", lambda m: None)
    cache.store_ranges(ranges_key(_key(GRAY), GRAY, "max", "r1"), "max", {"t": (-1.0, 1.0)})
    assert cache.load_ranges(ranges_key(_key(GRAY), GRAY, "entropy", "r1"), "entropy") is None


def test_corrupt_cached_tensors_are_rebuilt(tmp_path):
    logs = []
    cache = CalibrationCache(tmp_path, "slot", logs.append)
    cache.store_tensors(_key(GRAY), np.ones((2, 1, 32, 32), np.float32), None)
    (tmp_path / "slot" / "tensors.npz").write_bytes(b"garbage")
    assert cache.load_tensors(_key(GRAY)) is None
    assert any("corrupt" in m for m in logs)


def test_gate_rule_uses_drop_with_labels_and_agreement_without():
    from fer_edge.calibration.gate import GateRule, drop_points, result_record
    from fer_edge.data.metrics import Comparison

    def result(agreement, fp32_top1=None, int8_top1=None):
        return Comparison(100, agreement, 0.0, 0.0, 0.0, reference_top1=fp32_top1, candidate_top1=int8_top1)
    same_top1_low_agreement = result(0.98, 0.60, 0.60)
    assert GateRule(0.5, 0.99).passes(same_top1_low_agreement)
    assert not GateRule(0.5, 0.99, metric="agreement").passes(same_top1_low_agreement)
    assert drop_points(result(0.999, 0.60, 0.59)) == pytest.approx(1.0)
    assert not GateRule(0.5, 0.99).passes(result(0.999, 0.60, 0.59))  # 1 pt
    assert GateRule(0.5, 0.99).passes(result(0.995))
    assert not GateRule(0.5, 0.99).passes(result(0.985))
    # The sidecar's gate fields ("before", "after", each step) keep their names.
    assert result_record(result(0.98, 0.60, 0.59)) == {"agreement": 0.98, "fp32_top1": 0.60, "int8_top1": 0.59,
                                                       "drop_points": 1.0}
    assert result_record(result(0.98))["drop_points"] is None


# ------------------------------------------------------------------ the INT8 precision mix in the contract
MIX = {"float_dtype": "float16", "float_blocks": ["conv_head", "classifier"], "blocks": 24, "float_share": 0.0833,
       "int8_layers": 58, "float_layers": 33}


def test_precision_mix_round_trips_and_labels_what_is_not_int8():
    int8 = GRAY.with_precision("int8", MIX)
    again = type(GRAY).from_json(int8.to_json())
    assert again.precision == "int8" and again.precision_mix == MIX
    assert again.precision_label() == "int8+fp16 (2/24 blocks fp16)"
    assert GRAY.with_precision("int8", {**MIX, "float_blocks": []}).precision_label() == "int8+fp16"
    assert GRAY.with_precision("int8", {**MIX, "float_dtype": "float32"}).precision_label().startswith("int8+fp32 (2/")
    assert int8.with_precision("fp16").precision_mix == {} and GRAY.precision_label() == "fp32"


def test_contracts_written_before_the_mix_still_load():
    old = {k: v for k, v in GRAY.with_precision("int8").to_dict().items() if k != "precision_mix"}
    contract = type(GRAY).from_dict(old)
    assert contract.precision_mix == {} and contract.precision_label() == "int8 (float part not recorded)"


@pytest.mark.parametrize("precision,mix,match", [
    ("fp16", MIX, "describes INT8 artifacts only"),
    ("int8", {**MIX, "float_dtype": "bfloat16"}, "float_dtype 'bfloat16'"),
    ("int8", {**MIX, "blocks": 1}, "blocks 1 must be an integer >= the 2 float blocks"),
    ("int8", {**MIX, "float_blocks": "conv_head"}, "list of block names"),
    ("int8", ["conv_head"], "must be a JSON object"),
])
def test_inconsistent_precision_mix_is_refused(precision, mix, match):
    from fer_edge.runtime.errors import ContractError
    data = {**GRAY.to_dict(), "precision": precision, "precision_mix": mix}
    with pytest.raises(ContractError, match=match):
        type(GRAY).from_dict(data)
