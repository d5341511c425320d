"""Classification metrics from a confusion matrix (numpy only)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray) -> Dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def summary(cm: np.ndarray) -> Dict[str, float]:
    """top1 and macro-F1 in percent (Python floats)."""
    total = cm.sum()
    top1 = 100.0 * float(np.trace(cm)) / float(total) if total else 0.0
    return {"top1": top1, "macro_f1": 100.0 * float(per_class(cm)["f1"].mean())}


def report_rows(cm: np.ndarray, labels: Sequence[str]) -> List[Dict[str, object]]:
    pc = per_class(cm)
    return [{"class": lab, "precision": 100.0 * float(pc["precision"][i]), "recall": 100.0 * float(pc["recall"][i]),
             "f1": 100.0 * float(pc["f1"][i]), "support": int(pc["support"][i])} for i, lab in enumerate(labels)]
