"""Load FER-2013 (Training + PublicTest npz files) and turn it into model tensors once.

Every image goes through `fer_edge.runtime.preprocess.prepare_batch`, the project's single
preprocessing implementation, so training, evaluation and deployment see identical inputs.
Augmentation then works on the resulting torch tensors (see augment.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from fer_edge.data.datasets import ferplus_majority
from fer_edge.data.labels import FER2013_LABELS, FERPLUS_LABELS
from fer_edge.data.paths import fer2013_dir
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.preprocess import prepare_batch

SPLIT_CODES = {"train": 0, "publictest": 1}
SPLIT_FILES = {
    "train": ("fer2013_train_1of2.npz", "fer2013_train_2of2.npz"),
    "publictest": ("fer2013_publictest.npz",),
}
# $FER_EDGE_SHARED/data/fer2013, else ../shared/data/fer2013 next to the repository (fer_edge.data.paths).
DEFAULT_DATA_DIR = fer2013_dir()


@dataclass
class Split:
    """uint8 faces and their labels plus provenance (`row` in the original csv, `split` code)."""
    x: np.ndarray       # uint8 [N, 48, 48]
    y: np.ndarray       # int64 [N]
    row: np.ndarray     # int64 [N]
    split: np.ndarray   # uint8 [N]
    class_names: List[str]
    votes: Optional[np.ndarray] = None  # uint8 [N, 10] FER+ vote counts where the npz files carry them

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def class_counts(self, num_classes: Optional[int] = None) -> np.ndarray:
        n = num_classes or len(self.class_names)
        return np.bincount(self.y, minlength=n)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(self.x[index], self.y[index], self.row[index], self.split[index], list(self.class_names),
                     None if self.votes is None else self.votes[index])


def label_source(labels: Sequence[str]) -> str:
    """Which labels of the npz files a model with these classes trains on: 'fer2013' (the csv's 7 codes) or
    'ferplus' (the FER+ majority vote over 8 emotions)."""
    if list(labels) == list(FER2013_LABELS):
        return "fer2013"
    if list(labels) == list(FERPLUS_LABELS):
        return "ferplus"
    raise ValueError(f"labels {list(labels)} are neither FER-2013's {list(FER2013_LABELS)} nor FER+'s "
                     f"{list(FERPLUS_LABELS)}; fer-train trains on one of those two label sets")


def load_split(data_dir, name: str, labels: Sequence[str] = FER2013_LABELS) -> Split:
    """Read one split ('train' or 'publictest'); checks that every row carries that split's code.

    labels: FER2013_LABELS (the csv's labels) or FERPLUS_LABELS (FER+ majority votes; rows whose majority is
    unknown, not a face or tied are left out, as fer-bench --npz-labels ferplus does)."""
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown split {name!r}; expected one of {sorted(SPLIT_FILES)}")
    source = label_source(labels)
    data_dir = Path(data_dir)
    parts = []
    for fname in SPLIT_FILES[name]:
        path = data_dir / fname
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; pass --data-dir pointing at the FER-2013 npz folder "
                                    f"(default {DEFAULT_DATA_DIR})")
        keys = ("x", "y", "row", "split", "class_names") + (("ferplus_votes",) if source == "ferplus" else ())
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path}: no {missing} array" + (" (FER+ labels need the FER+ vote counts that the "
                                 "shared FER-2013 npz files carry; train FER-2013 labels with training/config_cpu.json)"
                                 if "ferplus_votes" in missing else "") + "; is this a shared FER-2013 npz file?")
            parts.append({k: z[k] for k in keys + (("ferplus_votes",) if "ferplus_votes" in z.files else ())})
    class_names = [str(c) for c in parts[0]["class_names"]]
    if class_names != list(FER2013_LABELS):
        raise ValueError(f"{data_dir}: class_names {class_names} differ from the expected {list(FER2013_LABELS)}")
    out = Split(
        x=np.concatenate([p["x"] for p in parts]),
        y=np.concatenate([p["y"] for p in parts]).astype(np.int64),
        row=np.concatenate([p["row"] for p in parts]).astype(np.int64),
        split=np.concatenate([p["split"] for p in parts]).astype(np.uint8),
        class_names=class_names,
        votes=np.concatenate([p["ferplus_votes"] for p in parts]) if all("ferplus_votes" in p for p in parts) else None,
    )
    if not np.all(out.split == SPLIT_CODES[name]):
        bad = np.unique(out.split[out.split != SPLIT_CODES[name]]).tolist()
        raise ValueError(f"{name} files hold rows with split codes {bad}; expected only {SPLIT_CODES[name]}")
    if source == "ferplus":
        majority = ferplus_majority(out.votes)
        clear = majority >= 0
        out = out.subset(np.flatnonzero(clear))
        out.y, out.class_names = majority[clear].astype(np.int64), list(FERPLUS_LABELS)
    return out


# FER+ vote columns (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF) under
# FER-2013's names; contempt, unknown and NF have no FER-2013 class and are left out.
FERPLUS_TO_FER2013 = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
                      "anger": "angry", "disgust": "disgust", "fear": "fear"}


def vote_targets(split: Split, weight: float) -> np.ndarray:
    """float32 [N, C] training targets: (1 - weight) x one-hot label + weight x the row's FER+ vote distribution
    over the split's classes (FER+ vote columns renamed to FER-2013's for a FER-2013 split). Rows with no vote
    for any of those classes keep their one-hot label."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"vote_targets weight must be within 0..1, got {weight}")
    if split.votes is None:
        raise ValueError("vote_targets needs FER+ vote counts ('ferplus_votes' in the npz files, as the shared "
                         "FER-2013 files have); set vote_targets to 0 to train on the labels alone")
    classes = list(split.class_names)
    columns = list(FERPLUS_LABELS) if classes == list(FERPLUS_LABELS) else [
        next((c for c, name in FERPLUS_TO_FER2013.items() if name == label), None) for label in classes]
    if None in columns:
        raise ValueError(f"classes {classes} have no FER+ vote column for {classes[columns.index(None)]!r}")
    counts = split.votes[:, [list(FERPLUS_LABELS).index(c) for c in columns]].astype(np.float32)
    onehot = np.eye(len(classes), dtype=np.float32)[split.y]
    total = counts.sum(axis=1, keepdims=True)
    dist = np.where(total > 0, counts / np.maximum(total, 1.0), onehot)
    return ((1.0 - weight) * onehot + weight * dist).astype(np.float32)


def make_contract(arch: str, labels: Sequence[str], img_size: int, mean=(0.5,), std=(0.5,),
                  interpolation: str = "area") -> ModelContract:
    """The preprocessing contract of the trained model (1-channel grayscale)."""
    return ModelContract(arch=arch, labels=list(labels), input_size=int(img_size), channels=1, color_order="GRAY",
                         mean=[float(m) for m in mean], std=[float(s) for s in std],
                         interpolation=interpolation).validate()


def prepare_tensor(x_uint8: np.ndarray, contract: ModelContract, chunk: int = 4096):
    """uint8 [N, H, W] faces -> float32 torch tensor [N, 1, S, S] through prepare_batch."""
    import torch
    n = x_uint8.shape[0]
    size = contract.input_size
    out = torch.empty((n, contract.channels, size, size), dtype=torch.float32)
    for start in range(0, n, chunk):
        out[start:start + chunk] = torch.from_numpy(prepare_batch(x_uint8[start:start + chunk], contract))
    return out


def class_weights(counts: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Loss weights proportional to (1/count)**power, normalised to mean 1 over classes (0 = unweighted)."""
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    w = counts ** (-float(power))
    return (w / w.mean()).astype(np.float32)

