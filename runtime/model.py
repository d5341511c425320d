"""`load(path)` -> FerModel with `predict(faces)`; the backend is picked from the artifact."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from fer_edge.runtime.artifact_io import read_sidecar, sidecar_path, verify_artifact
from fer_edge.runtime.contract import ModelContract, compare_contracts
from fer_edge.runtime.errors import ContractError, ModelLoadError
from fer_edge.runtime.preprocess import FaceInput, prepare_batch

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_INTEGRITY_FIX = "Copy the model and its .json sidecar again, or re-export both with fer-export."
# FP16 rounds each probability by up to 2^-11 of itself and an FP16 softmax adds its own rounding, so rows sum
# to 1 only within ~1e-3; logits miss by far more (a logits graph's rows summed to -0.77).
PROBABILITY_TOLERANCE = 2e-3


@dataclass
class FacePrediction:
    """One face: class probabilities (in contract label order), the top-1 label, its index and score."""
    probabilities: np.ndarray
    label: str
    index: int
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class FerModel:
    """A loaded artifact: its contract, its backend and the shared preprocessing."""

    def __init__(self, path: Path, contract: ModelContract, backend, sidecar: Optional[dict] = None):
        self.path = path
        self.contract = contract
        self.backend = backend
        self.sidecar = sidecar or {}
        # Engines cap the batch by their optimisation profile; ONNX Runtime has no cap.
        self.max_batch: Optional[int] = getattr(backend, "max_batch", None)

    @property
    def labels(self) -> List[str]:
        return list(self.contract.labels)

    @property
    def precision(self) -> str:
        return self.contract.precision

    def preprocess(self, faces: FaceInput) -> np.ndarray:
        return prepare_batch(faces, self.contract)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Inference only: a prepared float32 NCHW tensor -> raw outputs (logits) [N, num_classes]."""
        if self.max_batch and batch.shape[0] > self.max_batch:
            return np.concatenate([self.backend.run(batch[i:i + self.max_batch])
                                   for i in range(0, batch.shape[0], self.max_batch)])
        return self.backend.run(batch)

    def predict_proba(self, faces: FaceInput) -> np.ndarray:
        """Face crop(s) -> probabilities [N, num_classes]."""
        return self.to_probabilities(self.infer(self.preprocess(faces)))

    def to_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Raw outputs [N, num_classes] -> probabilities, checked against the contract.

        The graph cannot say whether it emits logits or probabilities, and a dynamic class axis hides its width
        until it runs, so both are checked on every call (microseconds for an N x 7 array).
        """
        self._check_output_shape(outputs)
        if self.contract.output_kind != "probabilities":
            return softmax(outputs)
        probs = outputs.astype(np.float32)
        self._check_probabilities(probs)
        return probs

    def _check_output_shape(self, outputs: np.ndarray) -> None:
        if outputs.ndim != 2 or outputs.shape[1] != self.contract.num_classes:
            raise ContractError(f"{self.path}: the model returned outputs of shape {outputs.shape} but its contract "
                                f"lists {self.contract.num_classes} labels {self.contract.labels}: the contract "
                                "belongs to another model. Re-export the model with fer-export, which writes a "
                                "matching contract.")

    def _check_probabilities(self, probs: np.ndarray) -> None:
        row_sums = probs.sum(axis=1)
        in_range = bool(np.all((probs >= -PROBABILITY_TOLERANCE) & (probs <= 1 + PROBABILITY_TOLERANCE)))
        if in_range and bool(np.all(np.abs(row_sums - 1.0) <= PROBABILITY_TOLERANCE)):
            return
        worst = int(np.argmax(np.abs(row_sums - 1.0)))
        raise ContractError(f"{self.path}: the contract says output_kind 'probabilities' but the model returned values "
                            f"from {probs.min():.4g} to {probs.max():.4g} and a row summing to {row_sums[worst]:.4g}, "
                            "so it returns logits (or other unnormalised scores). Re-export it with fer-export, or "
                            "correct output_kind to 'logits' in its contract (sidecar and embedded metadata) so "
                            "fer-edge applies softmax.")

    def predict(self, faces: FaceInput) -> List[FacePrediction]:
        """Face crop(s), uint8 gray or BGR, any size -> one FacePrediction per face.

        Accepted shapes, including the one rule for 3-D arrays, are listed in preprocess.split_faces.
        """
        probs = self.predict_proba(faces)
        top = probs.argmax(axis=1)
        labels = self.contract.labels
        return [FacePrediction(p, labels[i], int(i), float(p[i])) for p, i in zip(probs, top)]

    def __repr__(self) -> str:
        return (f"FerModel({self.path.name}, backend={self.backend.name}, precision={self.precision}, "
                f"input={self.contract.channels}x{self.contract.input_size}x{self.contract.input_size})")


def _resolve_contract(path: Path, embedded: Optional[ModelContract], sidecar: Optional[dict]) -> ModelContract:
    """Contract from the artifact and its sidecar; refuse when missing or when the two disagree."""
    from_sidecar = ModelContract.from_dict(sidecar["contract"], source=str(sidecar_path(path))) if sidecar else None
    if embedded is None and from_sidecar is None:
        raise ContractError(f"{path}: no fer-edge contract found (neither in the model's metadata nor in "
                            f"{sidecar_path(path).name}). Export the model with fer-export so the runtime knows "
                            "its preprocessing and labels.")
    if embedded is not None and from_sidecar is not None:
        diff = compare_contracts(embedded, from_sidecar, "the model", "its sidecar")
        if diff or embedded.precision != from_sidecar.precision:
            raise ContractError(f"{path}: the contract inside the model and its sidecar {sidecar_path(path).name} "
                                f"disagree ({diff or 'precision'}); the sidecar probably belongs to another export. "
                                "Delete the stale sidecar or re-export.")
    return embedded or from_sidecar


def _check_artifact_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file. Create one with `fer-export` (writes ./fer-artifacts/*.onnx).")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder; pass the .onnx or .engine file inside it")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty (an interrupted copy?). Re-export it with fer-export.")


def _load_onnx(path: Path, threads: Optional[int], providers: Optional[List[str]]) -> FerModel:
    sidecar = read_sidecar(path)
    verify_artifact(path, sidecar, ONNX_INTEGRITY_FIX)     # before ONNX Runtime parses a single byte
    from fer_edge.runtime.onnx_backend import OnnxRuntimeBackend
    backend = OnnxRuntimeBackend(path, threads=threads, providers=providers)
    contract = _resolve_contract(path, backend.embedded_contract(str(path)), sidecar)
    backend.check_contract(contract, str(path))
    return FerModel(path, contract, backend, sidecar)


def _load_engine(path: Path, engine_options) -> FerModel:
    from fer_edge.runtime.tensorrt.backend import load_engine_backend
    sidecar = read_sidecar(path)
    contract = _resolve_contract(path, None, sidecar)
    backend = load_engine_backend(path, contract, sidecar, **engine_options)   # checks size, sha256 and shapes
    return FerModel(path, contract, backend, sidecar)


def load(path: os.PathLike, threads: Optional[int] = None, providers: Optional[List[str]] = None, **engine_options) -> FerModel:
    """Load an ONNX model (ONNX Runtime) or a TensorRT engine, with its contract.

    The file's size and sha256 are checked against its sidecar before any parser reads it, and the contract
    against the graph (input type and shape, number of classes) before the model is returned. An ONNX file
    without a sidecar still loads from its embedded contract, with an IntegrityWarning.

    threads: intra-op CPU threads for ONNX Runtime (None = its default).
    providers: ONNX Runtime execution providers (default CPU).
    engine_options: passed to the TensorRT backend (e.g. cuda_graph=True).
    """
    path = Path(path)
    _check_artifact_file(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _load_onnx(path, threads, providers)
    if suffix in ENGINE_SUFFIXES:
        return _load_engine(path, engine_options)
    raise ModelLoadError(f"{path}: unknown artifact type {suffix!r}; expected .onnx, or .engine/.plan for TensorRT")
