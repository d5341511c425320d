"""FerPipeline, tracker, smoother and bad frames, on a real photo (scikit-image's astronaut) and a tiny real ONNX classifier."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, YUNET_DIR, needs_export_stack

YUNET_320 = YUNET_DIR / "yunet_s_320_320.onnx"
needs_yunet = pytest.mark.skipif(not YUNET_320.exists(), reason=f"needs the YuNet models in {YUNET_DIR}")


def astronaut_path():
    """scikit-image's astronaut.png (a real face photo), found without importing skimage (no scipy needed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "astronaut.png"
    return path if path.exists() else None


def fer_photo() -> np.ndarray:
    """A FER-2013 public-test face, given a replicated border and enlarged so a detector sees a whole head.

    Picks the first of 40 crops that OpenCV's own YuNet detects, so the choice does not depend on our code.
    """
    from conftest import PUBLICTEST_NPZ
    if not PUBLICTEST_NPZ.exists() or not YUNET_320.exists():
        pytest.skip("needs a face photo: pip install scikit-image (astronaut.png), or ../shared FER-2013 + YuNet")
    with np.load(PUBLICTEST_NPZ) as data:
        crops = data["x"][:40]
    detector = cv2.FaceDetectorYN.create(str(YUNET_DIR / "face_detection_yunet_2023mar.onnx"), "", (256, 256), 0.8)
    for crop in crops:
        photo = cv2.resize(cv2.copyMakeBorder(cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR), 16, 16, 16, 16,
                                              cv2.BORDER_REPLICATE), (256, 256), interpolation=cv2.INTER_LINEAR)
        if detector.detect(photo)[1] is not None:
            return photo
    pytest.skip("none of the first 40 FER-2013 crops was detected")


def face_photo() -> np.ndarray:
    """A real photo with one face: the astronaut (512x512) or, without scikit-image, an enlarged FER-2013 crop."""
    path = astronaut_path()
    return cv2.imread(str(path)) if path is not None else fer_photo()


def astronaut_face() -> np.ndarray:
    """Head and shoulders from the face photo (BGR)."""
    if astronaut_path() is None:
        return fer_photo()
    return face_photo()[20:260, 120:330]


def scene(faces: int = 1, size=(640, 480), shift=(0, 0)) -> np.ndarray:
    """A size[0] x size[1] BGR frame with `faces` copies of the astronaut's face on a grid."""
    from fer_edge.benchmarks.pipeline_bench import compose_frame
    frame = compose_frame([astronaut_face()], faces, size)
    if shift != (0, 0):
        frame = cv2.warpAffine(frame, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), size,
                               borderMode=cv2.BORDER_REPLICATE)
    return frame


