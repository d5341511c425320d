"""Readers for labelled face data: fer2013.csv, the FER-2013 npz files, and image folders.

One entry point, `load_faces(path, ...)`, used by fer-bench --data, fer-export --parity-data and
calibration. Images stay uint8 crops (gray or BGR); the model's contract turns them into tensors.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import cv2
import numpy as np

from fer_edge.runtime.errors import DataError
from fer_edge.runtime.labels import FER2013_LABELS, label_index_map

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
FER2013_SPLITS = ("Training", "PublicTest", "PrivateTest")


@dataclass
class FaceSet:
    """uint8 face crops with optional integer targets in the *model's* label order."""
    images: Union[np.ndarray, List[np.ndarray]]
    targets: Optional[np.ndarray]
    class_names: List[str]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    def subset(self, index: Sequence[int]) -> "FaceSet":
        index = np.asarray(index, dtype=np.int64)
        images = self.images[index] if isinstance(self.images, np.ndarray) else [self.images[i] for i in index]
        targets = None if self.targets is None else self.targets[index]
        return FaceSet(images, targets, self.class_names, self.source)


def _remap(targets: np.ndarray, source_names: Sequence[str], model_labels: Optional[Sequence[str]]):
    """Express source class codes as the model's class indices."""
    if model_labels is None:
        return targets.astype(np.int64), list(source_names)
    present = sorted(set(int(t) for t in np.unique(targets)))
    mapping = label_index_map(model_labels, [source_names[i] for i in present])
    lut = np.full(len(source_names), -1, dtype=np.int64)
    for i in present:
        lut[i] = mapping[source_names[i]]
    return lut[targets.astype(np.int64)], list(model_labels)


def _read_csv(path: Path, split: Optional[str], labels) -> FaceSet:
    images, targets = [], []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "pixels" not in fields or "emotion" not in fields:
                raise DataError(f"{path}: expected the fer2013.csv columns 'emotion,pixels[,Usage]', found {fields}")
            if split and "Usage" not in fields:
                raise DataError(f"{path}: --split {split} needs a 'Usage' column, which this csv lacks")
            for lineno, row in enumerate(reader, start=2):
                if split and row.get("Usage", "").strip() != split:
                    continue
                pixels = np.array(row["pixels"].split(), dtype=np.int32)
                side = int(round(np.sqrt(pixels.size)))
                if pixels.size == 0 or side * side != pixels.size or pixels.min() < 0 or pixels.max() > 255:
                    raise DataError(f"{path}:{lineno}: 'pixels' is not a square image of 0..255 values")
                images.append(pixels.astype(np.uint8).reshape(side, side))
                targets.append(int(row["emotion"]))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read as fer2013.csv ({exc})") from None
    if not images:
        raise DataError(f"{path}: no rows" + (f" with Usage == {split!r} (splits are {FER2013_SPLITS})" if split else ""))
    t = np.asarray(targets)
    if t.min() < 0 or t.max() >= len(FER2013_LABELS):
        raise DataError(f"{path}: emotion codes must be 0..6 (FER-2013 order {FER2013_LABELS})")
    t, names = _remap(t, FER2013_LABELS, labels)
    return FaceSet(_stack(images), t, names, f"{path.name}" + (f" [{split}]" if split else ""))


