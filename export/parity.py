"""PyTorch vs ONNX Runtime on the same face images: top-1 agreement and |delta logit|."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from fer_edge.data.metrics import Comparison, compare_outputs
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.onnx_backend import ort_session
from fer_edge.runtime.preprocess import prepare_batch


# Least top-1 agreement of ONNX Runtime with PyTorch, per exported precision: FP32 must match almost exactly;
# FP16 rounding may flip a few near-ties. A precision not listed is reported without a threshold.
PARITY_MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.995}


@dataclass
class ParityReport:
    """fer-export's parity check of one artifact: reference = PyTorch logits, candidate = ONNX Runtime's."""
    precision: str
    data: str
    comparison: Comparison
    required_agreement: Optional[float]
    passed: bool

    def as_dict(self) -> Dict[str, object]:
        """The sidecar's "parity" block (the field names readers of existing artifacts know)."""
        c = self.comparison
        return {"precision": self.precision, "images": c.images, "data": self.data,
                "top1_agreement": c.top1_agreement, "max_abs_logit_diff": c.max_abs_diff,
                "mean_abs_logit_diff": c.mean_abs_diff, "required_agreement": self.required_agreement,
                "passed": self.passed}

    def line(self) -> str:
        c = self.comparison
        verdict = "PASS" if self.passed else "FAIL"
        need = f" (need >= {self.required_agreement:.1%})" if self.required_agreement else ""
        return (f"parity {self.precision}: top-1 agreement {c.top1_agreement:.2%}{need} on {c.images} images "
                f"[{self.data}], max |dlogit| {c.max_abs_diff:.2e}, mean {c.mean_abs_diff:.2e} -> {verdict}")


def torch_logits(model, tensors: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch
    out = []
    with torch.no_grad():
        for i in range(0, len(tensors), batch):
            out.append(model(torch.from_numpy(tensors[i:i + batch])).numpy())
    return np.concatenate(out)


def ort_logits(onnx_bytes: bytes, tensors: np.ndarray, batch: int = 256) -> np.ndarray:
    session = ort_session(onnx_bytes)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: tensors[i:i + batch]})[0] for i in range(0, len(tensors), batch)])


def compare_logits(reference: np.ndarray, candidate: np.ndarray, precision: str, data: str) -> ParityReport:
    """Parity of one precision against PARITY_MIN_AGREEMENT."""
    comparison = compare_outputs(reference, candidate)
    need = PARITY_MIN_AGREEMENT.get(precision)
    return ParityReport(precision, data, comparison, need, need is None or comparison.top1_agreement >= need)


def parity_tensors(faces, contract: ModelContract) -> np.ndarray:
    return prepare_batch(faces.images, contract)
