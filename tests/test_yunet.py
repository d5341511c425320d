"""YuNet through ONNX Runtime with our decoding and NMS, checked against OpenCV's cv2.FaceDetectorYN."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import YUNET_DIR, needs_export_stack
from test_pipeline import face_photo, scene, tiny_model  # noqa: F401  (tiny_model is a fixture)

DYNAMIC = YUNET_DIR / "yunet_s_dynamic.onnx"
FIXED_640 = YUNET_DIR / "face_detection_yunet_2023mar.onnx"
FIXED_320 = YUNET_DIR / "yunet_s_320_320.onnx"
needs_yunet = pytest.mark.skipif(not FIXED_640.exists(), reason=f"needs the YuNet models in {YUNET_DIR}")


def opencv_faces(model, image, score=0.5, nms=0.3):
    """cv2.FaceDetectorYN on an image already at the detector's input size: (N, 15) rows or empty."""
    h, w = image.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(model), "", (w, h), score, nms, 5000)
    _, faces = detector.detect(image)
    return np.zeros((0, 15), np.float32) if faces is None else faces


def assert_same_faces(ours, theirs, scale=1.0, tol_px=2.0):
    assert len(ours) == len(theirs) and len(ours) > 0
    theirs = theirs[np.argsort(-theirs[:, 14])]
    for det, row in zip(ours, theirs):
        np.testing.assert_allclose(det.box, row[:4] / scale, atol=tol_px)
        np.testing.assert_allclose(det.landmarks.reshape(-1), row[4:14] / scale, atol=tol_px)
        assert abs(det.score - row[14]) < 1e-3


@needs_yunet
@pytest.mark.skipif(int(cv2.__version__.split(".")[0]) < 5,
                    reason="OpenCV 4.x's ONNX importer cannot load the dynamic-shape YuNet (isDynamicShape assertion); "
                           "the 320 and 640 models are compared instead")
def test_decode_matches_opencv_on_the_photo_dynamic_model():
    from fer_edge.pipeline.yunet import YuNetDetector
    image = face_photo()                                             # 512x512 astronaut (or 256x256 FER face)
    ours = YuNetDetector(DYNAMIC, input_size=max(image.shape), score_threshold=0.5).detect(image)
    assert_same_faces(ours, opencv_faces(DYNAMIC, image))


@needs_yunet
@pytest.mark.parametrize("faces", [1, 4])
def test_decode_matches_opencv_fixed_model_with_letterbox(faces):
    from fer_edge.pipeline.yunet import YuNetDetector, letterbox
    frame = scene(faces)                                             # 640x480 -> letterboxed into 640x640
    ours = YuNetDetector(FIXED_640, score_threshold=0.5).detect(frame)
    boxed, scale = letterbox(frame, 640, 640)
    assert scale == 1.0 and boxed.shape == (640, 640, 3)
    assert_same_faces(ours, opencv_faces(FIXED_640, boxed), scale)
    assert len(ours) == faces


@needs_yunet
def test_letterbox_maps_boxes_back_to_frame_pixels():
    from fer_edge.pipeline.yunet import YuNetDetector, letterbox
    frame = scene(1)
    boxed, scale = letterbox(frame, 320, 320)                        # 640x480 -> 320x240 + 80 rows of padding
    assert scale == 0.5 and boxed.shape == (320, 320, 3) and not boxed[240:].any()
    np.testing.assert_allclose(boxed[100, 100], frame[200, 200], atol=8)
    detector = YuNetDetector(FIXED_320, score_threshold=0.5)
    small = detector.detect(frame)
    big = detector.detect(cv2.resize(frame, (1280, 960)))            # same content at twice the size
    assert len(small) == len(big) == 1
    np.testing.assert_allclose(np.array(big[0].box) / 2, small[0].box, atol=3)
    # The 320 model on the frame agrees with OpenCV's detector on the same letterboxed input.
    assert_same_faces(small, opencv_faces(FIXED_320, boxed), scale, tol_px=2 / scale)


def test_nms_keeps_the_best_of_overlapping_boxes():
    from fer_edge.pipeline.yunet import nms
    boxes = np.array([[0, 0, 100, 100], [5, 5, 100, 100], [200, 200, 50, 50], [0, 0, 100, 100], [210, 200, 50, 50]],
                     np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.5, 0.95], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [4, 1]
    assert nms(boxes, scores, 0.95).tolist() == [4, 1, 0, 2]         # near-duplicates only (0 and 3 are identical)
    assert nms(boxes, scores, 0.3, top_k=1).tolist() == [4]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).tolist() == []


