"""ONNX Runtime backend: a thin wrapper that owns one InferenceSession."""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from fer_edge.runtime.contract import METADATA_KEY, ModelContract
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError


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
        self.input_type = inputs[0].type
        self.output_shape = outputs[0].shape or []
        # None when the graph leaves the class axis symbolic; FerModel then checks the width on every call.
        width = self.output_shape[-1] if self.output_shape else None
        self.output_width: Optional[int] = width if isinstance(width, int) else None
        self.providers = self.session.get_providers()
        self.threads = threads

    def embedded_contract(self, source: str) -> Optional[ModelContract]:
        meta = self.session.get_modelmeta().custom_metadata_map
        text = meta.get(METADATA_KEY)
        if text is None:
            return None
        return ModelContract.from_json(text, source=f"{source} (metadata_props)")

    def check_contract(self, contract: ModelContract, source: str) -> None:
        """Refuse a contract the graph contradicts: input type and shape, and output width when it is static."""
        problems = self._input_problems(contract) + self._output_problems(contract)
        if problems:
            raise ContractError(f"{source}: the contract does not fit the graph: {'; '.join(problems)}. The contract "
                                "(sidecar or embedded metadata) belongs to another model, or the model was edited "
                                "after export; re-export it with fer-export, which writes a matching contract.")

    def _input_problems(self, contract: ModelContract) -> List[str]:
        problems = []
        if self.input_type != "tensor(float)":
            problems.append(f"the graph input is {self.input_type} but the contract's preprocessing produces "
                            f"{contract.dtype}")
        static = [d for d in self.input_shape[1:] if isinstance(d, int)]
        want = [contract.channels, contract.input_size, contract.input_size]
        if len(self.input_shape) != 4 or (len(static) == 3 and static != want):
            problems.append(f"the graph input is {self.input_shape} but the contract says "
                            f"N x {want[0]} x {want[1]} x {want[2]}")
        return problems

    def _output_problems(self, contract: ModelContract) -> List[str]:
        if self.output_shape and len(self.output_shape) != 2:   # [] or None: rank unknown, checked per call
            return [f"the graph output is {self.output_shape} but fer-edge needs N x classes "
                    f"(N x {contract.num_classes})"]
        if self.output_width is not None and self.output_width != contract.num_classes:
            return [f"the graph outputs {self.output_width} classes but the contract lists "
                    f"{contract.num_classes} labels {contract.labels}"]
        return []

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]
