"""ONNX Runtime: `ort_session`, the one place fer-edge opens a session, and the FerModel backend that owns one."""
from __future__ import annotations

import os
from typing import List, Optional, Union

import numpy as np

from fer_edge.runtime.contract import METADATA_KEY, ModelContract, shape_problems
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError


def ort_session(model: Union[os.PathLike, str, bytes], threads: Optional[int] = None,
                providers: Optional[List[str]] = None, spin_wait: Optional[bool] = None):
    """An onnxruntime.InferenceSession for a model file or its bytes, with fer-edge's one policy.

    threads: intra-op threads (None: one per core); inter-op 1, as the default sequential executor uses no more.
    providers: default CPU; ones this onnxruntime build lacks are refused, not skipped.
    spin_wait: None keeps ONNX Runtime's default (idle intra-op threads spin-wait); False turns it off.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3          # errors only: fer-edge raises its own, naming the fix
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if spin_wait is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    providers = providers or ["CPUExecutionProvider"]
    _check_providers(providers, ort.get_available_providers())
    in_memory = isinstance(model, bytes)
    try:
        return ort.InferenceSession(model if in_memory else str(model), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for bad files
        source = f"ONNX model in memory ({len(model)} bytes)" if in_memory else str(model)
        raise ModelLoadError(f"{source}: ONNX Runtime cannot load it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]}). Is it a complete .onnx file? "
                             "Re-export it with fer-export.") from None


def _check_providers(providers: List[str], available: List[str]) -> None:
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise BackendUnavailableError(f"ONNX Runtime providers {unknown} are not available in this onnxruntime build "
                                      f"(available: {available}). Pass providers from that list, or install the "
                                      "build that has them (e.g. onnxruntime-gpu for CUDAExecutionProvider).")


# ONNX Runtime's name of the input type each contract dtype needs.
ONNX_INPUT_TYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}


def check_graph_contract(contract: ModelContract, source: str, input_type: str, expected_input_type: Optional[str],
                         input_shape, output_shape) -> None:
    """The one contract-vs-graph check of the .onnx backends (ONNX Runtime, OpenVINO; each names types its way)."""
    problems = shape_problems(contract, input_shape, output_shape, "graph")
    if input_type != expected_input_type:
        problems.insert(0, f"the graph input is {input_type} but the contract's preprocessing produces {contract.dtype}")
    if problems:
        raise ContractError(f"{source}: the contract does not fit the graph: {'; '.join(problems)}. The contract "
                            "(sidecar or embedded metadata) belongs to another model, or the model was edited "
                            "after export; re-export it with fer-export, which writes a matching contract.")


class OnnxRuntimeBackend:
    name = "onnxruntime"
    max_batch: Optional[int] = None         # ONNX Runtime takes any batch size

    def __init__(self, path: os.PathLike, threads: Optional[int] = None, providers: Optional[List[str]] = None):
        self.session = ort_session(path, threads, providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError(f"{path}: expected one input and at least one output, found "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_shape = inputs[0].shape
        self.input_type = inputs[0].type
        # [] or None when ONNX Runtime cannot infer it; FerModel then checks the width on every call.
        self.output_shape = outputs[0].shape or []

    def embedded_contract(self, source: str) -> Optional[ModelContract]:
        meta = self.session.get_modelmeta().custom_metadata_map
        text = meta.get(METADATA_KEY)
        if text is None:
            return None
        return ModelContract.from_json(text, source=f"{source} (metadata_props)")

    def check_contract(self, contract: ModelContract, source: str) -> None:
        """Refuse a contract the graph contradicts: input type and shape, and output width when it is static."""
        check_graph_contract(contract, source, self.input_type, ONNX_INPUT_TYPES[contract.dtype], self.input_shape,
                             self.output_shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None     # the last reference: ONNX Runtime frees the model and its thread pool
