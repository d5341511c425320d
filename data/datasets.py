"""Readers for labelled face data: fer2013.csv, the FER-2013 npz files, and image folders.

One entry point, `load_faces(path, ...)`, used by fer-bench --data, fer-export --parity-data and
calibration. Images stay uint8 crops (gray or BGR); the model's contract turns them into tensors.
Every reader hands its label codes to `checked_label_codes` (the one range check), and `load_faces` maps
them to the model's labels through `fer_edge.data.labels.match_labels` (the one name matcher). Image files
are read by `fer_edge.pipeline.video_io.read_image`, fer-demo's reader, so a file gives the same pixels in both.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from fer_edge.pipeline.video_io import IMAGE_SUFFIXES, read_image
from fer_edge.runtime.errors import DataError
from fer_edge.data.labels import FER2013_LABELS, canonical_label, match_labels
from fer_edge.data.paths import fer2013_dir

UNKNOWN_CLASS_POLICIES = ("error", "drop")
# Which labels of an npz to score: its 'y', or the FER+ majority vote from 'ferplus_votes' (the shared FER-2013
# npz files carry both). FER+ columns: 8 emotions, then 'unknown' and 'NF' (not a face).
NPZ_LABEL_SOURCES = ("y", "ferplus")
FERPLUS_EMOTIONS = 8
FER2013_SPLITS = ("Training", "PublicTest", "PrivateTest")


@dataclass
class FaceSet:
    """uint8 face crops with optional integer targets in the *model's* label order."""
    images: Union[np.ndarray, List[np.ndarray]]
    targets: Optional[np.ndarray]
    class_names: List[str]
    source: str
    # Faces left out per dataset class the model lacks (unknown_classes="drop"), and faces renamed by a label map.
    dropped: Dict[str, int] = field(default_factory=dict)
    mapped: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return self.targets is not None

    def subset(self, index: Sequence[int]) -> "FaceSet":
        index = np.asarray(index, dtype=np.int64)
        images = self.images[index] if isinstance(self.images, np.ndarray) else [self.images[i] for i in index]
        targets = None if self.targets is None else self.targets[index]
        return FaceSet(images, targets, self.class_names, self.source, dict(self.dropped), dict(self.mapped))


def _count_text(counts: Dict[str, int]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in counts.items())


def dropped_summary(dropped: Dict[str, int]) -> str:
    """'dropped 18 faces of classes the model lacks: contempt (18)'."""
    return f"dropped {sum(dropped.values())} faces of classes the model lacks: {_count_text(dropped)}"


def checked_label_codes(path: Path, codes, class_names: Sequence[str], field_name: str) -> np.ndarray:
    """The one label check every reader runs: integer codes in 0..len(class_names)-1, as int64.

    Without it numpy reads a code of -1 as the last class and a code past the end crashes the scoring.
    """
    codes = np.asarray(codes)
    top = len(class_names) - 1
    valid = f"0..{top} ({len(class_names)} classes: {', '.join(map(str, class_names))})"
    if codes.dtype.kind not in "iu":
        finite = codes.dtype.kind == "f" and bool(np.isfinite(codes).all())
        if not finite or not np.array_equal(codes, np.round(codes)):
            raise DataError(f"{path}: {field_name} codes must be whole numbers {valid}, got {codes.dtype} values "
                            f"such as {codes.ravel()[:3].tolist()}; store the class index of each face")
    codes = codes.astype(np.int64)
    bad = (codes < 0) | (codes > top)
    if bad.any():
        values, counts = np.unique(codes[bad], return_counts=True)
        found = ", ".join(f"{v} ({c} row{'s' if c > 1 else ''})" for v, c in zip(values.tolist(), counts.tolist()))
        raise DataError(f"{path}: {field_name} codes must be {valid}; found {found}, {int(bad.sum())} of {codes.size} "
                        "rows out of range; fix those labels or remove those rows")
    return codes