def _read_npz(path: Path, split: Optional[str], labels) -> FaceSet:
    try:
        data = np.load(path, allow_pickle=False)
        x = data["x"]
        y = data["y"] if "y" in data.files else None  # no 'y': unlabelled faces (calibration, agreement only)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: expected an npz with arrays 'x' (uint8 [N,H,W]) and optionally 'y' ({exc})") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}: 'x' must be uint8 [N,H,W] or [N,H,W,C], got {x.dtype} {x.shape}")
    names = [str(n) for n in data["class_names"]] if "class_names" in data.files else list(FER2013_LABELS)
    if split:
        if "split" not in data.files:
            raise DataError(f"{path}: --split {split} needs a 'split' array in the npz")
        split_names = [str(n) for n in data["split_names"]] if "split_names" in data.files else list(FER2013_SPLITS)
        if split not in split_names:
            raise DataError(f"{path}: unknown split {split!r}; this file knows {split_names}")
        keep = data["split"] == split_names.index(split)
        x, y = x[keep], (None if y is None else y[keep])
        if len(x) == 0:
            raise DataError(f"{path}: no rows in split {split!r}")
    if y is None:
        return FaceSet(x, None, [], path.name + (f" [{split}]" if split else ""))
    t, names = _remap(np.asarray(y), names, labels)
    return FaceSet(x, t, names, path.name + (f" [{split}]" if split else ""))


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt, or not an image despite its name); remove it")
    if image.dtype == np.uint16:  # 16-bit PNGs: keep the top 8 bits
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise DataError(f"{path}: pixel type {image.dtype} is not supported; save as 8-bit")
    return image


def _read_folder(path: Path, labels) -> FaceSet:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        names = [d.name for d in subdirs]
        mapping = label_index_map(labels, names) if labels is not None else {n: i for i, n in enumerate(names)}
        images, targets = [], []
        for d in subdirs:
            for f in _image_files(d):
                images.append(read_image(f))
                targets.append(mapping[d.name])
        if not images:
            raise DataError(f"{path}: class folders {names} contain no images ({', '.join(IMAGE_SUFFIXES)})")
        class_names = list(labels) if labels is not None else names
        return FaceSet(_stack(images), np.asarray(targets, dtype=np.int64), class_names, path.name)
    files = _image_files(path)
    if not files:
        others = sorted(p.name for p in path.iterdir())[:5]
        raise DataError(f"{path}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}"
                        + (f"; found e.g. {others}" if others else "; the folder is empty") + ")")
    return FaceSet(_stack([read_image(f) for f in files]), None, list(labels or []), path.name)


def _stack(images: List[np.ndarray]):
    """One array when all crops share a shape (fast batched preprocessing), else a list."""
    first = images[0].shape
    return np.stack(images) if all(im.shape == first for im in images) else images


def load_faces(path: os.PathLike, labels: Optional[Sequence[str]] = None, split: Optional[str] = None,
               limit: Optional[int] = None) -> FaceSet:
    """Read faces from a fer2013.csv, an npz (x[, y, split, class_names]) or an image folder.

    labels: the model's labels; source classes are matched to them by name (synonyms such as
    'happiness'/'happy' match), and targets come back in the model's order.
    split: for csv/npz, keep only that split (Training, PublicTest, PrivateTest).
    limit: keep the first N rows.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            if split:
                raise DataError(f"{path}: --split applies to fer2013.csv and npz files, not to image folders")
            faces = _read_folder(path, labels)
        elif path.suffix.lower() == ".csv":
            faces = _read_csv(path, split, labels)
        elif path.suffix.lower() == ".npz":
            faces = _read_npz(path, split, labels)
        else:
            raise DataError(f"{path}: unknown data format; give a fer2013.csv, an .npz or a folder of images")
    except ValueError as exc:  # label-matching errors from label_index_map
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: {exc}") from None
    if limit is not None and limit < len(faces):
        faces = faces.subset(np.arange(limit))
    return faces


def default_fer2013_publictest() -> Optional[Path]:
    """../shared/data/fer2013/fer2013_publictest.npz next to the project, when present."""
    candidates = [Path(os.environ["FER_EDGE_SHARED"]) if os.environ.get("FER_EDGE_SHARED") else None,
                  Path(__file__).resolve().parents[1].parent / "shared", Path.cwd().parent / "shared"]
    for root in filter(None, candidates):
        npz = root / "data" / "fer2013" / "fer2013_publictest.npz"
        if npz.exists():
            return npz
    return None
