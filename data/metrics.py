"""The one home of scores: how well one model classifies labelled faces, and how far two models' outputs differ.

Values are fractions (0..1) everywhere in the library; percent appears only where a number is printed or
written for people (fer-train's history and reports convert at that edge).

macro-F1 rule: the mean F1 over the classes that occur in the targets or in the predictions. A class absent
from both has precision 0/0 and recall 0/0, so it says nothing about the model and is left out; a class that
occurs but is never predicted correctly counts with F1 = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
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


# ------------------------------------------------------------------------ one model on labelled faces
def confusion_matrix(targets, predictions, num_classes: int) -> np.ndarray:
    """counts[true, predicted] (int64)."""
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    cells = np.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def per_class_scores(matrix: np.ndarray) -> Dict[str, np.ndarray]:
    """precision, recall, f1 and support of every class (index = class), from a confusion matrix."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision, recall = _ratio(true_positive, predicted), _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def occurring_classes(matrix: np.ndarray) -> np.ndarray:
    """True for each class that occurs in the targets or the predictions: the classes macro-F1 averages."""
    return (matrix.sum(axis=1) > 0) | (matrix.sum(axis=0) > 0)


def top1(matrix: np.ndarray) -> float:
    """Share of faces whose predicted class is the true class (0 for no faces)."""
    total = int(matrix.sum())
    return float(np.trace(matrix)) / total if total else 0.0


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the targets or the predictions (module docstring); 0 for no faces."""
    occurring = occurring_classes(matrix)
    return float(per_class_scores(matrix)["f1"][occurring].mean()) if occurring.any() else 0.0


def summary(matrix: np.ndarray) -> Dict[str, float]:
    """{'top1', 'macro_f1'} as fractions."""
    return {"top1": top1(matrix), "macro_f1": macro_f1(matrix)}


def per_class_rows(matrix: np.ndarray, labels: Sequence[str]) -> List[Dict[str, object]]:
    """One {'class', 'precision', 'recall', 'f1', 'support'} row per label, in label order (fractions)."""
    scores = per_class_scores(matrix)
    return [{"class": label, "precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
             "f1": float(scores["f1"][i]), "support": int(scores["support"][i])} for i, label in enumerate(labels)]


def classification_metrics(targets: np.ndarray, predictions: np.ndarray, labels: Sequence[str]) -> Dict:
    """fer-bench's accuracy block: top1, macro_f1, per_class (by label), the confusion matrix and the face count."""
    matrix = confusion_matrix(targets, predictions, len(labels))
    per_class = {row.pop("class"): row for row in per_class_rows(matrix, labels)}
    return {**summary(matrix), "per_class": per_class, "confusion_matrix": matrix.tolist(),
            "images": int(len(targets))}


# ------------------------------------------------------------------------- two models on the same faces
def agreement(reference_labels: List[str], reference_pred: np.ndarray,
              labels: List[str], predictions: np.ndarray) -> Optional[float]:
    """Share of faces where two models pick the same class, matched by class name (label orders may differ)."""
    if len(reference_pred) != len(predictions) or len(predictions) == 0:
        return None
    ref_names = np.array([canonical_label(n) for n in reference_labels])[reference_pred]
    names = np.array([canonical_label(n) for n in labels])[predictions]
    return float(np.mean(ref_names == names))


@dataclass(frozen=True)
class Comparison:
    """A candidate model's outputs against a reference's on the same faces (same label order); fractions.

    The differences are in the unit of the outputs compared: logits for fer-export parity and the INT8 gate,
    probabilities for the GPU check. Each check applies its own threshold table to these numbers.
    """
    images: int
    top1_agreement: float                   # share of faces where both pick the same class
    max_abs_diff: float                     # largest |candidate - reference| over every face and class
    mean_abs_diff: float
    mean_squared_diff: float
    reference_top1: Optional[float] = None  # top-1 accuracy of each, when the faces are labelled
    candidate_top1: Optional[float] = None


def compare_outputs(reference: np.ndarray, candidate: np.ndarray,
                    targets: Optional[np.ndarray] = None) -> Comparison:
    """Compare two [faces, classes] output arrays; with targets, also each model's top-1 accuracy."""
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"compare_outputs needs two equal, non-empty [faces, classes] arrays, got "
                         f"{reference.shape} and {candidate.shape}")
    diff = candidate.astype(np.float64) - reference.astype(np.float64)
    reference_pred, candidate_pred = reference.argmax(axis=1), candidate.argmax(axis=1)
    accuracy = (None, None) if targets is None else (float(np.mean(reference_pred == targets)),
                                                     float(np.mean(candidate_pred == targets)))
    return Comparison(images=int(len(reference)), top1_agreement=float(np.mean(reference_pred == candidate_pred)),
                      max_abs_diff=float(np.abs(diff).max()), mean_abs_diff=float(np.abs(diff).mean()),
                      mean_squared_diff=float(np.mean(diff ** 2)),
                      reference_top1=accuracy[0], candidate_top1=accuracy[1])
