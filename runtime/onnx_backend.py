"""ONNX Runtime backend: a thin wrapper that owns one InferenceSession."""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from .contract import METADATA_KEY, ModelContract
from .errors import BackendUnavailableError, ContractError, ModelLoadError


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: os.PathLike, threads: Optional[int] = None, providers: Optional[List[str]] = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        providers = providers or ["CPUExecutionProvider"]
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise BackendUnavailableError(f"ONNX Runtime providers {unknown} are not available here (available: {available})")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load this file ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}). Is it a complete .onnx file? "
                                 "Re-export it with fer-export.") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError(f"{path}: expected one input and at least one output, found "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_shape = inputs[0].shape
        self.providers = self.session.get_providers()
        self.threads = threads

    def embedded_contract(self, source: str) -> Optional[ModelContract]:
        meta = self.session.get_modelmeta().custom_metadata_map
        text = meta.get(METADATA_KEY)
        if text is None:
            return None
        return ModelContract.from_json(text, source=f"{source} (metadata_props)")

    def check_contract(self, contract: ModelContract, source: str) -> None:
        static = [d for d in self.input_shape[1:] if isinstance(d, int)]
        want = [contract.channels, contract.input_size, contract.input_size]
        if len(self.input_shape) != 4 or (len(static) == 3 and static != want):
            raise ContractError(f"{source}: the graph input is {self.input_shape} but the contract says "
                                f"N x {want[0]} x {want[1]} x {want[2]}; the contract does not belong to this model")

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]
