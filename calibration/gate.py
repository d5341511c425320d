"""The accuracy gate: INT8 must stay within --max-drop top-1 points of FP32 (labelled validation set) or
agree with FP32 on >= --min-agreement of faces (unlabelled). When it does not, the most sensitive blocks
go back to float one by one until it does, or the gate fails and nothing is written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from fer_edge.calibration import sensitivity
from fer_edge.calibration.quantize import keep_in_float
from fer_edge.data.metrics import Comparison, compare_outputs
from fer_edge.runtime.errors import FerEdgeError
from fer_edge.runtime.onnx_backend import ort_session


EVAL_BATCH = 64
SENSITIVITY_SUBSET = 256


class GateFailed(FerEdgeError, RuntimeError):
    """INT8 cannot meet the accuracy gate even with layers kept in higher precision; nothing was written."""


# Where the gate runs the models: ONNX Runtime simulates Q/DQ in float; OpenVINO runs real INT8 kernels,
# whose rounding differs, so a CPU kiosk on OpenVINO gates on the arithmetic it will ship with.
GATE_BACKENDS = ("onnxruntime", "openvino")


def onnx_logits(model_bytes: bytes, tensors: np.ndarray, input_name: str = "input", threads: Optional[int] = None,
                backend: str = "onnxruntime", precision: Optional[str] = None) -> np.ndarray:
    """Logits of an in-memory ONNX model on the gate's backend. OpenVINO refuses a model whose compiled kernels
    contradict `precision` ("fp32": no INT8 or bf16 layer; "int8": INT8 kernels run); None checks only bf16."""
    if backend == "openvino":
        from fer_edge.runtime.openvino_backend import OpenVinoBackend
        model = OpenVinoBackend(model_bytes, threads)
        model.check_precision(precision, "the gate's model")
        run = model.run
    else:
        session = ort_session(model_bytes, threads)
        run = lambda batch: session.run(None, {input_name: batch})[0]  # noqa: E731
    return np.concatenate([run(tensors[i:i + EVAL_BATCH]) for i in range(0, len(tensors), EVAL_BATCH)])


def drop_points(result: Comparison) -> Optional[float]:
    """FP32 top-1 minus INT8 top-1 in points (the unit of --max-drop); None for unlabelled faces."""
    if result.reference_top1 is None:
        return None
    return 100.0 * (result.reference_top1 - result.candidate_top1)


def result_line(result: Comparison) -> str:
    """'top-1 FP32 61.00% INT8 60.50% (drop +0.50 pts), agreement 97.10%' (no top-1 part when unlabelled)."""
    drop = drop_points(result)
    accuracy = "" if drop is None else (f"top-1 FP32 {100 * result.reference_top1:.2f}% "
                                        f"INT8 {100 * result.candidate_top1:.2f}% (drop {drop:+.2f} pts), ")
    return f"{accuracy}agreement {100 * result.top1_agreement:.2f}%"


def result_record(result: Comparison) -> Dict[str, object]:
    """The gate's fields in the INT8 sidecar ("before", "after", each step): agreement, fp32/int8 top-1, drop."""
    drop = drop_points(result)
    return {"agreement": round(result.top1_agreement, 5), "fp32_top1": result.reference_top1,
            "int8_top1": result.candidate_top1, "drop_points": None if drop is None else round(drop, 3)}


@dataclass
class GateRule:
    """The INT8 gate's rule, set by fer-export --max-drop, --min-agreement and --gate-on."""
    max_drop: float = 0.5          # points of top-1, labelled validation
    min_agreement: float = 0.99    # fraction, unlabelled validation (or always, with metric "agreement")
    metric: str = "auto"           # auto: drop when labelled, else agreement; agreement: always agreement

    def passes(self, result: Comparison) -> bool:
        drop = drop_points(result)
        if drop is not None and self.metric == "auto":
            return drop <= self.max_drop
        return result.top1_agreement >= self.min_agreement

    def describe(self, labelled: bool) -> str:
        return (f"top-1 drop <= {self.max_drop} pts" if labelled and self.metric == "auto"
                else f"agreement with FP32 >= {100 * self.min_agreement:.1f}%")


