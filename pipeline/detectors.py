"""`create_detector`: a YuNet detector for an .onnx path, or OpenCV's Haar cascade when none is named.

Kept apart from `detection` (the shared types), which both detectors import.
"""
from __future__ import annotations

import os
from typing import Optional

from fer_edge.pipeline.haar import HaarDetector, default_detector
from fer_edge.pipeline.yunet import YuNetDetector
from fer_edge.runtime.errors import ModelLoadError


def create_detector(path: Optional[os.PathLike] = None, score_threshold: Optional[float] = None,
                    threads: Optional[int] = None, **options):
    """A YuNet detector for an .onnx path, or OpenCV's bundled Haar cascade when path is None.

    options go to the detector (YuNet: nms_threshold, top_k, input_size; Haar: min_size, ...).
    """
    if path is None:
        return HaarDetector(**options) if options else default_detector()
    path = str(path)
    if path.lower().endswith(".onnx"):
        kwargs = dict(options)
        if score_threshold is not None:
            kwargs["score_threshold"] = score_threshold
        return YuNetDetector(path, threads=threads, **kwargs)
    raise ModelLoadError(f"{path}: unknown detector file; pass a YuNet .onnx (e.g. face_detection_yunet_2023mar.onnx "
                         "from the OpenCV Zoo), or no detector to use OpenCV's Haar cascade")
