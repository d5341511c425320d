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

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def class_counts(self, num_classes: Optional[int] = None) -> np.ndarray:
        n = num_classes or len(self.class_names)
        return np.bincount(self.y, minlength=n)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(self.x[index], self.y[index], self.row[index], self.split[index], list(self.class_names))


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
            parts.append({k: z[k] for k in keys})
    class_names = [str(c) for c in parts[0]["class_names"]]
    if class_names != list(FER2013_LABELS):
        raise ValueError(f"{data_dir}: class_names {class_names} differ from the expected {list(FER2013_LABELS)}")
    out = Split(
        x=np.concatenate([p["x"] for p in parts]),
        y=np.concatenate([p["y"] for p in parts]).astype(np.int64),
        row=np.concatenate([p["row"] for p in parts]).astype(np.int64),
        split=np.concatenate([p["split"] for p in parts]).astype(np.uint8),
        class_names=class_names,
    )
    if not np.all(out.split == SPLIT_CODES[name]):
        bad = np.unique(out.split[out.split != SPLIT_CODES[name]]).tolist()
        raise ValueError(f"{name} files hold rows with split codes {bad}; expected only {SPLIT_CODES[name]}")
    if source == "ferplus":
        majority = ferplus_majority(np.concatenate([p["ferplus_votes"] for p in parts]))
        clear = majority >= 0
        out = out.subset(np.flatnonzero(clear))
        out.y, out.class_names = majority[clear].astype(np.int64), list(FERPLUS_LABELS)
    return out


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

