"""`load(path)` -> FerModel with `predict(faces)`; the backend is picked from the artifact."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Union

import numpy as np

from fer_edge.runtime.artifact_io import read_sidecar, sidecar_path, verify_artifact
from fer_edge.runtime.contract import ModelContract, compare_contracts
from fer_edge.runtime.errors import ContractError, ModelLoadError
from fer_edge.runtime.preprocess import FaceInput, prepare_batch

ONNX_INTEGRITY_FIX = "Copy the model and its .json sidecar again, or re-export both with fer-export."
# FP16 rounds each probability by up to 2^-11 of itself and an FP16 softmax adds its own rounding, so rows sum
# to 1 only within ~1e-3; logits miss by far more (a logits graph's rows summed to -0.77).
PROBABILITY_TOLERANCE = 2e-3
TRITON_SCHEMES = ("triton", "triton+grpc")      # triton://host:8000/model (HTTP), triton+grpc://host:8001/model


class Backend(Protocol):
    """What FerModel needs from an inference engine (ONNX Runtime, OpenVINO, TensorRT, a Triton client)."""
    name: str
    max_batch: Optional[int]        # the most faces one run() takes (an engine's profile); None: no limit

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> raw outputs [N, num_classes]."""

    def close(self) -> None:
        """Release the session or the GPU buffers; run() must not be called afterwards."""


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
    """A loaded artifact: its contract, its backend and the shared preprocessing. Close it, or use `with`."""

    def __init__(self, path: Path, contract: ModelContract, backend: Backend, sidecar: Optional[dict] = None):
        self.path = path
        self.contract = contract
        self.backend = backend
        self.sidecar = sidecar or {}
        self.max_batch = backend.max_batch
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.close()

    def __enter__(self) -> "FerModel":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def labels(self) -> List[str]:
        return list(self.contract.labels)

    @property
    def precision(self) -> str:
        return self.contract.precision

    def preprocess(self, faces: FaceInput) -> np.ndarray:
        return prepare_batch(faces, self.contract)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Inference only: a prepared float32 NCHW tensor -> raw outputs [N, num_classes], in max_batch chunks."""
        if self.closed:
            raise ModelLoadError(f"{self.path}: this model was closed (its session or GPU buffers are released); "
                                 "load it again with fer_edge.runtime.load() to keep predicting.")
        step = self.max_batch or len(batch)
        if len(batch) <= step:
            return self.backend.run(batch)
        return np.concatenate([self.backend.run(batch[i:i + step]) for i in range(0, len(batch), step)])

    def predict_proba(self, faces: FaceInput) -> np.ndarray:
        """Face crop(s) -> probabilities [N, num_classes]."""
        return self.to_probabilities(self.infer(self.preprocess(faces)))

    def to_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Raw outputs [N, num_classes] -> probabilities, checked against the contract on every call (microseconds):
        the graph cannot say whether it emits logits or probabilities, and a dynamic class axis hides its width."""
        self._check_output_shape(outputs)
        if self.contract.output_kind != "probabilities":
            return softmax(outputs)
        probs = outputs.astype(np.float32)
        self._check_probabilities(probs)
        return probs

    def _check_output_shape(self, outputs: np.ndarray) -> None:
        if outputs.ndim != 2 or outputs.shape[1] != self.contract.num_classes:
            raise ContractError(f"{self.path}: the model returned outputs of shape {outputs.shape} but its contract "
                                f"lists {self.contract.num_classes} labels {self.contract.labels}: the contract belongs "
                                "to another model. Re-export it with fer-export, which writes a matching one.")

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
        """Face crop(s), uint8 gray/BGR/BGRA, any size (shapes: preprocess.split_faces) -> a FacePrediction each."""
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


