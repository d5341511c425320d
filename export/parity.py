"""PyTorch vs ONNX Runtime on the same face images: top-1 agreement and |delta logit|."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.preprocess import prepare_batch

# FP32 must match almost exactly; FP16 rounding may flip near-ties (issue #2 thresholds).
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.995}


@dataclass
class ParityReport:
    precision: str
    images: int
    data: str
    top1_agreement: float
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    required_agreement: Optional[float]
    passed: bool

    def as_dict(self):
        return asdict(self)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        need = f" (need >= {self.required_agreement:.1%})" if self.required_agreement else ""
        return (f"parity {self.precision}: top-1 agreement {self.top1_agreement:.2%}{need} on {self.images} images "
                f"[{self.data}], max |dlogit| {self.max_abs_logit_diff:.2e}, mean {self.mean_abs_logit_diff:.2e} -> {verdict}")


def torch_logits(model, tensors: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch
    out = []
    with torch.no_grad():
        for i in range(0, len(tensors), batch):
            out.append(model(torch.from_numpy(tensors[i:i + batch])).numpy())
    return np.concatenate(out)


def ort_logits(onnx_bytes: bytes, tensors: np.ndarray, batch: int = 256) -> np.ndarray:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: tensors[i:i + batch]})[0] for i in range(0, len(tensors), batch)])


def compare_logits(reference: np.ndarray, candidate: np.ndarray, precision: str, data: str) -> ParityReport:
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    need = MIN_AGREEMENT.get(precision)
    return ParityReport(precision, int(len(reference)), data, agreement, float(diff.max()), float(diff.mean()),
                        need, need is None or agreement >= need)


def parity_tensors(faces, contract: ModelContract) -> np.ndarray:
    return prepare_batch(faces.images, contract)
