"""Accuracy of one model on labelled faces: top-1, macro-F1, per-class P/R/F1, confusion matrix, agreement."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from fer_edge.data.labels import canonical_label

DEFAULT_EVAL_BATCH = 256


def predict_all(model, images, batch_size: int = DEFAULT_EVAL_BATCH, progress=None) -> np.ndarray:
    """Top-1 class index for every face, evaluated in batches no larger than the model allows."""
    step = max(1, min(batch_size, model.max_batch or batch_size))
    predictions = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        predictions.append(model.predict_proba(chunk).argmax(axis=1))
        if progress is not None:
            progress.update(len(chunk))
    return np.concatenate(predictions).astype(np.int64)


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def classification_metrics(targets: np.ndarray, predictions: np.ndarray, labels: Sequence[str]) -> Dict:
    """top1, macro_f1 (over classes present in the targets or predictions), per_class and the confusion matrix."""
    matrix = confusion_matrix(targets, predictions, len(labels))
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # A class absent from both targets and predictions says nothing about the model: leave it out of the mean.
    seen = (support > 0) | (predicted > 0)
    per_class = {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                         "support": int(support[i])} for i, label in enumerate(labels)}
    return {"top1": float(true_positive.sum() / max(1, len(targets))),
            "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
            "per_class": per_class, "confusion_matrix": matrix.tolist(), "images": int(len(targets))}


def agreement(reference_labels: List[str], reference_pred: np.ndarray,
              labels: List[str], predictions: np.ndarray) -> Optional[float]:
    """Share of faces where two models pick the same class, matched by class name (label orders may differ)."""
    if len(reference_pred) != len(predictions) or len(predictions) == 0:
        return None
    ref_names = np.array([canonical_label(n) for n in reference_labels])[reference_pred]
    names = np.array([canonical_label(n) for n in labels])[predictions]
    return float(np.mean(ref_names == names))
