"""OpenVINO: the FerModel backend that runs an .onnx on the CPU with OpenVINO (the `openvino` extra).

Precision: OpenVINO's CPU plugin runs float layers in bfloat16 by default on CPUs that have it, so every model is
compiled with INFERENCE_PRECISION_HINT f32. FP32 and FP16 artifacts then compute in f32; an INT8 Q/DQ artifact
runs its quantized layers on INT8 kernels (OpenVINO turns the Q/DQ pairs into int8 convolutions) and the rest in
f32, as the INT8 accuracy gate measured it. `check_contract` reads the kernels OpenVINO really picked (the
runtime model's per-layer runtimePrecision) and refuses what the contract does not say: a bf16/f16 layer, an
int8 layer in a float artifact, or an INT8 artifact without INT8 kernels. Tested with OpenVINO 2024.0 to 2026.4.

Threading: one backend owns ONE compiled model and one infer request per batch size seen, and `run` holds a lock:
calls from several threads are serialised (safe, not parallel), as with the TensorRT backend. Load one model per
thread for parallelism.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Dict, List, Optional, Union

import numpy as np

from fer_edge.runtime.contract import METADATA_KEY, ModelContract
from fer_edge.runtime.errors import BackendUnavailableError, ModelLoadError
from fer_edge.runtime.onnx_backend import check_graph_contract

INSTALL_HINT = "pip install 'fer-edge[openvino]'"
DEVICE = "CPU"
STATIC_BATCHES = 8      # batch sizes compiled with a static shape on first use (see OpenVinoBackend.__init__)
# Layers whose kernels decide the arithmetic: OpenVINO fuses activations, BatchNorm and Q/DQ scales into them.
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INT8_PRECISIONS = ("i8", "u8")
LOW_FLOAT_PRECISIONS = ("bf16", "f16")
# Layers that carry data, not arithmetic (weights, graph I/O, views): their precision is the tensor's type.
DATA_LAYERS = ("Const", "Input", "Output", "Parameter", "Result", "Reshape", "Reorder")
# OpenVINO's name of the input type each contract dtype needs.
OPENVINO_INPUT_TYPES = {"float32": "f32", "uint8": "u8"}


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"backend 'openvino' needs OpenVINO, which is not installed: {INSTALL_HINT} "
                                      "(or load the .onnx with the default backend, ONNX Runtime)") from exc
    return openvino


def compile_config(ov, threads: Optional[int]) -> Dict:
    """fer-edge's one OpenVINO CPU policy: f32 for every float layer (never a silent bf16), one stream tuned for
    latency, `threads` inference threads (None: OpenVINO's default)."""
    hint, props = ov.properties.hint, ov.properties
    config = {hint.inference_precision: ov.Type.f32, hint.performance_mode: hint.PerformanceMode.LATENCY,
              props.num_streams: 1}
    if threads:
        config[props.inference_num_threads] = int(threads)
    return config


def executed_kernels(compiled) -> Dict[str, Dict[str, int]]:
    """Layer type -> runtime precision -> layer count, from the execution graph OpenVINO compiled (what runs)."""
    kernels: Dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        kernels.setdefault(layer, Counter())[info["runtimePrecision"].astype(str)] += 1
    return {layer: dict(sorted(counts.items())) for layer, counts in sorted(kernels.items())}


def precision_problems(precision: Optional[str], kernels: Dict[str, Dict[str, int]], hint: str) -> List[str]:
    """How the compiled kernels contradict a contract's precision ([] when they fit); None: only no bf16/f16."""
    problems = []
    if hint != "f32":
        problems.append(f"INFERENCE_PRECISION_HINT is {hint}, not f32")
    arithmetic = {layer: counts for layer, counts in kernels.items() if layer not in DATA_LAYERS}
    low = {layer: p for layer, counts in arithmetic.items() for p in counts if p in LOW_FLOAT_PRECISIONS}
    if low:
        problems.append(f"layers run in reduced float precision {low}")
    compute = Counter()
    for layer in COMPUTE_LAYERS:
        compute.update(kernels.get(layer, {}))
    int8 = sum(compute[p] for p in INT8_PRECISIONS)
    if precision == "int8" and not int8:
        problems.append(f"the contract says int8 but no convolution or matmul runs on INT8 kernels ({dict(compute)}); "
                        "OpenVINO did not recognise the Q/DQ pairs or this CPU has no INT8 support")
    if precision not in (None, "int8") and int8:
        problems.append(f"the contract says {precision} but {int8} convolution/matmul layers run on INT8 kernels")
    return problems


def _dims(partial_shape) -> list:
    """OpenVINO PartialShape -> [ints and '?'] ([] for an unknown rank), as shape_problems reads dims."""
    if partial_shape.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else "?" for d in partial_shape]


