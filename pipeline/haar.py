"""OpenCV's frontal-face Haar cascade (bundled in the opencv package): the no-model default detector.

It needs no download, but it is slower and weaker than YuNet (misses turned and small faces, no
landmarks, no calibrated confidence). The pipeline says so once when it falls back to it.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

import cv2
import numpy as np

from fer_edge.pipeline.detection import Detection, check_frame, to_gray
from fer_edge.runtime.errors import BackendUnavailableError, ModelLoadError

log = logging.getLogger("fer_edge.runtime")
CASCADE = "haarcascade_frontalface_default.xml"


def cascade_path() -> str:
    return os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), CASCADE)


def haar_available() -> bool:
    """OpenCV 4.x ships CascadeClassifier and its XML files; OpenCV 5.0 moved both out of the main package."""
    return hasattr(cv2, "CascadeClassifier") and os.path.isfile(cascade_path())


class HaarDetector:
    """cv2.CascadeClassifier on a grayscale copy, downscaled to at most max_side pixels for speed.

    score is 1.0 for every face: the cascade has no calibrated confidence.
    """
    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24,
                 max_side: Optional[int] = 640, **unused):
        if unused:
            raise ValueError(f"HaarDetector does not take {sorted(unused)}; these options are for YuNet")
        if not haar_available():
            raise BackendUnavailableError(
                f"OpenCV {cv2.__version__} has no Haar cascade (OpenCV 5 removed CascadeClassifier and its XML files "
                "from the main package), so there is no default face detector. Pass a YuNet model instead "
                "(--detector face_detection_yunet_2023mar.onnx, from the OpenCV Zoo), or install OpenCV 4: "
                "pip install 'opencv-python-headless>=4.8,<5'")
        path = cascade_path()
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ModelLoadError(f"OpenCV could not load its bundled Haar cascade {path}; reinstall "
                                 "opencv-python-headless or pass a YuNet model (--detector face_detection_yunet_2023mar.onnx)")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.max_side = max_side

    def __repr__(self) -> str:
        return f"HaarDetector({CASCADE})"

    def detect(self, frame: np.ndarray) -> List[Detection]:
        if not check_frame(frame):
            return []
        gray = to_gray(frame)
        h, w = gray.shape
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            gray = cv2.resize(gray, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(1, int(self.min_size * scale))
        faces = self.cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                              minSize=(min_side, min_side))
        boxes = sorted((tuple(float(v) / scale for v in f) for f in np.asarray(faces).reshape(-1, 4)),
                       key=lambda b: -b[2] * b[3])  # largest first
        return [Detection(b, 1.0, None) for b in boxes]

    __call__ = detect


_warned = False


def default_detector() -> HaarDetector:
    """The Haar detector, logging once per process that it is being used because no detector model was given."""
    global _warned
    detector = HaarDetector()  # raises first when this OpenCV has no cascade
    if not _warned:
        log.warning("no face detector model given: using OpenCV's bundled Haar cascade (%s). It misses turned and "
                    "small faces; pass a YuNet ONNX (e.g. face_detection_yunet_2023mar.onnx) for better results.",
                    CASCADE)
        _warned = True
    return detector