@dataclass
class GateResult:
    model: bytes
    before: Comparison     # reference = FP32, candidate = all-INT8
    after: Comparison      # reference = FP32, candidate = the model that passed
    excluded_groups: List[str] = field(default_factory=list)
    excluded_nodes: List[str] = field(default_factory=list)
    sensitivity: List[sensitivity.GroupSensitivity] = field(default_factory=list)
    steps: List[Dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0


def run_gate(quantize_excluding: Callable[[List[str]], bytes], fp32_bytes: bytes, quantizable, tensors: np.ndarray,
             targets: Optional[np.ndarray], rule: GateRule, input_name: str = "input",
             log: Callable[[str], None] = print, backend: str = "onnxruntime") -> GateResult:
    """Quantize everything, check; on failure rank blocks and return the worst ones to float until it passes.

    Screening uses quantize.keep_in_float on the all-INT8 model (fast); the artifact that passes is then
    made by a real quantize_static run with nodes_to_exclude and checked again. `backend` (GATE_BACKENDS) runs
    every model, FP32 reference included.
    """
    if backend not in GATE_BACKENDS:
        raise FerEdgeError(f"gate backend {backend!r}: use one of {GATE_BACKENDS}")
    start = time.perf_counter()
    labelled = targets is not None
    logits_of = lambda model, precision="int8": onnx_logits(model, tensors, input_name, backend=backend,  # noqa: E731
                                                            precision=precision)
    reference = logits_of(fp32_bytes, "fp32")
    full = quantize_excluding([])
    before = compare_outputs(reference, logits_of(full), targets)
    log(f"gate ({rule.describe(labelled)}) on {len(tensors)} validation faces, {backend}: {result_line(before)}")
    result = GateResult(full, before, before)
    if rule.passes(before):
        result.seconds = time.perf_counter() - start
        return result

    groups = sensitivity.block_groups(quantizable)
    all_nodes = [n for names in groups.values() for n in names]
    subset = np.random.default_rng(0).choice(len(tensors), min(SENSITIVITY_SUBSET, len(tensors)), replace=False)
    from tqdm import tqdm
    with tqdm(total=len(groups), desc="sensitivity (one block INT8 at a time)", unit="block", leave=False) as bar:
        ranking = sensitivity.rank_groups(
            groups, lambda nodes: keep_in_float(full, nodes),
            # One block quantized alone may fuse into no INT8 kernel on OpenVINO: check only for bf16.
            lambda model: onnx_logits(model, tensors[subset], input_name, backend=backend), reference[subset],
            progress=lambda _group: bar.update(1))
    result.sensitivity = ranking
    log("most sensitive blocks: " + ", ".join(f"{r.group} (mse {r.logit_mse:.3g})" for r in ranking[:5]))
    # Each check runs the whole validation set through a Q/DQ model (slow on CPU), so the number of blocks to
    # keep in float is searched by doubling then bisection (1, 2, 4, ... then halve), not one by one.
    order = [r.group for r in ranking]
    checked: Dict[int, bool] = {}

    def passes_with(k: int) -> bool:
        if k not in checked:
            nodes = [n for g in order[:k] for n in groups[g]]
            after = compare_outputs(reference, logits_of(keep_in_float(full, nodes)), targets)
            result.steps.append({"kept_in_float": order[:k], **result_record(after)})
            log(f"  {k} most sensitive block(s) in float ({', '.join(order[:k][-3:])}{'...' if k > 3 else ''}): "
                f"{result_line(after)}")
            checked[k] = rule.passes(after)
        return checked[k]

    limit = len(order) - 1  # keeping every block in float is not INT8 any more
    k, low = 1, 0
    while k < limit and not passes_with(k):
        low, k = k, min(2 * k, limit)
    if k >= limit and not passes_with(limit):
        k = None
    while k is not None and k - low > 1:
        mid = (low + k) // 2
        low, k = (low, mid) if passes_with(mid) else (mid, k)
    while k is not None and k <= limit:
        nodes = [n for g in order[:k] for n in groups[g]]
        model = quantize_excluding(nodes)
        after = compare_outputs(reference, logits_of(model), targets)
        if rule.passes(after):
            result.model, result.after = model, after
            result.excluded_groups, result.excluded_nodes = order[:k], nodes
            result.seconds = time.perf_counter() - start
            return result
        log(f"  quantize_static with {k} block(s) in float: {result_line(after)}; trying one more")
        k += 1
    excluded = order[:limit]
    best = max(result.steps, key=lambda s: s["agreement"]) if result.steps else result_record(before)
    raise GateFailed(
        f"INT8 fails the accuracy gate ({rule.describe(labelled)}): all-INT8 {result_line(before)}; even with "
        f"{len(excluded)} of {len(groups)} blocks ({len(all_nodes)} layers) kept in float the best was {best}. "
        "Nothing was written. Try --calib-method entropy or percentile, more or more representative --calib "
        "images, a looser --max-drop, or ship the FP16/FP32 artifact instead.")
