"""Face crops from a video for calibration: every Nth frame, run the face detector, cut each face by the contract.

The crops are cut exactly as the runtime cuts them (`runtime.preprocess.crop_face` with the model's crop
margin), so calibration sees the same kind of input the deployed model will see.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Optional, Union

import cv2
import numpy as np
from tqdm import tqdm

from fer_edge.data.datasets import FaceSet
from fer_edge.pipeline.detectors import create_detector
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import DataError
from fer_edge.runtime.preprocess import crop_face

# Same as FerPipeline's default min_face: the runtime ignores smaller boxes, so calibration should too.
MIN_FACE = 12


def open_video(path: Path, step: int):
    """(cv2.VideoCapture, number of frames `step` will sample or 0 if the container does not say)."""
    if step < 1:
        raise DataError(f"--calib-frame-step {step}: must be 1 or more")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: OpenCV cannot open this video (unsupported codec or not a video); "
                        "convert it to .mp4 (H.264) or extract frames into an image folder")
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return capture, (count + step - 1) // step if count > 0 else 0


def sampled_frames(capture, step: int) -> Iterator[np.ndarray]:
    """Frames 0, step, 2*step, ... of an open capture."""
    index = 0
    while True:
        # grab() skips the colour conversion of frames that are not sampled.
        if not capture.grab():
            return
        if index % step == 0:
            ok, frame = capture.retrieve()
            if not ok:
                return
            yield frame
        index += 1


def every_nth(step: int) -> str:
    """'every frame', 'every 2nd frame', 'every 15th frame' (for source descriptions)."""
    if step == 1:
        return "every frame"
    suffix = "th" if 10 <= step % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(step % 10, "th")
    return f"every {step}{suffix} frame"


def detector_label(detector) -> str:
    name = getattr(detector, "name", type(detector).__name__)
    if name == "haar":
        return "Haar"
    if name == "yunet":
        return f"YuNet {os.path.basename(getattr(detector, 'path', ''))}".strip()
    return str(name)


def _no_face_error(path: Path, sampled: int, step: int, label: str) -> DataError:
    fixes = []
    if label == "Haar":
        fixes.append("use the bundled YuNet detector (the default: drop --calib-detector haar; the Haar cascade "
                     "misses turned, small and dim faces)")
    if step > 1:
        fixes.append(f"sample more frames with a lower --calib-frame-step (now {step})")
    fixes.append("pass a folder of face crops as --calib instead")
    fixes.append("if the video's frames already are face crops, pass --calib-detector none to use whole frames")
    return DataError(f"{path}: no face found in any of the {sampled} sampled frames ({every_nth(step)}, {label} "
                     f"detector). Fixes: " + "; ".join(fixes) + ".")


def video_face_crops(path: Union[str, Path], contract: ModelContract, step: int,
                     detector: Union[None, str, os.PathLike, object] = None,
                     min_face: int = MIN_FACE, progress: Optional[bool] = None) -> FaceSet:
    """Face crops from every `step`-th frame of a video, cut by the contract's crop policy.

    detector: None or 'yunet' for the bundled YuNet, 'haar', a YuNet .onnx path, or a ready detector object.
    Every detected face of a sampled frame is kept (not just the best one): the runtime classifies every
    face it finds, so several people in view are production input too. Frames with no face are skipped
    and counted in the returned FaceSet's `source`. progress: tqdm bar (None = only on a terminal).
    """
    path = Path(path)
    if detector is None or isinstance(detector, (str, os.PathLike)):
        detector = create_detector(detector)
    label = detector_label(detector)
    capture, total = open_video(path, step)
    crops: List[np.ndarray] = []
    sampled = with_face = 0
    bar = tqdm(total=total or None, desc=f"finding faces in {path.name}", unit="frame", leave=False,
               disable=None if progress is None else not progress)
    try:
        for frame in sampled_frames(capture, step):
            sampled += 1
            bar.update(1)
            faces = [d for d in detector.detect(frame) if min(d.box[2], d.box[3]) >= min_face]
            if faces:
                with_face += 1
                crops.extend(crop_face(frame, d.box, contract) for d in faces)
    finally:
        bar.close()
        capture.release()
    if sampled == 0:
        raise DataError(f"{path}: no frames could be decoded from this video")
    if not crops:
        raise _no_face_error(path, sampled, step, label)
    source = (f"{path.name} ({every_nth(step)}, {len(crops)} faces from {with_face} of {sampled} sampled frames, "
              f"{label})")
    return FaceSet(crops, None, [], source)
