"""The one preprocessing implementation: face crops (uint8) -> the model's input tensor. Export parity,
calibration, the runtime, the benchmark and training all call `prepare_batch`, so a face becomes the same numbers.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import InputError

FaceInput = Union[np.ndarray, Sequence[np.ndarray]]

_CV2_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}

# Channel counts a crop's last axis may have: gray, BGR, BGRA.
CROP_CHANNELS = (1, 3, 4)
# A 3-D array is read as a batch of gray crops only when each would be at least this many pixels on a side:
# the smallest model input a contract allows is 8 px, and (48, 48, 2) as 48 crops 2 px wide is never meant.
MIN_BATCH_CROP_SIDE = 8
HOW_TO_PASS_FACES = ("Pass one crop as (H, W), (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA; several as (N, H, W) gray "
                     f"with H, W >= {MIN_BATCH_CROP_SIDE}, (N, H, W, C) with C in 1/3/4, or a list of single crops")


def split_faces(faces: FaceInput) -> List[np.ndarray]:
    """One crop or a batch -> a list of 2-D (gray) or 3-D (H, W, C) uint8 crops; InputError otherwise.

    (H, W) is one gray crop, (N, H, W, C) a batch, a list holds single crops of any sizes. A 3-D array is one
    crop when its last axis is 1, 3 or 4, else a batch of gray crops (N, H, W) when H, W >= MIN_BATCH_CROP_SIDE;
    (48, 48, 2) fits neither reading and is refused rather than guessed.
    """
    if isinstance(faces, (list, tuple)):
        crops = _crops_from_list(faces)
    elif isinstance(faces, np.ndarray):
        crops = _crops_from_array(faces)
    else:
        raise InputError(f"faces is a {type(faces).__name__}; expected a numpy uint8 array or a list of them. "
                         f"{HOW_TO_PASS_FACES}.")
    for i, crop in enumerate(crops):
        _check_crop(crop, i)
    return crops


def _crops_from_list(faces: Sequence) -> List[np.ndarray]:
    if len(faces) == 0:
        raise InputError("faces is an empty list: pass at least one face crop")
    for i, face in enumerate(faces):
        if not isinstance(face, np.ndarray):
            raise InputError(f"face {i} is a {type(face).__name__}, expected a numpy uint8 array")
        if face.ndim not in (2, 3):
            raise InputError(f"face {i} has ndim {face.ndim}; each list item is one crop, (H, W) or (H, W, C). "
                             "Pass a batch as one array, or list its crops one by one.")
    return list(faces)


def _crops_from_array(faces: np.ndarray) -> List[np.ndarray]:
    if faces.size == 0:
        raise InputError(f"faces is empty (shape {faces.shape}): pass at least one non-empty face crop")
    if faces.ndim == 2 or (faces.ndim == 3 and faces.shape[-1] in CROP_CHANNELS):
        return [faces]
    if faces.ndim == 3 and min(faces.shape[1:]) >= MIN_BATCH_CROP_SIDE:
        return list(faces)
    if faces.ndim == 3:
        n, h, w = faces.shape
        raise InputError(f"faces has shape {faces.shape}, which fits neither reading of a 3-D array: as one crop "
                         f"(H, W, C) its last axis would be {w} channels, but only 1, 3 or 4 are allowed; as a batch "
                         f"of {n} gray crops (N, H, W) each crop would be {h}x{w} pixels, but both sides must be at "
                         f"least {MIN_BATCH_CROP_SIDE}. {HOW_TO_PASS_FACES}.")
    if faces.ndim == 4:
        return list(faces)
    raise InputError(f"faces has ndim {faces.ndim}; expected (H, W), (H, W, C), (N, H, W) or (N, H, W, C). "
                     f"{HOW_TO_PASS_FACES}.")


def _check_crop(crop: np.ndarray, index: int) -> None:
    if crop.dtype != np.uint8:
        if np.issubdtype(crop.dtype, np.floating) and np.isnan(crop).any():
            raise InputError(f"face {index} contains NaN values; pass uint8 pixel data (0..255)")
        raise InputError(f"face {index} has dtype {crop.dtype}; pass uint8 pixels (0..255), "
                         "e.g. frame[y0:y1, x0:x1] from cv2, or np.clip(x, 0, 255).astype(np.uint8)")
    if crop.ndim == 3 and crop.shape[2] not in CROP_CHANNELS:
        raise InputError(f"face {index} has shape {crop.shape}: {crop.shape[2]} channels, but a crop (H, W, C) needs "
                         "1 (gray), 3 (BGR) or 4 (BGRA). A list item is always one crop; to pass gray crops as "
                         f"one array use (N, H, W) with H, W >= {MIN_BATCH_CROP_SIDE}, or list them as (H, W) arrays.")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise InputError(f"face {index} is a zero-size crop (shape {crop.shape}); check the face box")


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


def normalization(contract: ModelContract) -> Tuple[np.ndarray, np.ndarray]:
    """float32 (scale, offset) per channel with x * scale + offset = (x/255 - mean) / std: /255, mean and std folded
    into one pass. The uint8-input export folds the same two constants into its graph."""
    mean = np.asarray(contract.mean, dtype=np.float32)
    std = np.asarray(contract.std, dtype=np.float32)
    return 1.0 / (255.0 * std), -mean / std


def normalize_batch(resized: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 (N, S, S, C) -> float32 (N, C, S, S): x/255, then (x - mean) / std per channel."""
    scale, offset = normalization(contract)
    x = resized.transpose(0, 3, 1, 2).astype(np.float32)
    x *= scale.reshape(1, -1, 1, 1)
    x += offset.reshape(1, -1, 1, 1)
    return x