def _to_model_order(path: Path, faces: FaceSet, labels: Optional[Sequence[str]], label_map, unknown: str) -> FaceSet:
    """Express source class codes as the model's class indices; drop or refuse classes the model lacks."""
    if label_map and labels is None:
        raise DataError(f"{path}: a label map needs the model's labels (labels=...) to map onto")
    if not faces.labelled:
        if label_map:
            raise DataError(f"{path}: --label-map applies to labelled data, and this data has no labels; drop the option")
        return FaceSet(faces.images, None, list(labels or []), faces.source)
    if labels is None:
        return faces
    names = faces.class_names
    count_of = dict(zip(names, np.bincount(faces.targets, minlength=len(names)).tolist()))
    mapping, unmatched = match_labels(labels, names, label_map)
    # Only classes with faces matter: an npz may list class_names that none of its rows use.
    unknown_counts = {n: count_of[n] for n in unmatched if count_of[n] > 0}
    if unknown_counts and unknown == "error":
        example = ",".join(f"{n}=<model label>" for n in unknown_counts)
        raise DataError(f"{path}: class names {list(unknown_counts)} do not match the model's labels {list(labels)} "
                        f"({_count_text(unknown_counts)} faces); score without them with --unknown-classes drop "
                        f"(Python: unknown_classes='drop'), map them with --label-map {example}, or export a model "
                        "with matching --labels")
    lut = np.array([mapping.get(n, -1) for n in names], dtype=np.int64)
    targets = lut[faces.targets]
    keep = np.flatnonzero(targets >= 0)
    if keep.size == 0:
        raise DataError(f"{path}: all {len(faces)} faces are of classes the model lacks ({_count_text(unknown_counts)}); "
                        f"the model's labels are {list(labels)}: map them with --label-map or use a matching dataset")
    renamed = {canonical_label(k) for k in (label_map or {})}
    mapped = {n: count_of[n] for n in mapping if canonical_label(n) in renamed and count_of[n] > 0}
    kept = faces.subset(keep) if keep.size < len(faces) else faces
    return FaceSet(kept.images, targets[keep], list(labels), faces.source, unknown_counts, mapped)


def _read_csv(path: Path, split: Optional[str]) -> FaceSet:
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
    codes = checked_label_codes(path, targets, FER2013_LABELS, "emotion")
    return FaceSet(_stack(images), codes, list(FER2013_LABELS), f"{path.name}" + (f" [{split}]" if split else ""))


def _read_npz(path: Path, split: Optional[str], label_source: str = "y") -> FaceSet:
    try:
        data = np.load(path, allow_pickle=False)
        x = data["x"]
        y = data["y"] if "y" in data.files else None  # no 'y': unlabelled faces (calibration, agreement only)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: expected an npz with arrays 'x' (uint8 [N,H,W]) and optionally 'y' ({exc})") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}: 'x' must be uint8 [N,H,W] or [N,H,W,C], got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: 'x' holds no faces; give an npz with at least one image")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise DataError(f"{path}: 'y' must hold one class index per face, shape [{len(x)}], got {y.shape}; "
                        "store one integer label per image of 'x'")
    names = [str(n) for n in data["class_names"]] if "class_names" in data.files else list(FER2013_LABELS)
    keep = _split_rows(path, data, split) if split else np.ones(len(x), bool)
    source = path.name + (f" [{split}]" if split else "")
    if label_source == "ferplus":
        return _ferplus_faces(path, data, x, keep, source)
    x, y = x[keep], (None if y is None else y[keep])
    if y is None:
        return FaceSet(x, None, [], source)
    return FaceSet(x, checked_label_codes(path, y, names, "'y'"), names, source)