def _onnx_backend(name: Optional[str], path: Path, threads: Optional[int], providers: Optional[List[str]]):
    """The backend that runs an .onnx file: ONNX Runtime (default) or OpenVINO (the `openvino` extra)."""
    if name in (None, "onnxruntime"):
        from fer_edge.runtime.onnx_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(path, threads=threads, providers=providers)
    if name == "openvino":
        if providers:
            raise ModelLoadError(f"{path}: providers are ONNX Runtime execution providers; drop them for backend='openvino'")
        from fer_edge.runtime.openvino_backend import OpenVinoBackend
        return OpenVinoBackend(path, threads=threads)
    raise ModelLoadError(f"{path}: unknown backend {name!r} for an .onnx file; use one of {ONNX_BACKENDS}")


def _load_onnx(path: Path, threads: Optional[int], providers: Optional[List[str]], backend_name: Optional[str],
               engine_options: Dict[str, Any]) -> FerModel:
    if engine_options:
        raise ModelLoadError(f"{path}: engine options {sorted(engine_options)} apply to TensorRT engines only; "
                             "drop them to load an .onnx file")
    sidecar = read_sidecar(path)
    verify_artifact(path, sidecar, ONNX_INTEGRITY_FIX)     # before any backend parses a single byte
    backend = _onnx_backend(backend_name, path, threads, providers)
    try:
        contract = _resolve_contract(path, backend.embedded_contract(str(path)), sidecar)
        backend.check_contract(contract, str(path))
    except Exception:
        backend.close()     # release the session (OpenVINO: a compiled model and its threads) now, not at GC
        raise
    return FerModel(path, contract, backend, sidecar)


def _load_engine(path: Path, threads: Optional[int], providers: Optional[List[str]], backend_name: Optional[str],
                 engine_options: Dict[str, Any]) -> FerModel:
    if backend_name not in (None, "tensorrt"):
        raise ModelLoadError(f"{path}: a TensorRT engine runs only on backend 'tensorrt', not {backend_name!r}; "
                             "pass the .onnx file to run it on another backend")
    from fer_edge.runtime.tensorrt.backend import load_engine_backend
    sidecar = read_sidecar(path)
    contract = _resolve_contract(path, None, sidecar)
    backend = load_engine_backend(path, contract, sidecar, **engine_options)   # checks size, sha256 and shapes
    return FerModel(path, contract, backend, sidecar)


ONNX_BACKENDS = ("onnxruntime", "openvino")
LOADERS = {".onnx": _load_onnx, ".engine": _load_engine, ".plan": _load_engine, ".trt": _load_engine}


def load(source: Union[os.PathLike, str], threads: Optional[int] = None, providers: Optional[List[str]] = None,
         backend: Optional[str] = None, **engine_options) -> FerModel:
    """Load an ONNX model (ONNX Runtime or OpenVINO), a TensorRT engine, or a model on a Triton server
    (`triton://host:port/model`); file and contract are checked before it is returned.

    threads: intra-op threads (None = the backend's default; a Triton server sets its own).
    providers: ONNX Runtime execution providers.
    backend: None picks from the file (.onnx: 'onnxruntime'; .engine: 'tensorrt'); 'openvino' runs an .onnx on OpenVINO.
    engine_options: for the TensorRT backend (e.g. cuda_graph=True) or the Triton client (e.g. timeout_s=5).
    """
    if isinstance(source, str) and source.split("://", 1)[0] in TRITON_SCHEMES:
        if providers or backend not in (None, "triton"):     # threads: FerPipeline passes its own; the server decides
            raise ModelLoadError(f"{source}: providers and backend choose how a local file runs; a Triton model "
                                 "runs on its server, so drop them (options: timeout_s, model_version, max_batch)")
        from fer_edge.runtime.triton_backend import load_triton
        return FerModel(*load_triton(source, **engine_options))     # (source, contract, backend, sidecar)
    path = Path(source)
    _check_artifact_file(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ModelLoadError(f"{path}: unknown artifact type {path.suffix.lower()!r}; fer-edge loads "
                             f"{', '.join(LOADERS)} files (ONNX, or a TensorRT engine built by fer-export --engine)")
    return loader(path, threads, providers, backend, engine_options)
