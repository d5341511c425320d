"""`create_detector`: the bundled YuNet when no detector is named, a YuNet .onnx by path, "haar" for OpenCV's cascade.

Kept apart from `detection` (the shared types), which both detectors import.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from fer_edge.pipeline.haar import HaarDetector
from fer_edge.pipeline.yunet import BUNDLED_YUNET, DEFAULT_INPUT_SIZE, YuNetDetector
from fer_edge.runtime.errors import ModelLoadError

DETECTOR_NAMES = ("yunet", "haar")  # "yunet": the bundled model, the same as naming none
HOW_TO_NAME = ("omit it (or pass 'yunet') for the bundled YuNet, pass a YuNet .onnx such as "
               "yunet_s_320_320.onnx, or 'haar' for OpenCV's Haar cascade")


def create_detector(detector: Union[None, str, os.PathLike] = None, score_threshold: Optional[float] = None,
                    threads: Optional[int] = None, **options):
    """A face detector: None or "yunet" -> the bundled YuNet (face_detection_yunet_2023mar.onnx, run at 320 px),
    a path ending in .onnx -> that YuNet file, "haar" -> OpenCV's Haar cascade (OpenCV 4.x only).

    options go to the detector (YuNet: nms_threshold, top_k, input_size; Haar: min_size, ...).
    """
    name = "yunet" if detector is None else str(detector)
    if name.lower() == "haar":
        if score_threshold is not None:
            raise ValueError("the Haar cascade has no face score, so a score threshold cannot apply; drop it, or "
                             "use YuNet (the default)")
        return HaarDetector(**options)
    if name.lower() == "yunet":
        name = str(BUNDLED_YUNET)
        if not BUNDLED_YUNET.is_file():
            raise ModelLoadError(f"the bundled YuNet face detector {BUNDLED_YUNET} is missing; reinstall fer-edge, "
                                 "or pass a YuNet .onnx from the OpenCV Zoo")
        # The bundled file is the 640x640 export; 320 is 4x cheaper and still finds faces from ~20 px in 640x480.
        options["input_size"] = options.get("input_size") or DEFAULT_INPUT_SIZE
    if not name.lower().endswith(".onnx"):
        raise ModelLoadError(f"{name}: unknown face detector; {HOW_TO_NAME}")
    if score_threshold is not None:
        options["score_threshold"] = score_threshold
    return YuNetDetector(name, threads=threads, **options)
