"""YuNet face detector run through fer-edge's own backend (ONNX Runtime), with its decoding and NMS in numpy.

The YuNet ONNX files have no post-processing in the graph: per stride s in (8, 16, 32) they output
cls, obj (one score per grid cell), bbox (dx, dy, log w, log h) and kps (5 landmark offsets). The
decoding follows the semantics of OpenCV's FaceDetectorYN so boxes agree with it:
score = sqrt(clip(cls) * clip(obj)); centre = (cell + d) * s; size = exp(log size) * s;
landmark = (cell + k) * s. The frame is letterboxed (scaled, padded right/bottom with zeros) to
the model input and boxes are mapped back to frame pixels.

fer-edge bundles face_detection_yunet_2023mar.onnx (`BUNDLED_YUNET`, Apache-2.0, see pipeline/models/LICENSE
and NOTICE): the default detector, run at DEFAULT_INPUT_SIZE.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from fer_edge.pipeline.detection import Detection, check_frame, to_bgr
from fer_edge.pipeline.onnx_free_size import free_image_size
from fer_edge.runtime.errors import ModelLoadError
from fer_edge.runtime.onnx_backend import ort_session


BUNDLED_YUNET = Path(__file__).resolve().parent / "models" / "face_detection_yunet_2023mar.onnx"
STRIDES = (8, 16, 32)
PAD_DIVISOR = 32  # the largest stride: padded inputs must be a multiple of it
# Frames are fitted into this square unless a model fixes its own size. 320 keeps detection near 2-3 ms per
# 640x480 frame on one CPU core and finds faces down to about 20 px there; 640 finds smaller faces at ~4x the cost.
DEFAULT_INPUT_SIZE = 320


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: Optional[int] = None) -> np.ndarray:
    """Greedy non-maximum suppression on (N, 4) x, y, w, h boxes; returns kept indices, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    areas = boxes[:, 2] * boxes[:, 3]
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if top_k and len(keep) >= top_k:
            break
        rest = order[1:]
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def letterbox(frame: np.ndarray, target_w: int, target_h: int, pad_to: int = 1) -> Tuple[np.ndarray, float]:
    """Scale a BGR frame to fit target_w x target_h keeping its aspect ratio, pad right/bottom with zeros.

    Returns (image of shape (H', W', 3), scale). H' and W' are target_h/target_w rounded up to pad_to.
    A frame point p maps to p * scale in the letterboxed image.
    """
    h, w = frame.shape[:2]
    scale = min(target_w / w, target_h / h)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    out_w = -(-target_w // pad_to) * pad_to
    out_h = -(-target_h // pad_to) * pad_to
    resized = frame if (new_w, new_h) == (w, h) else shrink(frame, new_w, new_h)
    canvas = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


def shrink(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Resize for the detector: exact halvings with INTER_AREA, then one INTER_LINEAR step of less than 2x.

    OpenCV's INTER_AREA is fast only at whole-number ratios: 640x480 -> 320x240 took 0.09 ms on a 2-core Xeon, but
    -> 224x168 took 1.14 ms and -> 160x120 0.68 ms, more than YuNet itself at those sizes (1.04 / 0.49 ms). Halving
    first keeps the anti-aliasing of INTER_AREA where the ratio is large, and the last step is small enough for
    INTER_LINEAR (0.09 ms).
    """
    while image.shape[1] >= 2 * new_w and image.shape[0] >= 2 * new_h:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) == (new_w, new_h):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def decode(outputs: dict, input_w: int, input_h: int, score_threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw YuNet outputs for one image -> (boxes (N, 4) x, y, w, h; landmarks (N, 5, 2); scores (N,)) in input pixels."""
    boxes, kps, scores = [], [], []
    for s in STRIDES:
        cols, rows = input_w // s, input_h // s
        cls = outputs[f"cls_{s}"].reshape(-1)
        obj = outputs[f"obj_{s}"].reshape(-1)
        if cls.size != rows * cols:
            raise ModelLoadError(f"YuNet output cls_{s} has {cls.size} cells but a {input_w}x{input_h} input gives "
                                 f"{cols}x{rows}; is this a YuNet (libfacedetection.train) ONNX?")
        score = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))
        idx = np.nonzero(score >= score_threshold)[0]
        if idx.size == 0:
            continue
        bbox = outputs[f"bbox_{s}"].reshape(-1, 4)[idx]
        kp = outputs[f"kps_{s}"].reshape(-1, 5, 2)[idx]
        cell = np.stack([idx % cols, idx // cols], axis=1).astype(np.float32)  # (col, row)
        centre = (cell + bbox[:, :2]) * s
        size = np.exp(bbox[:, 2:]) * s
        boxes.append(np.concatenate([centre - size / 2.0, size], axis=1))
        kps.append((cell[:, None, :] + kp) * s)
        scores.append(score[idx])
    if not scores:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)
    return np.concatenate(boxes), np.concatenate(kps), np.concatenate(scores)


class YuNetDetector:
    """YuNet (OpenCV Zoo / libfacedetection.train ONNX) through ONNX Runtime.

    path: the .onnx file. input_size: the square the frame is scaled to fit (padded only to a multiple of 32).
      None: a fixed-shape file (320x320, 640x640) runs at its own size, a dynamic one at DEFAULT_INPUT_SIZE.
      A fixed-shape file given another input_size runs at that size: its declared size is freed on loading
      (`onnx_free_size`), which computes exactly what the same weights exported at that size compute.
    score_threshold / nms_threshold / top_k: as in cv2.FaceDetectorYN (defaults 0.6 / 0.3 / 5000).
    """
    name = "yunet"

    def __init__(self, path: os.PathLike, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 5000, input_size: Optional[int] = None, threads: Optional[int] = None,
                 providers: Optional[List[str]] = None):
        path = str(path)
        if not os.path.isfile(path):
            raise ModelLoadError(f"{path}: no such YuNet model file. Omit --detector to use the bundled YuNet, or get "
                                 "face_detection_yunet_2023mar.onnx from the OpenCV Zoo (models/face_detection_yunet).")
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError("score_threshold and nms_threshold must lie in [0, 1]")
        if input_size is not None and int(input_size) < PAD_DIVISOR:
            raise ValueError(f"input_size {input_size} is too small; use at least {PAD_DIVISOR}")
        self.path = path
        self.session = ort_session(path, threads, providers)
        self._check_outputs()
        fixed_h, fixed_w = self.session.get_inputs()[0].shape[2:4]
        self.dynamic = not (isinstance(fixed_h, int) and isinstance(fixed_w, int))
        if not self.dynamic and input_size and int(input_size) not in (fixed_w, fixed_h):
            with open(path, "rb") as fh:
                self.session = ort_session(free_image_size(fh.read(), path), threads, providers)
            self.dynamic = True
        if self.dynamic:
            self.input_w = self.input_h = int(input_size or DEFAULT_INPUT_SIZE)
        else:
            self.input_w, self.input_h = int(fixed_w), int(fixed_h)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        if self.dynamic:
            self._check_runs()

    def _check_outputs(self) -> None:
        names = {o.name for o in self.session.get_outputs()}
        missing = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES if f"{k}_{s}" not in names]
        if missing:
            raise ModelLoadError(f"{self.path}: not a YuNet model (outputs {sorted(names)}; missing {missing}). "
                                 "Use a YuNet ONNX from libfacedetection.train or the OpenCV Zoo.")

    def _check_runs(self) -> None:
        """One blank input now, so a graph that only works at its exported size fails here, not on the first frame."""
        try:
            self.detect(np.zeros((self.input_h, self.input_w, 3), np.uint8))
        except ModelLoadError:
            raise
        except Exception as exc:  # ONNX Runtime's own error types
            raise ModelLoadError(f"{self.path}: this YuNet graph does not run at {self.input_w}x{self.input_h} "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); omit input_size to run "
                                 "it at its own size, or use the dynamic YuNet model") from None

    def __repr__(self) -> str:
        kind = "frames fitted into" if self.dynamic else "fixed"
        return f"YuNetDetector({os.path.basename(self.path)}, {kind} {self.input_w}x{self.input_h})"

    def prepare(self, frame: np.ndarray) -> Tuple[np.ndarray, float]:
        """Frame -> (float32 1x3xHxW tensor of raw BGR 0..255, scale frame->input)."""
        if self.dynamic:
            # Fit the frame into input_w x input_h, then pad only to a multiple of 32 (not to a square).
            h, w = frame.shape[:2]
            scale = min(self.input_w / w, self.input_h / h)
            image, scale = letterbox(frame, max(1, int(round(w * scale))), max(1, int(round(h * scale))), PAD_DIVISOR)
        else:
            image, scale = letterbox(frame, self.input_w, self.input_h)
        return image.transpose(2, 0, 1)[None].astype(np.float32), scale

    def raw_outputs(self, tensor: np.ndarray) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: tensor})))

    def detect(self, frame: np.ndarray) -> List[Detection]:
        if not check_frame(frame):
            return []
        tensor, scale = self.prepare(to_bgr(frame))
        boxes, kps, scores = decode(self.raw_outputs(tensor), tensor.shape[3], tensor.shape[2], self.score_threshold)
        keep = nms(boxes, scores, self.nms_threshold, self.top_k)
        h, w = frame.shape[:2]
        out = []
        for i in keep:
            box = boxes[i] / scale
            # Drop boxes that lie wholly in the letterbox padding.
            if box[0] >= w or box[1] >= h or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
                continue
            out.append(Detection(tuple(float(v) for v in box), float(scores[i]), (kps[i] / scale).astype(np.float32)))
        return out

    __call__ = detect
