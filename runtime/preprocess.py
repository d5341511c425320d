"""The one preprocessing implementation: face crops (uint8) -> the model's float32 NCHW tensor.

Export parity, calibration, the runtime, the benchmark and training evaluation all call
`prepare_batch`, so a face is turned into numbers the same way everywhere. Only numpy and OpenCV.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np

from .contract import ModelContract

FaceInput = Union[np.ndarray, Sequence[np.ndarray]]

_CV2_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
               "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def split_faces(faces: FaceInput) -> List[np.ndarray]:
    """Accept one crop or a batch and return a list of 2-D (gray) or 3-D (H, W, C) uint8 crops.

    Shapes: (H, W) one gray crop; (H, W, C) with C in 1/3/4 one crop; (N, H, W) a batch of gray crops;
    (N, H, W, C) a batch; or a list/tuple of crops of any sizes.
    """
    if isinstance(faces, (list, tuple)):
        if len(faces) == 0:
            raise ValueError("faces is an empty list: pass at least one face crop")
        crops = []
        for i, face in enumerate(faces):
            if not isinstance(face, np.ndarray):
                raise ValueError(f"face {i} is a {type(face).__name__}, expected a numpy uint8 array")
            if face.ndim not in (2, 3):
                raise ValueError(f"face {i} has ndim {face.ndim}; each crop must be (H, W) or (H, W, C)")
            crops.append(face)
    elif isinstance(faces, np.ndarray):
        if faces.size == 0:
            raise ValueError(f"faces is empty (shape {faces.shape}): pass at least one non-empty face crop")
        if faces.ndim == 2:
            crops = [faces]
        elif faces.ndim == 3 and faces.shape[-1] in (1, 3, 4):
            crops = [faces]
        elif faces.ndim == 3:
            crops = list(faces)
        elif faces.ndim == 4:
            crops = list(faces)
        else:
            raise ValueError(f"faces has ndim {faces.ndim}; expected (H, W), (H, W, C), (N, H, W) or (N, H, W, C)")
    else:
        raise ValueError(f"faces is a {type(faces).__name__}; expected a numpy uint8 array or a list of them")
    for i, crop in enumerate(crops):
        _check_crop(crop, i)
    return crops


def _check_crop(crop: np.ndarray, index: int) -> None:
    if crop.dtype != np.uint8:
        if np.issubdtype(crop.dtype, np.floating) and np.isnan(crop).any():
            raise ValueError(f"face {index} contains NaN values; pass uint8 pixel data (0..255)")
        raise ValueError(f"face {index} has dtype {crop.dtype}; pass uint8 pixels (0..255), "
                         "e.g. frame[y0:y1, x0:x1] from cv2, or np.clip(x, 0, 255).astype(np.uint8)")
    if crop.ndim == 3 and crop.shape[2] not in (1, 3, 4):
        raise ValueError(f"face {index} has {crop.shape[2]} channels; expected 1 (gray), 3 (BGR) or 4 (BGRA)")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"face {index} is a zero-size crop (shape {crop.shape}); check the face box")


def _to_model_channels(crop: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Convert a gray/BGR/BGRA crop to the contract's channels and colour order (H, W[, C])."""
    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[:, :, 0]
    if contract.channels == 1:
        if crop.ndim == 2:
            return crop
        code = cv2.COLOR_BGRA2GRAY if crop.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(crop, code)
    # 3-channel model: inputs are BGR by convention (what OpenCV gives).
    if crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    elif crop.shape[2] == 4:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2BGR)
    if contract.color_order == "RGB":
        crop = crop[:, :, ::-1]
    return crop


def resize_crop(crop: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """Resize to size x size. 'area' shrinks with INTER_AREA and enlarges with INTER_LINEAR, as OpenCV advises."""
    h, w = crop.shape[:2]
    if h == size and w == size:
        return crop
    flag = _CV2_INTERP[interpolation]
    if interpolation == "area" and (h < size or w < size):
        flag = cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=flag)


def resize_batch(faces: FaceInput, contract: ModelContract) -> np.ndarray:
    """uint8 (N, S, S, C) crops at the model's size and channel order, before normalisation."""
    crops = split_faces(faces)
    size = contract.input_size
    out = np.empty((len(crops), size, size, contract.channels), dtype=np.uint8)
    for i, crop in enumerate(crops):
        resized = resize_crop(_to_model_channels(crop, contract), size, contract.interpolation)
        out[i] = resized.reshape(size, size, contract.channels)
    return out


def normalize_batch(resized: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 (N, S, S, C) -> float32 (N, C, S, S): x/255, then (x - mean) / std per channel."""
    # Fold /255, mean and std into one scale and offset per channel: one pass over the data.
    mean = np.asarray(contract.mean, dtype=np.float32)
    std = np.asarray(contract.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).reshape(1, -1, 1, 1)
    offset = (-mean / std).reshape(1, -1, 1, 1)
    x = resized.transpose(0, 3, 1, 2).astype(np.float32)
    x *= scale
    x += offset
    return x


def prepare_batch(faces: FaceInput, contract: ModelContract) -> np.ndarray:
    """Face crop(s) -> float32 NCHW tensor exactly as the contract says."""
    return normalize_batch(resize_batch(faces, contract), contract)


def square_box(box: Tuple[float, float, float, float], margin: float, square: bool = True) -> Tuple[int, int, int, int]:
    """(x, y, w, h) face box -> integer (x0, y0, x1, y1), squared around its centre and grown by margin per side."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2.0, y + h / 2.0
    if square:
        w = h = max(w, h)
    w *= 1.0 + 2.0 * margin
    h *= 1.0 + 2.0 * margin
    x0, y0 = int(round(cx - w / 2.0)), int(round(cy - h / 2.0))
    return x0, y0, x0 + max(1, int(round(w))), y0 + max(1, int(round(h)))


def crop_face(frame: np.ndarray, box: Tuple[float, float, float, float], contract: ModelContract) -> np.ndarray:
    """Cut a face from a frame by the contract's crop policy; parts outside the frame are edge-replicated."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise ValueError("frame must be a non-empty uint8 array of shape (H, W) or (H, W, C)")
    x0, y0, x1, y1 = square_box(box, contract.crop_margin, contract.crop_square)
    h, w = frame.shape[:2]
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ValueError(f"face box {tuple(box)} lies outside the {w}x{h} frame")
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    crop = frame[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, borderType=cv2.BORDER_REPLICATE)
    return crop
