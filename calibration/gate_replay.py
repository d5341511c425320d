"""The INT8 accuracy gate again, on another runtime's outputs (benchmarks/gpu_check: the TensorRT engine).

The gate ran on ONNX Runtime (or OpenVINO), whose Q/DQ arithmetic differs from TensorRT's fused INT8 kernels. The
INT8 sidecar records how its validation faces were read (`gate.validation_set`), their sha256 and the rule; this
module reads the same faces again, refuses other faces, and judges a candidate's logits by the same rule against
FP32 (the FP32 artifact the INT8 one was made from, run on ONNX Runtime).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from fer_edge.calibration import gate, sources
from fer_edge.calibration.int8_export import Int8Options, load_calibration
from fer_edge.calibration.synthesize import SHIPPED_SETS
from fer_edge.data.metrics import compare_outputs
from fer_edge.runtime.artifact_io import read_sidecar, sha256_file, sidecar_path
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import ContractError, DataError
from fer_edge.runtime.preprocess import prepare_batch


@dataclass
class RecordedGate:
    """What the gate compared, read back: the rule, the validation faces as tensors, and the FP32 artifact."""
    int8_path: Path
    rule: gate.GateRule
    tensors: np.ndarray            # the validation faces through the contract's preprocessing
    targets: Optional[np.ndarray]
    fp32_path: Path
    onnx_after: Dict[str, object]  # what the gate measured on the INT8 ONNX it passed
    description: str

    def judge(self, reference_logits: np.ndarray, candidate_logits: np.ndarray) -> Dict[str, object]:
        """The gate's verdict on a candidate (e.g. the engine) against FP32, as the sidecar records it."""
        result = compare_outputs(reference_logits, candidate_logits, self.targets)
        return {"rule": self.rule.describe(self.targets is not None), "faces": len(self.tensors),
                "validation": self.description, "onnx": self.onnx_after, "candidate": gate.result_record(result),
                "passed": self.rule.passes(result)}

    def fp32_logits(self, input_name: str) -> np.ndarray:
        return gate.onnx_logits(self.fp32_path.read_bytes(), self.tensors, input_name)


def recorded_gate(int8_path: Path, calib: Optional[str] = None, val: Optional[str] = None) -> RecordedGate:
    """The gate of an INT8 artifact, ready to judge another runtime. calib/val: where the recorded calibration and
    validation sources are on this machine, when not at their recorded paths (the faces must hash the same)."""
    int8_path = Path(int8_path)
    sidecar = read_sidecar(int8_path)
    record = ((sidecar or {}).get("gate") or {}).get("validation_set")
    if record is None:
        raise ContractError(f"{int8_path}: its sidecar does not record how the gate's validation faces were read "
                            "(written by an older fer-edge, or not by fer-export --int8), so the gate cannot be run "
                            "again on the engine; re-export it with `fer-export --int8`")
    contract = ModelContract.from_dict(sidecar["contract"], source=str(sidecar_path(int8_path)))
    fp32_path = _fp32_artifact(int8_path, sidecar)
    options = Int8Options(calib_split=record["calib_split"], calib_count=record["calib_count"],
                          calib_seed=record["calib_seed"], calib_frame_step=record["calib_frame_step"],
                          calib_detector=record["calib_detector"], val_split=record["val_split"],
                          val=_located(val, record["val"], "--gate-val") if record["val"] else None)
    shipped = record["shipped_set"]
    shipped = "fer2013" if shipped is True else shipped   # sidecars written before there were two bundled models
    calib_path = str(SHIPPED_SETS[shipped]) if shipped and calib is None else \
        _located(calib, record["calib"], "--gate-calib")
    faces = load_calibration(options, calib_path, contract, log=lambda _m: None).val
    if sources.content_hash(faces) != record["faces_sha256"]:
        raise DataError(f"{int8_path}: the validation faces read from {calib_path}"
                        + (f" and {options.val}" if options.val else "")
                        + " are not the ones the gate used (their sha256 differs from the sidecar's): pass the "
                        "files the INT8 artifact was gated on (--gate-calib, --gate-val)")
    recorded = sidecar["gate"]
    rule = gate.GateRule(recorded["max_drop"], recorded["min_agreement"], recorded.get("gate_on", "auto"))
    return RecordedGate(int8_path, rule, prepare_batch(faces.images, contract), faces.targets, fp32_path,
                        recorded["after"], f"{len(faces)} faces from {faces.source}")


def _located(given: Optional[str], recorded: str, flag: str) -> str:
    path = given or recorded
    if not Path(path).exists():
        raise DataError(f"the INT8 gate ran on {recorded}, which is not on this machine; copy it here and pass "
                        f"{flag} PATH")
    return path


def _fp32_artifact(int8_path: Path, sidecar: Dict[str, object]) -> Path:
    """The FP32 artifact the INT8 one was made from: next to it, by the name and sha256 its sidecar records."""
    export = sidecar.get("export") or {}
    path = int8_path.parent / str(export.get("from", ""))
    if not export.get("from") or not path.is_file():
        raise DataError(f"{int8_path}: the gate compares against the FP32 artifact it was made from "
                        f"({export.get('from') or 'not recorded'}), which is not next to it; copy it there")
    if sha256_file(path) != export.get("from_sha256"):
        raise DataError(f"{path}: not the FP32 artifact {int8_path.name} was made from (sha256 differs from its "
                        "sidecar's export.from_sha256); copy the original FP32 .onnx next to it")
    return path
