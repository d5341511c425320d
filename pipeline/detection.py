"""The common face-detection types: `Detection`, frame checks and box helpers, shared by both detectors.

Every detector takes a BGR, BGRA or grayscale uint8 frame of any size and returns a list of
`Detection` in frame pixels, best score first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np


Box = Tuple[float, float, float, float]  # x, y, w, h in frame pixels


@dataclass
class Detection:
    """One face: box (x, y, w, h), detector score, and 5 landmarks (eyes, nose, mouth corners) when the detector has them."""
    box: Box
    score: float
    landmarks: Optional[np.ndarray] = None  # (5, 2) float32, frame pixels

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": None if self.landmarks is None else np.round(self.landmarks, 2).tolist()}


def check_frame(frame) -> bool:
    """Validate a frame. True when it has pixels, False for a zero-size frame (which yields no faces).

    Raises ValueError for None, non-arrays, non-uint8 data and impossible shapes, naming the fix.
    """
    if frame is None:
        raise ValueError("frame is None: the camera or file returned no image (check the source, "
                         "e.g. cv2.VideoCapture(...).read() returns (False, None) at the end of a video)")
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame is a {type(frame).__name__}; pass a numpy uint8 image (H, W) or (H, W, 3/4)")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame has dtype {frame.dtype}; pass uint8 pixels (0..255), "
                         "e.g. np.clip(frame, 0, 255).astype(np.uint8)")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise ValueError(f"frame has shape {frame.shape}; expected (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA")
    return frame.size > 0


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """Gray/BGRA frame -> 3-channel BGR (the input colour order YuNet was trained with)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 1:
        return frame[:, :, 0]
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N, 4) and (M, 4) boxes given as x, y, w, h."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def detections_from_boxes(boxes) -> List[Detection]:
    """User-supplied boxes [(x, y, w, h), ...] -> Detections with score 1.0, checked for shape and size."""
    arr = np.asarray(boxes, dtype=np.float64) if len(boxes) else np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be a list of (x, y, w, h) tuples; got an array of shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr[:, 2:] <= 0).any():
        raise ValueError("every box needs finite x, y and positive w, h (x, y, w, h in frame pixels)")
    return [Detection(tuple(float(v) for v in b), 1.0, None) for b in arr]