def write_tiny_classifier(path: Path, size: int = 32, weights_sha256: str = "") -> Path:
    """A real (if tiny) fer-edge ONNX artifact: gray 32x32 -> Flatten -> Gemm -> 7 logits, contract embedded,
    written with its sidecar by the exporters' own writer. weights_sha256: the source weights it claims."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from fer_edge.models.artifact_writer import embed_contract
    from fer_edge.runtime.contract import ModelContract
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.05, (size * size, 7)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(7, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])], [weight, bias])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    contract = ModelContract(arch="tiny-test", labels=list(FER2013_LABELS), input_size=size, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5], source_weights_sha256=weights_sha256).validate()
    embed_contract(proto, contract)
    onnx.checker.check_model(proto)
    from fer_edge.models.artifact_writer import write_artifact
    return write_artifact(path, proto.SerializeToString(), contract, "onnx")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("onnx", reason="needs onnx to build the test classifier")
    return write_tiny_classifier(tmp_path_factory.mktemp("tiny") / "tiny_fp32.onnx")


@pytest.fixture()
def pipeline(tiny_model):
    if not YUNET_320.exists():
        pytest.skip(f"needs {YUNET_320}")
    from fer_edge.pipeline.fer_pipeline import FerPipeline
    return FerPipeline(tiny_model, detector=str(YUNET_320), threads=1)


# ------------------------------------------------------------------ pipeline
@needs_export_stack
def test_one_face_result_fields(pipeline):
    results = pipeline(scene(1))
    assert len(results) == 1
    face = results[0]
    assert face.track_id == 1 and face.landmarks.shape == (5, 2) and face.detection_score > 0.6
    assert face.probabilities.shape == (7,) and abs(face.probabilities.sum() - 1) < 1e-4
    assert face.label == FER2013_LABELS[int(face.probabilities.argmax())]
    assert face.smoothed_label in FER2013_LABELS and abs(face.smoothed_probabilities.sum() - 1) < 1e-4
    x, y, w, h = face.box
    assert 0 <= x < 640 and 0 <= y < 480 and 30 < w < 400 and 30 < h < 400
    d = face.to_dict()
    assert set(d) >= {"track_id", "box", "landmarks", "probabilities", "smoothed_label", "smoothed_probabilities"}


@needs_export_stack
def test_all_faces_go_through_the_classifier_in_one_batch(pipeline):
    calls = []
    run = pipeline.model.backend.run
    pipeline.model.backend.run = lambda batch: calls.append(batch.shape[0]) or run(batch)
    results = pipeline(scene(4))
    assert len(results) == 4 and calls == [4]
    assert len({r.track_id for r in results}) == 4
    # The batch result equals classifying each crop alone (same crops, same preprocessing).
    from fer_edge.runtime.preprocess import crop_face
    alone = pipeline.model.predict_proba([crop_face(scene(4), results[2].box, pipeline.model.contract)])[0]
    np.testing.assert_allclose(alone, results[2].probabilities, atol=1e-5)


@needs_export_stack
def test_user_boxes_skip_the_detector(pipeline):
    pipeline.detector.detect = lambda frame: pytest.fail("detector must not run when boxes are given")
    results = pipeline(scene(1), boxes=[(250, 150, 120, 140), (10, 10, 60, 60)])
    assert [r.box for r in results] == [(250.0, 150.0, 120.0, 140.0), (10.0, 10.0, 60.0, 60.0)]
    assert all(r.landmarks is None for r in results)
    assert pipeline(scene(1), boxes=[]) == []
    with pytest.raises(ValueError, match="x, y, w, h"):
        pipeline(scene(1), boxes=[(1, 2, 3)])


@needs_export_stack
def test_absurd_detector_boxes_are_skipped_with_a_warning(pipeline, caplog):
    from fer_edge.pipeline.detection import Detection
    real = pipeline.detector.detect
    glitch = Detection((-1e6, -1e6, 2e6, 2e6), 0.9, None)
    pipeline.detector.detect = lambda frame: [glitch] + real(frame) + [Detection((np.nan, 5, 40, 40), 0.9, None)]
    with caplog.at_level("WARNING", logger="fer_edge.runtime"):
        results = pipeline(scene(1))
    assert len(results) == 1 and results[0].box[2] < 400            # the real face, classified
    assert pipeline.skipped_boxes == 2
    assert "more than 4x" in caplog.text and "NaN" in caplog.text and "2 skipped so far" in caplog.text


@needs_export_stack
def test_bad_and_odd_frames(pipeline):
    face = scene(1)
    assert pipeline(np.zeros((0, 0, 3), np.uint8)) == []
    assert pipeline(np.zeros((480, 640, 3), np.uint8)) == []          # no faces
    assert pipeline(np.zeros((8, 8), np.uint8)) == []                 # tiny
    assert len(pipeline(cv2.cvtColor(face, cv2.COLOR_BGR2BGRA))) == 1
    assert len(pipeline(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))) == 1
    assert len(pipeline(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)[:, :, None])) == 1
    huge = cv2.resize(face, (4000, 3000))
    results = pipeline(huge)
    assert len(results) == 1 and results[0].box[2] > 300              # box in the huge frame's pixels
    with pytest.raises(ValueError, match="None"):
        pipeline(None)
    with pytest.raises(ValueError, match="uint8"):
        pipeline(face.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        pipeline(np.zeros((10, 10, 2), np.uint8))


@needs_export_stack
def test_track_ids_stay_with_a_moving_face(pipeline):
    ids = [pipeline(scene(1, shift=(3 * i, 2 * i)))[0].track_id for i in range(6)]
    assert ids == [1] * 6


# ------------------------------------------------------------------ detectors: bundled YuNet, Haar when named
@needs_export_stack
def test_no_detector_means_the_bundled_yunet_even_without_cascade_classifier(tiny_model, monkeypatch):
    from fer_edge.pipeline.fer_pipeline import FerPipeline
    from fer_edge.pipeline.yunet import BUNDLED_YUNET
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)    # as on OpenCV 5: the default must not need it
    pipe = FerPipeline(tiny_model, threads=1)
    assert pipe.detector.name == "yunet" and pipe.detector.path == str(BUNDLED_YUNET)
    results = pipe(scene(1))
    assert len(results) == 1 and results[0].landmarks.shape == (5, 2) and results[0].detection_score > 0.6


@needs_export_stack
def test_haar_only_when_named(tiny_model):
    from fer_edge.pipeline.haar import haar_available
    from fer_edge.pipeline.fer_pipeline import FerPipeline
    if not haar_available():
        pytest.skip("this OpenCV has no Haar cascade (OpenCV 5); covered by the missing-CascadeClassifier test")
    pipe = FerPipeline(tiny_model, detector="haar")
    assert pipe.detector.name == "haar"
    results = pipe(scene(1))
    assert len(results) == 1 and results[0].landmarks is None


def test_asking_for_haar_without_cascade_classifier_names_the_fix(monkeypatch):
    from fer_edge.pipeline.detectors import create_detector
    from fer_edge.runtime.errors import BackendUnavailableError
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)    # what OpenCV 5's package looks like
    with pytest.raises(BackendUnavailableError) as err:
        create_detector("haar")
    assert "bundled YuNet" in str(err.value) and "pip install 'opencv-python-headless>=4.8,<5'" in str(err.value)
    with pytest.raises(ValueError, match="Haar cascade has no face score"):
        create_detector("haar", score_threshold=0.5)


def test_haar_detects_the_astronaut_when_opencv_has_it():
    from fer_edge.pipeline.haar import HaarDetector, haar_available
    if not haar_available():
        pytest.skip("this OpenCV has no Haar cascade (OpenCV 5); covered by the clear-error test")
    faces = HaarDetector().detect(scene(1))
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 200 < x + w / 2 < 440 and 120 < y + h / 2 < 360


# ------------------------------------------------------------------ box format: (x, y, w, h), never corners
@needs_export_stack
def test_corner_boxes_fail_loudly_where_they_can_be_told_apart(tiny_model):
    from fer_edge.pipeline.fer_pipeline import FerPipeline
    from fer_edge.runtime.errors import InputError
    from fer_edge.runtime.preprocess import crop_face
    pipe = FerPipeline(tiny_model, threads=1)
    frame = scene(4)                                                 # 640x480, faces in each quadrant
    face = max(pipe(frame), key=lambda r: r.box[0])                  # a right-hand face: x + x1 passes the edge
    x, y, w, h = face.box
    corners = (x, y, x + w, y + h)                                   # the mix-up the README once showed
    with pytest.raises(InputError, match=r"looks like \(x0, y0, x1, y1\) corners: pass \(x0, y0, x1 - x0, y1 - y0\)"):
        crop_face(frame, corners, pipe.model.contract)
    with pytest.raises(InputError, match="corners"):
        pipe(frame, boxes=[corners])
    assert pipe(frame, boxes=[face.box])[0].label == face.label       # the same box as (x, y, w, h) works


@needs_export_stack
def test_the_readme_runtime_example_runs_on_detector_boxes(tiny_model, capsys):
    from conftest import REPO
    from fer_edge.pipeline.detectors import create_detector
    readme = (REPO / "README.md").read_text()
    code = readme.split("### The runtime in your camera loop")[1].split("```python\n")[1].split("```")[0]
    shipped = '"fer-artifacts/tf_efficientnetv2_b0_64px_fer2013_fp32.onnx"'
    assert shipped in code
    frame = scene(4)
    exec(code.replace(shipped, repr(str(tiny_model))), {"frame": frame, "boxes": [d.box for d in
                                                                                  create_detector().detect(frame)]})
    printed = capsys.readouterr().out.split("\n")                # numpy may wrap a probability vector
    assert sum(line.split(" ")[0] in FER2013_LABELS for line in printed) == 4


# ------------------------------------------------------------------ tracker
def test_tracker_ids_new_faces_and_expiry():
    from fer_edge.pipeline.tracker import IouTracker
    tracker = IouTracker(iou_threshold=0.3, max_missed=2)
    a, b = (100, 100, 80, 80), (400, 100, 80, 80)
    assert tracker.update([a]) == [1]
    assert tracker.update([(104, 102, 80, 80)]) == [1]                  # small motion keeps the id
    assert tracker.update([(400, 100, 80, 80), (108, 104, 80, 80)]) == [2, 1]  # new face, new id; order follows boxes
    assert tracker.update([b]) == [2]                                  # face 1 missed once
    assert tracker.update([b]) == [2]                                  # missed twice: still alive
    assert tracker.update([b]) == [2]                                  # third miss: expired
    assert tracker.active_ids == [2]
    assert tracker.update([(108, 104, 80, 80), b]) == [3, 2]          # it comes back as a new person
    assert tracker.update([]) == []


def test_tracker_matches_best_overlap_first():
    from fer_edge.pipeline.tracker import IouTracker
    tracker = IouTracker()
    tracker.update([(0, 0, 100, 100), (60, 0, 100, 100)])
    assert tracker.update([(62, 0, 100, 100), (2, 0, 100, 100)]) == [2, 1]


# ------------------------------------------------------------------ smoother
def noisy_constant_sequence(n=400, seed=0):
    """Probabilities whose true class (6, neutral) leads class 4 (sad) only slightly; noise flips the top-1."""
    rng = np.random.default_rng(seed)
    base = np.array([0.05, 0.02, 0.05, 0.05, 0.33, 0.05, 0.45])
    probs = np.clip(base + rng.normal(0, 0.08, (n, 7)), 1e-3, None)
    return probs / probs.sum(axis=1, keepdims=True)


def test_ema_math_and_pass_through():
    from fer_edge.pipeline.smoothing import Smoother
    s = Smoother(method="ema", alpha=0.5, margin=0.0, hold=1)
    p1, p2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(s.update(7, p1)[0], p1)
    smoothed, label = s.update(7, p2)
    np.testing.assert_allclose(smoothed, [0.5, 0.5])
    smoothed, label = s.update(7, p2)
    np.testing.assert_allclose(smoothed, [0.25, 0.75])
    assert label == 1
    assert Smoother(method="none").update(1, p2)[1] == 1
    np.testing.assert_allclose(s.update(8, p1)[0], p1)                 # tracks are independent


def test_window_vote():
    from fer_edge.pipeline.smoothing import Smoother
    s = Smoother(method="window", window=4, margin=0.0, hold=1)
    seq = [0, 1, 1, 0, 1]
    for c in seq:
        smoothed, label = s.update(1, np.eye(3)[c])
    np.testing.assert_allclose(smoothed, [0.25, 0.75, 0.0])             # last 4 votes: 1, 1, 0, 1
    assert label == 1


def test_hysteresis_and_smoothing_cut_flips_at_least_5x():
    from fer_edge.pipeline.smoothing import Smoother, count_flips
    probs = noisy_constant_sequence()
    raw = count_flips(probs.argmax(axis=1))
    for method in ("ema", "window"):
        s = Smoother(method=method)
        smoothed = count_flips([s.update(1, p)[1] for p in probs])
        assert raw >= 40, raw
        assert raw >= 5 * max(smoothed, 1), (method, raw, smoothed)
    # Hysteresis alone (no averaging) already helps.
    s = Smoother(method="none", margin=0.15, hold=3)
    assert count_flips([s.update(1, p)[1] for p in probs]) < raw / 2


def test_smoother_follows_a_real_change_and_forgets_tracks():
    from fer_edge.pipeline.smoothing import Smoother
    s = Smoother()
    for _ in range(5):
        assert s.update(1, np.array([0.8, 0.1, 0.1]))[1] == 0
    labels = [s.update(1, np.array([0.1, 0.8, 0.1]))[1] for _ in range(10)]
    assert labels[0] == 0 and labels[-1] == 1                           # switches, but not on the first frame
    s.retain([])
    assert s.states == {}


def test_smoothing_config_errors():
    from fer_edge.pipeline.smoothing import Smoother
    with pytest.raises(ValueError, match="method"):
        Smoother(method="kalman")
    with pytest.raises(ValueError, match="alpha"):
        Smoother(alpha=0)
    with pytest.raises(ValueError, match="unknown smoothing option"):
        Smoother(beta=1)


# ------------------------------------------------------------------ benchmark
@needs_export_stack
def test_pipeline_benchmark_writes_a_report(tmp_path, tiny_model):
    import json
    from fer_edge.benchmarks.pipeline_bench import main
    prefix = tmp_path / "pipeline_cpu"
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), face_photo())
    rc = main(["--pipeline", str(photo), "--model", str(tiny_model),                   # default detector
               "--faces-per-frame", "1,4", "--iterations", "3", "--warmup", "1", "--smoothing-frames", "12",
               "--frames-in-a-row", "2", "--threads", "1", "--no-progress", "--pipeline-report", str(prefix)])
    assert rc == 0
    report = json.loads(prefix.with_suffix(".json").read_text())
    assert list(report["configs"]) == ["1_faces", "4_faces"]
    assert report["detector"] == "YuNetDetector(face_detection_yunet_2023mar.onnx, frames fitted into 320x320)"
    four = report["configs"]["4_faces"]
    assert 1 <= four["faces_detected_min"] <= four["faces_detected_max"] <= 4
    if astronaut_path() is not None:                                 # the astronaut is found every time
        assert four["faces_detected_min"] == 4
    assert set(four["stages"]) == {"end_to_end", "decode", "detect", "crop", "classify", "smooth"}
    assert four["stages"]["end_to_end"]["n"] == 3 and report["frames_in_a_row"] == 2   # 2 streams of 2, cut to 3
    assert all(stage["n"] == 3 for stage in report["configs"]["1_faces"]["stages"].values())
    assert four["stages"]["end_to_end"]["median"] >= four["stages"]["classify"]["median"] > 0
    assert report["smoothing"]["frames_with_one_face"] + report["smoothing"]["frames_skipped"] == 12
    text = prefix.with_suffix(".md").read_text()
    assert "end_to_end" in text and "onnxruntime" in text and "label changes" in text


def test_pipeline_benchmark_rejects_bad_options(capsys):
    from fer_edge.benchmarks.pipeline_bench import main
    assert main(["--pipeline", "x.png", "--frame-size", "big", "--model", "m.onnx"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["--pipeline", "x.png", "--model", "m.onnx", "--backend", "onnxruntime,openvino"]) == 2
    assert "runs one classifier backend" in capsys.readouterr().err
    assert main(["--pipeline", "x.png", "--model", "m.onnx", "--frames-in-a-row", "0"]) == 2
    assert "--frames-in-a-row must be >= 1" in capsys.readouterr().err


@needs_export_stack
def test_pipeline_benchmark_on_openvino_at_a_smaller_detector_size(tmp_path, tiny_model):
    """The CPU-kiosk configuration: the classifier on OpenVINO, YuNet at 224; both show in the report."""
    pytest.importorskip("openvino", reason="needs the [openvino] extra")
    import json
    from fer_edge.benchmarks.pipeline_bench import main
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), face_photo())
    prefix = tmp_path / "kiosk"
    assert main(["--pipeline", str(photo), "--model", str(tiny_model), "--backend", "openvino", "--detector-size",
                 "224", "--faces-per-frame", "1", "--iterations", "3", "--warmup", "1", "--smoothing-frames", "0",
                 "--threads", "1", "--no-progress", "--pipeline-report", str(prefix)]) == 0
    report = json.loads(prefix.with_suffix(".json").read_text())
    assert report["model"]["backend"] == "openvino" and "frames fitted into 224x224" in report["detector"]
    assert report["configs"]["1_faces"]["faces_detected_min"] == 1
