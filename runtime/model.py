"""`load(path)` -> FerModel with `predict(faces)`; the backend is picked from the artifact."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from .artifact_io import read_sidecar, sidecar_path
from .contract import ModelContract, compare_contracts
from .errors import ContractError, ModelLoadError
from .preprocess import FaceInput, prepare_batch

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


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
        out = self.infer(self.preprocess(faces))
        return out.astype(np.float32) if self.contract.output_kind == "probabilities" else softmax(out)

    def predict(self, faces: FaceInput) -> List[FacePrediction]:
        """Face crop(s), uint8 gray or BGR, any size -> one FacePrediction per face."""
        probs = self.predict_proba(faces)
        top = probs.argmax(axis=1)
        labels = self.contract.labels
        return [FacePrediction(p, labels[i], int(i), float(p[i])) for p, i in zip(probs, top)]

    def __repr__(self) -> str:
        return (f"FerModel({self.path.name}, backend={self.backend.name}, precision={self.precision}, "
                f"input={self.contract.channels}x{self.contract.input_size}x{self.contract.input_size})")


def _resolve_contract(path: Path, embedded: Optional[ModelContract]) -> tuple:
    """Contract from the artifact and its sidecar; refuse when missing or when the two disagree."""
    sidecar = read_sidecar(path)
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
    return embedded or from_sidecar, sidecar


def load(path: os.PathLike, threads: Optional[int] = None, providers: Optional[List[str]] = None, **engine_options) -> FerModel:
    """Load an ONNX model (ONNX Runtime) or a TensorRT engine, with its contract.

    threads: intra-op CPU threads for ONNX Runtime (None = its default).
    providers: ONNX Runtime execution providers (default CPU).
    engine_options: passed to the TensorRT backend (e.g. cuda_graph=True).
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file. Create one with `fer-export` (writes ./fer-artifacts/*.onnx).")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder; pass the .onnx or .engine file inside it")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty (an interrupted copy?). Re-export it with fer-export.")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from .onnx_backend import OnnxRuntimeBackend
        backend = OnnxRuntimeBackend(path, threads=threads, providers=providers)
        contract, sidecar = _resolve_contract(path, backend.embedded_contract(str(path)))
        backend.check_contract(contract, str(path))
    elif suffix in ENGINE_SUFFIXES:
        from .tensorrt_backend import load_engine_backend
        contract, sidecar = _resolve_contract(path, None)
        backend = load_engine_backend(path, contract, sidecar, **engine_options)
    else:
        raise ModelLoadError(f"{path}: unknown artifact type {suffix!r}; expected .onnx, or .engine/.plan for TensorRT")
    return FerModel(path, contract, backend, sidecar)