def _split_rows(path: Path, data, split: str) -> np.ndarray:
    if "split" not in data.files:
        raise DataError(f"{path}: --split {split} needs a 'split' array in the npz")
    split_names = [str(n) for n in data["split_names"]] if "split_names" in data.files else list(FER2013_SPLITS)
    if split not in split_names:
        raise DataError(f"{path}: unknown split {split!r}; this file knows {split_names}")
    keep = data["split"] == split_names.index(split)
    if not keep.any():
        raise DataError(f"{path}: no rows in split {split!r}")
    return keep


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ majority label per row (0..7 in FER+ column order), or -1 where the most-voted column is 'unknown' or
    'NF' (not a face) or shared by two columns: those rows have no clear emotion to score against."""
    votes = np.asarray(votes, dtype=np.int64)
    top = votes.argmax(axis=1)
    ordered = np.sort(votes, axis=1)
    tied = ordered[:, -1] == ordered[:, -2]
    return np.where((top < FERPLUS_EMOTIONS) & ~tied, top, -1)


def _ferplus_faces(path: Path, data, x: np.ndarray, keep: np.ndarray, source: str) -> FaceSet:
    if "ferplus_votes" not in data.files or "ferplus_columns" not in data.files:
        raise DataError(f"{path}: --npz-labels ferplus needs 'ferplus_votes' and 'ferplus_columns' arrays (the shared "
                        "FER-2013 npz files have them); use --npz-labels y for this file")
    votes = data["ferplus_votes"]
    if votes.shape != (len(x), FERPLUS_EMOTIONS + 2):
        raise DataError(f"{path}: 'ferplus_votes' must be [{len(x)}, {FERPLUS_EMOTIONS + 2}] vote counts, got {votes.shape}")
    majority = ferplus_majority(votes)
    clear = keep & (majority >= 0)
    left_out = int(keep.sum() - clear.sum())
    names = [str(n) for n in data["ferplus_columns"][:FERPLUS_EMOTIONS]]
    note = f" (FER+ majority labels; {left_out} rows without a clear emotion majority left out)"
    return FaceSet(x[clear], majority[clear], names, source + note)


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(path: Path) -> FaceSet:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        names = [d.name for d in subdirs]
        images, targets = [], []
        for code, d in enumerate(subdirs):
            for f in _image_files(d):
                images.append(read_image(f))
                targets.append(code)
        if not images:
            raise DataError(f"{path}: class folders {names} contain no images ({', '.join(IMAGE_SUFFIXES)})")
        return FaceSet(_stack(images), checked_label_codes(path, targets, names, "class folder"), names, path.name)
    files = _image_files(path)
    if not files:
        others = sorted(p.name for p in path.iterdir())[:5]
        raise DataError(f"{path}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}"
                        + (f"; found e.g. {others}" if others else "; the folder is empty") + ")")
    return FaceSet(_stack([read_image(f) for f in files]), None, [], path.name)


def _stack(images: List[np.ndarray]):
    """One array when all crops share a shape (fast batched preprocessing), else a list."""
    first = images[0].shape
    return np.stack(images) if all(im.shape == first for im in images) else images


def load_faces(path: os.PathLike, labels: Optional[Sequence[str]] = None, split: Optional[str] = None,
               limit: Optional[int] = None, label_map: Optional[Dict[str, str]] = None,
               unknown_classes: str = "error", npz_labels: str = "y") -> FaceSet:
    """Read faces from a fer2013.csv, an npz (x[, y, split, class_names]) or an image folder.

    labels: the model's labels; source classes are matched to them by name (synonyms such as
    'happiness'/'happy' match), and targets come back in the model's order.
    split: for csv/npz, keep only that split (Training, PublicTest, PrivateTest).
    limit: keep the first N rows (before any faces are dropped).
    label_map: dataset class -> model label, e.g. {'contempt': 'neutral'}, applied before matching.
    unknown_classes: 'error' refuses faces of classes the model lacks; 'drop' leaves them out and counts
    them in the result's `dropped`.
    npz_labels: 'y', or 'ferplus' for the FER+ majority vote of each row ('ferplus_votes'); rows whose majority is
    'unknown', 'not a face' or tied are left out and counted in the result's source.
    Every label code is checked against the data's classes; a code out of range is a DataError.
    """
    if unknown_classes not in UNKNOWN_CLASS_POLICIES:
        raise DataError(f"unknown_classes={unknown_classes!r}: use one of {UNKNOWN_CLASS_POLICIES}")
    if npz_labels not in NPZ_LABEL_SOURCES:
        raise DataError(f"npz_labels={npz_labels!r}: use one of {NPZ_LABEL_SOURCES}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        faces = _read_source(path, split, npz_labels)
        if limit is not None and limit < len(faces):
            faces = faces.subset(np.arange(limit))
        return _to_model_order(path, faces, labels, label_map, unknown_classes)
    except ValueError as exc:  # label-matching errors from match_labels
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: {exc}") from None


def _read_source(path: Path, split: Optional[str], npz_labels: str = "y") -> FaceSet:
    """Faces with targets as the source's own class codes (class_names = the source's classes)."""
    if npz_labels != "y" and path.suffix.lower() != ".npz":
        raise DataError(f"{path}: --npz-labels {npz_labels} applies to .npz files only; drop it for this data")
    if path.is_dir():
        if split:
            raise DataError(f"{path}: --split applies to fer2013.csv and npz files, not to image folders")
        return _read_folder(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, split)
    if path.suffix.lower() == ".npz":
        return _read_npz(path, split, npz_labels)
    raise DataError(f"{path}: unknown data format; give a fer2013.csv, an .npz or a folder of images")


def default_fer2013_publictest() -> Optional[Path]:
    """FER-2013 PublicTest (fer2013_publictest.npz) from the shared folder, or None when it is absent."""
    npz = fer2013_dir() / "fer2013_publictest.npz"
    return npz if npz.is_file() else None
