"""fer_edge.data.metrics: the one macro-F1 rule, and the one comparison of two models that every check judges."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from fer_edge.data.metrics import Comparison, classification_metrics, compare_outputs, confusion_matrix, summary

# Five classes. Class 3 occurs only in the predictions, class 4 nowhere.
TARGETS = [0, 0, 0, 1, 1, 2, 2]
PREDICTIONS = [0, 0, 1, 1, 3, 2, 2]


def test_macro_f1_averages_the_classes_in_targets_or_predictions():
    # By hand: class 0 P=2/2 R=2/3 F1=0.8; class 1 P=1/2 R=1/2 F1=0.5; class 2 F1=1; class 3 (predicted once,
    # never true) F1=0; class 4 is in neither, has no F1, and is left out. Mean of four: 2.3/4.
    # (Averaging all five classes would give 0.46; only the target classes, 0.767.)
    matrix = confusion_matrix(TARGETS, PREDICTIONS, 5)
    assert matrix[0].tolist() == [2, 1, 0, 0, 0] and matrix[:, 3].tolist() == [0, 1, 0, 0, 0]
    assert summary(matrix) == pytest.approx({"top1": 5 / 7, "macro_f1": 0.575})


def test_classification_metrics_are_fractions_per_label():
    labels = ["angry", "happy", "sad", "surprise", "neutral"]
    metrics = classification_metrics(np.array(TARGETS), np.array(PREDICTIONS), labels)
    assert metrics["top1"] == pytest.approx(5 / 7) and metrics["macro_f1"] == pytest.approx(0.575)
    assert metrics["per_class"]["angry"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert metrics["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["images"] == 7 and len(metrics["confusion_matrix"]) == 5


def test_no_faces_score_zero():
    assert summary(confusion_matrix([], [], 3)) == {"top1": 0.0, "macro_f1": 0.0}


def test_compare_outputs_by_hand():
    reference = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 0]], np.float32)
    candidate = np.array([[1, 2, 0], [0, 3, 1.5], [1, 0, 0]], np.float32)
    result = compare_outputs(reference, candidate, targets=np.array([0, 1, 1]))
    # argmax 0,1,0 vs 1,1,0; differences -1, 1 and 0.5 among nine values.
    assert asdict(result) == pytest.approx({"images": 3, "top1_agreement": 2 / 3, "max_abs_diff": 1.0,
                                            "mean_abs_diff": 2.5 / 9, "mean_squared_diff": 2.25 / 9,
                                            "reference_top1": 2 / 3, "candidate_top1": 1 / 3})
    unlabelled = compare_outputs(reference, candidate)
    assert unlabelled.reference_top1 is None and unlabelled.candidate_top1 is None
    with pytest.raises(ValueError, match="equal"):
        compare_outputs(reference, candidate[:2])


def _agreeing(share: float, reference_top1=None, candidate_top1=None) -> Comparison:
    return Comparison(1000, share, 0.25, 0.01, 0.001, reference_top1, candidate_top1)


def test_each_check_judges_the_same_comparison_with_its_own_table():
    from fer_edge.benchmarks.gpu_check import ENGINE_MIN_AGREEMENT, parity_record
    from fer_edge.export.parity import PARITY_MIN_AGREEMENT, compare_logits
    logits = np.eye(4, dtype=np.float32)
    report = compare_logits(logits, logits, "fp16", "faces.npz")
    assert report.passed and report.required_agreement == PARITY_MIN_AGREEMENT["fp16"]
    assert report.as_dict()["top1_agreement"] == 1.0 and report.as_dict()["max_abs_logit_diff"] == 0.0
    assert compare_logits(logits, logits, "int8", "faces.npz").required_agreement is None  # no parity rule for INT8
    # 99.2%: enough for a TensorRT engine against ONNX Runtime (FP16), not for fer-export's FP16 parity.
    assert parity_record(_agreeing(0.992), "fp16")["passed"] and 0.992 < PARITY_MIN_AGREEMENT["fp16"]
    assert not parity_record(_agreeing(0.97), "int8")["passed"] and ENGINE_MIN_AGREEMENT["int8"] == 0.98
    record = parity_record(_agreeing(0.999, 0.61, 0.60), "fp16")
    assert record == {"faces": 1000, "top1_agreement": 0.999, "max_abs_prob_diff": 0.25, "min_agreement": 0.99,
                      "passed": True, "accuracy_onnxruntime": 0.61, "accuracy_engine": 0.60}