def prepare_batch(faces: FaceInput, contract: ModelContract) -> np.ndarray:
    """Face crop(s) -> the model input exactly as the contract says: float32 NCHW, or (dtype uint8) the resized
    uint8 NHWC pixels of a model that normalises inside its graph."""
    resized = resize_batch(faces, contract)
    return resized if contract.dtype == "uint8" else normalize_batch(resized, contract)


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


# A face box may overhang the frame (the overhang is edge-replicated), but a squared, margined box whose side
# exceeds this many times the frame's larger side is a detector glitch: (-1e6, -1e6, 2e6, 2e6) would make
# OpenCV pad a square 2.4 million pixels on a side, 17 TB for BGR. With the cap a crop holds at most 16x the
# frame's larger side squared; a face filling the frame at the largest margin a contract allows (1.0) needs 3x.
MAX_BOX_TO_FRAME = 4.0


def face_box_problem(box, frame_shape: Tuple[int, ...], contract: ModelContract) -> Optional[str]:
    """Why this (x, y, w, h) box cannot be cropped from a frame of frame_shape, or None (for callers that skip)."""
    values = np.asarray(box, dtype=np.float64) if _is_numeric_sequence(box) else None
    if values is None or values.shape != (4,):
        return f"face box {box!r} is not four numbers (x, y, w, h)"
    x, y, w, h = (float(v) for v in values)
    if not np.isfinite(values).all():
        return f"face box {(x, y, w, h)} has NaN or infinite coordinates"
    if w <= 0 or h <= 0:
        return f"face box {(x, y, w, h)} has a non-positive width or height"
    frame_h, frame_w = frame_shape[:2]
    side = max(w, h) * (1.0 + 2.0 * contract.crop_margin)        # the crop's larger side, squared or not
    if side > MAX_BOX_TO_FRAME * max(frame_h, frame_w):
        return (f"face box {(x, y, w, h)} becomes a {side:.0f}-pixel crop, more than {MAX_BOX_TO_FRAME:g}x the "
                f"{frame_w}x{frame_h} frame's larger side")
    if not (0 <= x + w / 2 < frame_w and 0 <= y + h / 2 < frame_h):   # less than half the face in view
        # (x0, y0, x1, y1) corners read as (x, y, w, h) reach past the right or bottom edge: the common mix-up.
        corners = x < w <= frame_w and y < h <= frame_h
        return (f"face box {(x, y, w, h)} lies outside the {frame_w}x{frame_h} frame (its centre is not in it)" +
                ("; it looks like (x0, y0, x1, y1) corners: pass (x0, y0, x1 - x0, y1 - y0)" if corners else ""))
    return None


def _is_numeric_sequence(box) -> bool:
    try:
        return np.asarray(box).dtype.kind in "iuf"
    except (TypeError, ValueError):     # ragged or non-numeric
        return False


def crop_face(frame: np.ndarray, box: Tuple[float, float, float, float], contract: ModelContract) -> np.ndarray:
    """Cut a face from a frame by the contract's crop policy; parts outside the frame are edge-replicated.
    box is (x, y, w, h): top-left corner, width and height in frame pixels (not corners). A bad frame or box (see
    face_box_problem) raises InputError before anything is allocated."""
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise InputError("frame must be a non-empty uint8 array of shape (H, W) or (H, W, C); pass the image the "
                         "face box was detected in")
    problem = face_box_problem(box, frame.shape, contract)
    if problem:
        raise InputError(f"{problem}; cannot crop a face from it. Pass boxes as (x, y, w, h) in this frame's "
                         "pixels, and drop boxes a detector returns with NaN, zero size or far outside the frame.")
    x0, y0, x1, y1 = square_box(box, contract.crop_margin, contract.crop_square)
    h, w = frame.shape[:2]
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    crop = frame[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, borderType=cv2.BORDER_REPLICATE)
    return crop
