"""OpenCV's frontal-face Haar cascade (in OpenCV 4.x's package): an option, `create_detector("haar")`.

The default detector is the bundled YuNet: on the astronaut photo turned into a 60-frame clip (issue #12) the
cascade found a false second face in 8 (mp4) and 16 (avi) of 60 frames and was 6-7x slower than YuNet. It also has no
landmarks and no calibrated confidence. OpenCV 5 removed CascadeClassifier from the main package.
"""
from __future__ import annotations

import os
from typing import List, Optional

import cv2
import numpy as np

from fer_edge.pipeline.detection import Detection, check_frame, to_gray
from fer_edge.runtime.errors import BackendUnavailableError, ModelLoadError

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
                "from the main package), so the 'haar' detector is not available. Use the bundled YuNet (omit the "
                "detector, or pass 'yunet'), or install OpenCV 4 for Haar: "
                "pip install 'opencv-python-headless>=4.8,<5'")
        path = cascade_path()
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ModelLoadError(f"OpenCV could not load its bundled Haar cascade {path}; reinstall "
                                 "opencv-python-headless, or use the bundled YuNet (omit the detector)")
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
