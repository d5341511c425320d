"""Calibration and validation face sets: read a source, check it fits the model, pick a stratified sample.

Sources: fer2013.csv, the FER-2013 npz files and image folders (via benchmarks.datasets.load_faces)
and video files. From a video every Nth frame is read; with the model contract the faces in it are
found (the bundled YuNet by default, or OpenCV's Haar cascade) and cut by the contract's crop policy
(calibration.video_faces); without a contract, or with detector="none", each whole frame is one crop.
Everything stays uint8; the contract's `prepare_batch` makes the tensors.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from fer_edge.data.datasets import FaceSet, load_faces
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import DataError
from fer_edge.calibration.video_faces import every_nth, open_video, sampled_frames, video_face_crops

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_FRAME_STEP = 15

WHAT_CALIBRATION_IS = (
    "Calibration images are a few hundred representative face crops of the same kind the model will see in "
    "production (same camera, lighting and cropping; ~500 is plenty). Pass them with --calib PATH: a folder of "
    "images (optionally in class subfolders), a video file, a fer2013.csv or an .npz with arrays x (uint8 faces) "
    "and y (labels).")


def read_video_frames(path: Path, step: int = DEFAULT_FRAME_STEP, why: str = "") -> FaceSet:
    """Every `step`-th frame of a video, whole frame as the crop (no face detection)."""
    capture, _ = open_video(path, step)
    try:
        frames = list(sampled_frames(capture, step))
    finally:
        capture.release()
    if not frames:
        raise DataError(f"{path}: no frames could be decoded from this video")
    return FaceSet(np.stack(frames), None, [], f"{path.name} ({every_nth(step)}, whole frames{why})")


def load_source(path: str, labels: Optional[Sequence[str]] = None, split: Optional[str] = None,
                frame_step: int = DEFAULT_FRAME_STEP, contract: Optional[ModelContract] = None,
                detector: Optional[str] = None) -> FaceSet:
    """Read a calibration or validation source of any supported kind.

    Videos: with `contract`, the faces found by `detector` (None: the bundled YuNet; 'haar': OpenCV's Haar cascade;
    or a YuNet .onnx path) are cut by the contract's crop policy; detector="none" (or no contract) uses whole frames.
    """
    source = Path(path)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        if split:
            raise DataError(f"{source}: --calib-split applies to fer2013.csv and npz files, not to videos")
        if isinstance(detector, str) and detector.strip().lower() == "none":
            return read_video_frames(source, frame_step, ", face detection off (detector none)")
        if contract is None:
            if detector is not None:
                raise DataError(f"{source}: face detection needs the model contract (its crop margin) to cut "
                                "faces; pass contract=..., or detector='none' for whole frames")
            return read_video_frames(source, frame_step)
        return video_face_crops(source, contract, frame_step, detector)
    return load_faces(source, labels=labels, split=split)


def _crop_channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])


def check_fits_model(faces: FaceSet, contract: ModelContract, role: str = "calibration") -> None:
    """Refuse images whose channels cannot represent the model's input honestly."""
    images = faces.images
    shapes = {_crop_channels(images[0])} if isinstance(images, np.ndarray) else {_crop_channels(im) for im in images}
    bad = sorted(c for c in shapes if c not in (1, 3, 4))
    if bad:
        raise DataError(f"{faces.source}: {role} images have {bad[0]} channels; expected gray (1), BGR (3) or "
                        "BGRA (4) images. Re-save them as 8-bit gray or colour PNG/JPEG.")
    if contract.channels == 3 and shapes == {1}:
        # Gray copied into 3 channels gives ranges a colour model never sees in production.
        raise DataError(f"{faces.source}: {role} images are grayscale but the model takes 3-channel "
                        f"{contract.color_order} input; pass colour face crops of the kind the model will see.")


def content_hash(faces: FaceSet) -> str:
    """sha256 over every crop's shape and pixels and the targets: changes when any image or label changes."""
    digest = hashlib.sha256()
    images = faces.images
    if isinstance(images, np.ndarray):
        digest.update(repr(images.shape).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
    else:
        for im in images:
            digest.update(repr(im.shape).encode())
            digest.update(np.ascontiguousarray(im).tobytes())
    if faces.targets is not None:
        digest.update(np.asarray(faces.targets, dtype=np.int64).tobytes())
    return digest.hexdigest()


def stratified_indices(targets: Optional[np.ndarray], n_total: int, count: int, seed: int) -> np.ndarray:
    """`count` indices drawn without replacement; per class in proportion to its frequency when labelled."""
    rng = np.random.default_rng(seed)
    if targets is None:
        return np.sort(rng.choice(n_total, count, replace=False))
    classes, sizes = np.unique(targets, return_counts=True)
    quota = sizes / sizes.sum() * count
    take = np.floor(quota).astype(int)
    # Hand the rounding remainder to the classes with the largest fractional parts.
    for i in np.argsort(-(quota - take))[: count - take.sum()]:
        take[i] += 1
    chosen: List[np.ndarray] = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(targets == cls)
        chosen.append(rng.choice(members, min(k, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def split_calibration(faces: FaceSet, count: int, seed: int, holdout: bool,
                      max_val: int = 3000) -> Tuple[FaceSet, Optional[FaceSet]]:
    """Calibration sample plus, when `holdout`, a validation slice made only of the *other* images."""
    if count < 1:
        raise DataError(f"--calib-count {count}: must be at least 1")
    n = len(faces)
    if n < count:
        raise DataError(f"{faces.source}: has {n} images but --calib-count asks for {count}; "
                        f"pass --calib-count {n} (or fewer) or a larger calibration set")
    calib_idx = stratified_indices(faces.targets, n, count, seed)
    calib = faces.subset(calib_idx)
    if not holdout:
        return calib, None
    rest = np.setdiff1d(np.arange(n), calib_idx)
    if len(rest) < 50:
        raise DataError(f"{faces.source}: only {len(rest)} images are left after taking {count} for calibration, "
                        "too few to validate on; pass --val PATH (a labelled set) or lower --calib-count")
    if len(rest) > max_val:
        rest = np.sort(np.random.default_rng(seed + 1).choice(rest, max_val, replace=False))
    return calib, faces.subset(rest)
