"""FerPipeline: frame -> detect -> crop -> classify (one batch) -> track -> smooth -> FaceResults.

    from fer_edge.pipeline.fer_pipeline import FerPipeline
    pipe = FerPipeline("fer-artifacts/model.onnx", threads=2)   # detector: the bundled YuNet
    for face in pipe(frame):            # BGR, BGRA or gray uint8, any size
        print(face.track_id, face.smoothed_label, face.smoothed_score)

Users with their own detector pass boxes: pipe(frame, boxes=[(x, y, w, h), ...]).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from fer_edge.pipeline.detection import Box, Detection, check_frame, detections_from_boxes
from fer_edge.pipeline.detectors import create_detector
from fer_edge.runtime.model import FerModel, load
from fer_edge.runtime.preprocess import crop_face, face_box_problem
from fer_edge.pipeline.smoothing import Smoother, SmoothingConfig
from fer_edge.pipeline.tracker import IouTracker

PIPELINE_STAGES = ("detect", "crop", "classify", "smooth")
log = logging.getLogger("fer_edge.runtime")


@dataclass
class FaceResult:
    """One face in one frame. Probabilities are in the model's label order (`labels`)."""
    box: Box                                # x, y, w, h in frame pixels
    landmarks: Optional[np.ndarray]         # (5, 2) from YuNet, None from Haar or user boxes
    detection_score: float
    track_id: int
    probabilities: np.ndarray               # this frame's raw probabilities
    label: str                              # raw top-1 of this frame
    score: float
    smoothed_probabilities: np.ndarray
    smoothed_label: str                     # what to show / act on
    smoothed_score: float

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "box": [round(float(v), 1) for v in self.box],
                "detection_score": round(self.detection_score, 4),
                "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist(),
                "label": self.label, "score": round(self.score, 4),
                "probabilities": [round(float(p), 4) for p in self.probabilities],
                "smoothed_label": self.smoothed_label, "smoothed_score": round(self.smoothed_score, 4),
                "smoothed_probabilities": [round(float(p), 4) for p in self.smoothed_probabilities]}


class FerPipeline:
    """Detection, classification, tracking and smoothing for a stream of frames.

    model: a FerModel or an artifact path (.onnx / .engine).
    detector: a detector object (with .detect(frame)), a YuNet .onnx path, "haar" for OpenCV's Haar cascade,
      or None for the bundled YuNet (`create_detector`).
    smoothing: a SmoothingConfig or dict (method ema|window|none, alpha, window, margin, hold).
    min_face: faces smaller than this many pixels (box side) are ignored; max_faces keeps the largest.
    """

    def __init__(self, model: Union[FerModel, str, os.PathLike], detector=None, threads: Optional[int] = None,
                 smoothing: Union[SmoothingConfig, dict, None] = None, tracker: Optional[IouTracker] = None,
                 min_face: int = 12, max_faces: Optional[int] = None):
        self.model = model if isinstance(model, FerModel) else load(model, threads=threads)
        if detector is None or isinstance(detector, (str, os.PathLike)):
            detector = create_detector(detector, threads=threads)
        if not callable(getattr(detector, "detect", None)):
            raise TypeError(f"detector {detector!r} has no detect(frame) method")
        self.detector = detector
        self.tracker = tracker or IouTracker()
        if isinstance(smoothing, dict):
            smoothing = SmoothingConfig(**smoothing)
        self.smoother = Smoother(smoothing)
        self.min_face = int(min_face)
        self.max_faces = max_faces
        self.labels = self.model.labels
        self.last_timings: Dict[str, float] = {s: 0.0 for s in PIPELINE_STAGES}
        self.skipped_boxes = 0

    def reset(self) -> None:
        """Forget all tracks and smoothing state (e.g. when the camera scene cuts)."""
        self.tracker.reset()
        self.smoother.reset()

    def detect(self, frame: np.ndarray) -> List[Detection]:
        faces = [d for d in self.detector.detect(frame) if min(d.box[2], d.box[3]) >= self.min_face]
        faces = self._drop_uncroppable(frame, faces)
        if self.max_faces is not None:
            faces = sorted(faces, key=lambda d: -d.box[2] * d.box[3])[: self.max_faces]
        return faces

    def _drop_uncroppable(self, frame: np.ndarray, faces: List[Detection]) -> List[Detection]:
        """Skip boxes a glitching detector made absurd (NaN, huge, outside the frame), with a warning that counts
        them: one bad box must not stop the stream, and must not go unnoticed."""
        kept = []
        for d in faces:
            problem = face_box_problem(d.box, frame.shape, self.model.contract)
            if problem is None:
                kept.append(d)
            else:
                self.skipped_boxes += 1
                log.warning("skipped a detector box (%s); %d skipped so far", problem, self.skipped_boxes)
        return kept

    def classify(self, frame: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        """All faces of the frame in ONE batch -> probabilities [N, K]."""
        t0 = time.perf_counter()
        tensor = self.model.preprocess([crop_face(frame, d.box, self.model.contract) for d in detections])
        t1 = time.perf_counter()
        probs = self.model.to_probabilities(self.model.infer(tensor))
        t2 = time.perf_counter()
        self.last_timings["crop"] = (t1 - t0) * 1e3
        self.last_timings["classify"] = (t2 - t1) * 1e3
        return probs

    def process(self, frame: np.ndarray, boxes: Optional[Sequence[Box]] = None) -> List[FaceResult]:
        """One frame -> one FaceResult per face (empty for zero-size frames and frames without faces).

        boxes: your own (x, y, w, h) face boxes instead of running the detector; boxes wholly outside
        the frame are ignored, and the rest are checked like crop_face does: a box whose centre lies outside
        the frame (often (x0, y0, x1, y1) corners passed as a box) raises InputError naming the fix.
        """
        self.last_timings = {s: 0.0 for s in PIPELINE_STAGES}
        has_pixels = check_frame(frame)
        t0 = time.perf_counter()
        if not has_pixels:
            detections = []
        elif boxes is not None:
            h, w = frame.shape[:2]
            detections = [d for d in detections_from_boxes(boxes)
                          if d.box[0] < w and d.box[1] < h and d.box[0] + d.box[2] > 0 and d.box[1] + d.box[3] > 0]
        else:
            detections = self.detect(frame)
        self.last_timings["detect"] = (time.perf_counter() - t0) * 1e3
        probs = self.classify(frame, detections) if detections else np.zeros((0, len(self.labels)), np.float32)
        t0 = time.perf_counter()
        track_ids = self.tracker.update([d.box for d in detections])
        self.smoother.retain(self.tracker.active_ids)
        results = []
        for det, tid, p in zip(detections, track_ids, probs):
            smoothed, s_idx = self.smoother.update(tid, p)
            top = int(np.argmax(p))
            results.append(FaceResult(det.box, det.landmarks, det.score, tid, p, self.labels[top], float(p[top]),
                                      smoothed, self.labels[s_idx], float(smoothed[s_idx])))
        self.last_timings["smooth"] = (time.perf_counter() - t0) * 1e3
        return results

    __call__ = process