class OpenVinoBackend:
    """Runs an ONNX file (or its bytes) on OpenVINO's CPU plugin; see the module docstring for precision and threads."""
    name = "openvino"
    max_batch: Optional[int] = None         # the input batch axis stays dynamic: any batch size

    def __init__(self, model: Union[os.PathLike, str, bytes], threads: Optional[int] = None):
        ov = import_openvino()
        in_memory = isinstance(model, bytes)
        self.source = f"ONNX model in memory ({len(model)} bytes)" if in_memory else str(model)
        core = ov.Core()
        try:
            graph = core.read_model(model if in_memory else str(model))
        except Exception as exc:  # OpenVINO raises RuntimeError with a C++ trace for bad files
            raise ModelLoadError(f"{self.source}: OpenVINO cannot read it ({type(exc).__name__}: "
                                 f"{_last_line(exc)}). Is it a complete .onnx file? Re-export it with "
                                 "fer-export.") from None
        if len(graph.inputs) != 1 or len(graph.outputs) < 1:
            raise ModelLoadError(f"{self.source}: expected one input and at least one output, found "
                                 f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs")
        # The ONNX frontend keeps metadata_props under rt_info["framework"].
        key = ["framework", METADATA_KEY]
        self._metadata = graph.get_rt_info(key).astype(str) if graph.has_rt_info(key) else None
        self.input_shape = _dims(graph.inputs[0].get_partial_shape())
        self.input_type = graph.inputs[0].get_element_type().get_type_name()
        self.output_shape = _dims(graph.outputs[0].get_partial_shape())
        try:
            self.compiled = core.compile_model(graph, DEVICE, compile_config(ov, threads))
        except Exception as exc:
            raise ModelLoadError(f"{self.source}: OpenVINO cannot compile it for the {DEVICE} "
                                 f"({type(exc).__name__}: {_last_line(exc)}). Load it with backend='onnxruntime', "
                                 "or re-export it with fer-export.") from None
        self.kernels = executed_kernels(self.compiled)
        self.inference_precision = self.compiled.get_property(ov.properties.hint.inference_precision).get_type_name()
        # Batch sizes up to STATIC_BATCHES get their own static-shape compilation, made on first use: the
        # dynamic-batch model re-prepares its kernels whenever the batch size changes. With 1-, 4- and 8-face
        # batches alternating (a camera's frames) the 64 px INT8 b0 took 2.81 ms at batch 1 instead of 1.34 ms
        # (2-core Xeon, 1 thread). Larger batches (evaluation, benchmarks) run on the dynamic model.
        self._core, self._graph, self._config = core, graph, compile_config(ov, threads)
        self._requests: Optional[Dict[int, object]] = {}
        self._lock = threading.Lock()
        self.bench_settings = {"openvino": ov.get_version(), "device": DEVICE,
                               "inference_precision": self.inference_precision,
                               "threads": self.compiled.get_property(ov.properties.inference_num_threads),
                               "streams": self.compiled.get_property(ov.properties.num_streams),
                               "cpu_pinning": self.compiled.get_property(ov.properties.hint.enable_cpu_pinning),
                               "kernels": {layer: self.kernels[layer] for layer in COMPUTE_LAYERS
                                           if layer in self.kernels}}

    def embedded_contract(self, source: str) -> Optional[ModelContract]:
        if self._metadata is None:
            return None
        return ModelContract.from_json(self._metadata, source=f"{source} (metadata_props)")

    def check_precision(self, precision: Optional[str], source: str) -> None:
        """Refuse kernels that contradict `precision` (fp32, fp16, int8; None: any, but no bf16/f16): what OpenVINO
        compiled, not the hint."""
        problems = precision_problems(precision, self.kernels, self.inference_precision)
        if problems:
            raise BackendUnavailableError(
                f"{source}: OpenVINO compiled it for other arithmetic than {precision or 'float32'} asks: "
                f"{'; '.join(problems)}. Run it with backend='onnxruntime', or report the OpenVINO version "
                f"({self.bench_settings['openvino']}) and CPU to fer-edge.")

    def check_contract(self, contract: ModelContract, source: str) -> None:
        """Refuse a contract the graph contradicts (input type and shape, static output width) or whose precision
        the compiled kernels do not run."""
        check_graph_contract(contract, source, self.input_type, OPENVINO_INPUT_TYPES.get(contract.dtype),
                             self.input_shape, self.output_shape)
        self.check_precision(contract.precision, source)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        with self._lock:
            if self._requests is None:
                raise ModelLoadError(f"{self.source}: this OpenVINO backend was closed; load the model again")
            request = self._requests.get(batch.shape[0])
            if request is None:
                request = self._new_request(batch.shape[0])
            # share_inputs: no copy of the batch (the call is synchronous); outputs are copied out of the request.
            return request.infer({0: batch}, share_inputs=True)[0]

    def _new_request(self, size: int):
        compiled = self.compiled
        if size <= STATIC_BATCHES and all(isinstance(d, int) for d in self.input_shape[1:]):
            graph = self._graph.clone()
            graph.reshape({graph.inputs[0]: [size, *self.input_shape[1:]]})
            compiled = self._core.compile_model(graph, DEVICE, self._config)   # same precision hint: same kernels
        self._requests[size] = compiled.create_infer_request()
        return self._requests[size]

    def close(self) -> None:
        with self._lock:
            self._requests = None   # the last references: OpenVINO frees the requests, the models and their threads
            self.compiled = self._graph = self._core = None


def _last_line(exc: Exception) -> str:
    """OpenVINO prefixes its message with C++ source locations; keep the last non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:200]