def test_decode_grid_semantics():
    """One cell with known offsets decodes exactly as centre = (cell + d) * stride, size = exp(d) * stride."""
    from fer_edge.pipeline.yunet import decode
    w, h = 64, 32
    out = {}
    for s in (8, 16, 32):
        n = (w // s) * (h // s)
        out[f"cls_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"obj_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((1, n, 10), np.float32)
    cell = 1 * (w // 16) + 2                                         # row 1, col 2 at stride 16
    out["cls_16"][0, cell, 0], out["obj_16"][0, cell, 0] = 0.81, 1.5  # obj is clipped to 1 -> score 0.9
    out["bbox_16"][0, cell] = [0.5, 0.25, np.log(2.0), 0.0]
    out["kps_16"][0, cell] = np.arange(10) * 0.1
    boxes, kps, scores = decode(out, w, h, 0.5)
    np.testing.assert_allclose(scores, [0.9], rtol=1e-6)
    # centre (2.5 * 16, 1.25 * 16) = (40, 20); size (32, 16)
    np.testing.assert_allclose(boxes[0], [40 - 16, 20 - 8, 32, 16], rtol=1e-6)
    np.testing.assert_allclose(kps[0, 1], [(2 + 0.2) * 16, (1 + 0.3) * 16], rtol=1e-6)


def test_wrong_model_files_are_refused(tmp_path):
    from fer_edge.pipeline.detectors import create_detector
    from fer_edge.runtime.errors import ModelLoadError
    with pytest.raises(ModelLoadError, match="no such YuNet"):
        create_detector(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="unknown face detector"):
        create_detector(tmp_path / "face.xml")


@needs_yunet
@needs_export_stack
def test_fer_model_is_not_a_yunet(tiny_model):
    from fer_edge.runtime.errors import ModelLoadError
    from fer_edge.pipeline.yunet import YuNetDetector
    with pytest.raises(ModelLoadError, match="not a YuNet"):
        YuNetDetector(tiny_model)


# ------------------------------------------------------------------ the bundled YuNet (no ../shared needed)
ZOO_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"  # OpenCV Zoo's LFS pointer


def test_bundled_model_is_the_opencv_zoo_file_with_its_licence_and_notice():
    import importlib.resources
    from conftest import REPO
    from fer_edge.pipeline.yunet import BUNDLED_YUNET
    from fer_edge.runtime.artifact_io import sha256_file
    installed = importlib.resources.files("fer_edge.pipeline") / "models"      # what the package data ships
    assert (installed / BUNDLED_YUNET.name).is_file() and (installed / "LICENSE").is_file()
    assert sha256_file(BUNDLED_YUNET) == ZOO_SHA256
    licence = (BUNDLED_YUNET.parent / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence and "Shiqi Yu" in licence
    notice = (REPO / "NOTICE").read_text()
    assert BUNDLED_YUNET.name in notice and ZOO_SHA256 in notice and "pipeline/models/LICENSE" in notice


@pytest.mark.parametrize("faces", [1, 4])
def test_default_detector_is_the_bundled_yunet_at_320_and_matches_opencv(faces):
    from fer_edge.pipeline.detectors import create_detector
    from fer_edge.pipeline.yunet import BUNDLED_YUNET, letterbox
    detector = create_detector(score_threshold=0.5)
    assert detector.path == str(BUNDLED_YUNET) and (detector.input_w, detector.input_h) == (320, 320)
    frame = scene(faces)                                             # 640x480 -> 320x240, padded to 320x256
    ours = detector.detect(frame)
    boxed, scale = letterbox(frame, 320, 240, 32)
    assert boxed.shape == (256, 320, 3) and scale == 0.5
    assert len(ours) == faces
    # OpenCV's own detector, given the same file and the same 320x256 input, finds the same faces.
    assert_same_faces(ours, opencv_faces(BUNDLED_YUNET, boxed), scale, tol_px=2 / scale)


def test_freeing_the_size_computes_what_the_same_weights_exported_at_that_size_compute():
    ort = pytest.importorskip("onnxruntime")
    from fer_edge.pipeline.onnx_free_size import free_image_size
    from fer_edge.pipeline.yunet import BUNDLED_YUNET, letterbox
    original = BUNDLED_YUNET.read_bytes()
    freed = ort.InferenceSession(free_image_size(original), providers=["CPUExecutionProvider"])
    assert freed.get_inputs()[0].shape[2:] == ["height", "width"]
    at_640 = letterbox(scene(4), 640, 640)[0].transpose(2, 0, 1)[None].astype(np.float32)
    fixed = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    for a, b in zip(freed.run(None, {"input": at_640}), fixed.run(None, {"input": at_640})):
        np.testing.assert_array_equal(a, b)                          # at its own size: the very same numbers
    if not FIXED_320.exists():
        pytest.skip(f"needs {FIXED_320} for the comparison at 320")
    at_320 = letterbox(scene(4), 320, 320)[0].transpose(2, 0, 1)[None].astype(np.float32)
    export_320 = ort.InferenceSession(str(FIXED_320), providers=["CPUExecutionProvider"])
    for a, b in zip(freed.run(None, {"input": at_320}), export_320.run(None, {"input": at_320})):
        np.testing.assert_array_equal(a, b)                          # = the same weights exported at 320


def test_a_graph_that_only_runs_at_its_own_size_is_refused_at_load(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    from fer_edge.pipeline.yunet import BUNDLED_YUNET, YuNetDetector
    from fer_edge.runtime.errors import ModelLoadError
    proto = onnx.load(str(BUNDLED_YUNET))
    # Pin the stride-8 reshape to the 640 grid (80x80 cells), as an exporter that bakes in sizes would.
    proto.graph.initializer.append(numpy_helper.from_array(np.array([1, 6400, 1], np.int64), "pinned"))
    reshapes = [n for n in proto.graph.node if n.op_type == "Reshape"]
    reshapes[0].input[1] = "pinned"
    pinned = tmp_path / "pinned.onnx"
    pinned.write_bytes(proto.SerializeToString())
    assert len(YuNetDetector(pinned).detect(scene(1))) == 1          # at its own size it still works
    with pytest.raises(ModelLoadError, match="does not run at 320x320"):
        YuNetDetector(pinned, input_size=320)


def test_a_truncated_model_is_a_clear_error(tmp_path):
    from fer_edge.pipeline.onnx_free_size import free_image_size
    from fer_edge.pipeline.yunet import BUNDLED_YUNET
    from fer_edge.runtime.errors import ModelLoadError
    with pytest.raises(ModelLoadError, match="not a readable ONNX file"):
        free_image_size(BUNDLED_YUNET.read_bytes()[:1000], "half.onnx")


def test_detector_names():
    from fer_edge.pipeline.detectors import create_detector
    from fer_edge.pipeline.yunet import BUNDLED_YUNET
    from fer_edge.runtime.errors import ModelLoadError
    assert create_detector("yunet").path == str(BUNDLED_YUNET)
    assert create_detector("YuNet", input_size=640).input_w == 640
    with pytest.raises(ModelLoadError, match="unknown face detector.*'haar'"):
        create_detector("mediapipe")
    with pytest.raises(ValueError, match="too small"):
        create_detector(input_size=16)


def test_detector_shrink_halves_with_area_then_one_linear_step():
    """The detector's resize: whole halvings by INTER_AREA (fast and anti-aliased), then INTER_LINEAR for the rest
    of the way, so an arbitrary --detector-size does not pay INTER_AREA's slow fractional path."""
    from fer_edge.pipeline.yunet import shrink
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    halved_twice = cv2.resize(cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA), (160, 120),
                              interpolation=cv2.INTER_AREA)
    assert np.array_equal(shrink(frame, 160, 120), halved_twice)
    via_320 = cv2.resize(cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA), (224, 168),
                         interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(shrink(frame, 224, 168), via_320)
    # Close to a direct INTER_AREA resize (what the detector used before): the anti-aliasing is kept.
    direct = cv2.resize(frame, (224, 168), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(shrink(frame, 224, 168).astype(np.float32) - direct).mean() < 1.5
    assert shrink(frame, 800, 600).shape == (600, 800, 3)      # enlarging: one linear step
