"""Video calibration sources with face detection: real MJPG videos written here, real detectors, no torch.

The face videos paste an enlarged FER-2013 face from ../shared onto a background at test time (nothing
is committed); the no-face, whole-frame and error tests need no shared data.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from conftest import FER2013_LABELS, PUBLICTEST_NPZ, YUNET_DIR, needs_shared
from fer_edge.calibration import sources
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import DataError, ModelLoadError
from fer_edge.pipeline.haar import HaarDetector, cascade_path, haar_available
from fer_edge.runtime.preprocess import square_box

GRAY = ModelContract(arch="tf_efficientnetv2_b0", labels=list(FER2013_LABELS), input_size=48, channels=1,
                     color_order="GRAY", mean=[0.5], std=[0.5], crop_margin=0.1, source_weights_sha256="a" * 64)
WIDE = dataclasses.replace(GRAY, crop_margin=0.3)
W, H = 320, 240
FRAMES = 30

needs_haar = pytest.mark.skipif(not haar_available(), reason="this OpenCV has no Haar cascade (OpenCV 5)")


def background() -> np.ndarray:
    """A horizontal grey ramp: textureless, so no detector should find a face in it."""
    ramp = np.tile(np.linspace(40, 200, W).astype(np.uint8), (H, 1))
    return cv2.cvtColor(ramp, cv2.COLOR_GRAY2BGR)


def fer_face_frame() -> np.ndarray:
    """The background with an enlarged FER-2013 face pasted in the middle.

    Picks the first of 40 public-test crops on which OpenCV's own cascade finds exactly one face, so the
    choice does not depend on fer-edge code.
    """
    cascade = cv2.CascadeClassifier(cascade_path())
    with np.load(PUBLICTEST_NPZ) as data:
        crops = data["x"][:40]
    for crop in crops:
        face = cv2.resize(cv2.copyMakeBorder(crop, 16, 16, 16, 16, cv2.BORDER_REPLICATE), (128, 128),
                          interpolation=cv2.INTER_LINEAR)
        frame = background()
        frame[56:184, 96:224] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
        if len(cascade.detectMultiScale(cv2.equalizeHist(frame[:, :, 0]), 1.1, 5, minSize=(24, 24))) == 1:
            return frame
    pytest.skip("OpenCV's cascade found none of the first 40 FER-2013 crops")


def write_video(path, frames) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    assert writer.isOpened(), "this OpenCV cannot write MJPG .avi"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def decoded_frames(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    """30 frames; the face is in frames 0, 3, ..., 15 only, every other frame is the bare background."""
    if not PUBLICTEST_NPZ.exists():
        pytest.skip(f"needs FER-2013 from ../shared ({PUBLICTEST_NPZ} not found) to paste a real face")
    if not haar_available():
        pytest.skip("this OpenCV has no Haar cascade (OpenCV 5)")
    face, empty = fer_face_frame(), background()
    frames = [face if i % 3 == 0 and i < 18 else empty for i in range(FRAMES)]
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames)


@pytest.fixture(scope="module")
def plain_video(tmp_path_factory):
    """30 frames of moving grey ramps: no face anywhere."""
    frames = [np.roll(background(), 7 * i, axis=1) for i in range(FRAMES)]
    return write_video(tmp_path_factory.mktemp("video") / "plain.avi", frames)


# ------------------------------------------------------------------ faces found
@needs_shared
def test_haar_crops_follow_step_and_count_frames_without_faces(face_video):
    faces = sources.load_source(face_video, frame_step=3, contract=GRAY, detector="haar")
    # sampled: 0, 3, ..., 27 (10 frames); the face is in 0..15 (6 of them)
    assert faces.source == "clip.avi (every 3rd frame, 6 faces from 6 of 10 sampled frames, Haar)"
    assert len(faces) == 6 and not faces.labelled
    # step 2 samples 0, 2, ..., 28: the face frames among them are 0, 6 and 12
    faces2 = sources.load_source(face_video, frame_step=2, contract=GRAY, detector="haar")
    assert faces2.source == "clip.avi (every 2nd frame, 3 faces from 3 of 15 sampled frames, Haar)"


@needs_shared
def test_crops_are_cut_by_the_contract_margin(face_video):
    # MJPG does not decode every copy of the face bit-identically, so compare frame by frame.
    frames = decoded_frames(face_video)[0:18:3]
    boxes = [d.box for frame in frames for d in HaarDetector().detect(frame)]
    assert len(boxes) == len(frames)
    for contract in (GRAY, WIDE):
        faces = sources.load_source(face_video, frame_step=3, contract=contract, detector="haar")
        for frame, box, crop in zip(frames, boxes, faces.images):
            x0, y0, x1, y1 = square_box(box, contract.crop_margin, contract.crop_square)
            assert crop.shape == (y1 - y0, x1 - x0, 3) and crop.shape[0] == crop.shape[1]
            assert np.array_equal(crop, frame[y0:y1, x0:x1])  # the face lies well inside the frame
            side = max(box[2], box[3])
            assert abs(crop.shape[0] - side * (1 + 2 * contract.crop_margin)) <= 1


@needs_shared
def test_face_crops_pass_the_model_checks_and_hash(face_video):
    faces = sources.load_source(face_video, frame_step=3, contract=GRAY)
    sources.check_fits_model(faces, GRAY)
    calib, _ = sources.split_calibration(faces, 4, seed=0, holdout=False)
    assert len(calib) == 4 and len(sources.content_hash(calib)) == 64


@needs_shared
@pytest.mark.skipif(not (YUNET_DIR / "face_detection_yunet_2023mar.onnx").exists(), reason="needs YuNet in ../shared")
def test_yunet_detector_path(face_video):
    faces = sources.load_source(face_video, frame_step=3, contract=GRAY,
                                detector=str(YUNET_DIR / "face_detection_yunet_2023mar.onnx"))
    assert faces.source.endswith("YuNet face_detection_yunet_2023mar.onnx)")
    assert "of 10 sampled frames" in faces.source and len(faces) >= 1


# ------------------------------------------------------------------ no shared data needed
@needs_haar
def test_no_face_anywhere_is_a_clear_error_with_fixes(plain_video):
    with pytest.raises(DataError) as err:
        sources.load_source(plain_video, frame_step=5, contract=GRAY)
    text = str(err.value)
    assert "no face found in any of the 6 sampled frames" in text
    for fix in ("--calib-frame-step (now 5)", "folder of face crops", "--calib-detector none"):
        assert fix in text
    assert "YuNet" in text and "drop --calib-detector haar" not in text     # the default already is YuNet
    with pytest.raises(DataError, match="drop --calib-detector haar"):
        sources.load_source(plain_video, frame_step=5, contract=GRAY, detector="haar")


def test_detector_none_keeps_whole_frames_and_says_so(plain_video):
    faces = sources.load_source(plain_video, frame_step=5, contract=GRAY, detector="none")
    assert faces.images.shape == (6, H, W, 3)
    assert faces.source == "plain.avi (every 5th frame, whole frames, face detection off (detector none))"


def test_without_contract_whole_frames_as_before(plain_video):
    faces = sources.load_source(plain_video, frame_step=1)
    assert faces.images.shape == (FRAMES, H, W, 3) and faces.source == "plain.avi (every frame, whole frames)"
    with pytest.raises(DataError, match="needs the model contract"):
        sources.load_source(plain_video, detector="yunet.onnx")


def test_unreadable_video_and_missing_detector_are_clear_errors(tmp_path, plain_video):
    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="OpenCV cannot open this video"):
        sources.load_source(str(junk), contract=GRAY)
    with pytest.raises(ModelLoadError, match="no such YuNet model file"):
        sources.load_source(plain_video, contract=GRAY, detector=str(tmp_path / "missing.onnx"))
    with pytest.raises(DataError, match="must be 1 or more"):
        sources.load_source(plain_video, frame_step=0, contract=GRAY)
