"""TensorRT engine backend for FerModel: tensor-name API, pinned buffers, one stream, optional CUDA graphs.

Threading: one backend owns its execution contexts, stream and buffers, so `run` and `timed_run` hold a lock:
calls from several threads are serialised (safe, not parallel), and each call makes the backend's GPU current on
the calling thread. Load one model per thread for parallelism.

Per call: copy the faces into the pinned input buffer (cast to the engine's input dtype), H2D, enqueue (or launch
the CUDA graph captured for this batch size on its own execution context), D2H, wait. With zero-copy I/O (default
on integrated GPUs such as Jetson) the engine reads and writes the mapped pinned buffers directly: no H2D/D2H.
CUDA events between the stages give `timed_run` trtexec's H2D / GPU Compute / D2H times.
"""
from __future__ import annotations

import os
import platform
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from fer_edge.runtime.contract import ModelContract, shape_problems
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError
from fer_edge.runtime.tensorrt.cuda_buffers import (CudaError, IoBuffers, TensorSpec, batch_range, input_shape,
                                                    load_cuda_api, nbytes)
from fer_edge.runtime.tensorrt.engine_compat import RuntimeTarget, check_compatibility, rebuild_command, verify_engine_file
from fer_edge.runtime.tensorrt.gpu_info import nvml_snapshot
from fer_edge.runtime.tensorrt.trt_import import FLAVOURS, TrtFlavour, import_first, import_flavour, make_logger

# numpy has no bfloat16, so BF16 engine I/O is refused like any other unlisted type.
TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
              "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype(trt_dtype) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    dtype = TRT_DTYPES.get(name)
    if dtype is None:
        raise ContractError(f"engine tensor dtype {name} has no numpy equivalent; export with FP32 or FP16 I/O")
    return np.dtype(dtype)


def pick_runtime_flavour(sidecar: Dict[str, Any], requested: Optional[str]) -> TrtFlavour:
    """The module that can run this engine: the one that built it (tensorrt_lean for version-compatible plans)."""
    if requested:
        return import_flavour(requested)
    engine = (sidecar or {}).get("engine") or {}
    built = engine.get("flavour")
    if built == "tensorrt" and engine.get("version_compatible"):
        return import_first(("tensorrt", "tensorrt_lean"), "running a version-compatible engine")
    if built in ("tensorrt", "tensorrt_rtx"):
        return import_flavour(built)
    return import_first(FLAVOURS, "running engines")


@dataclass
class CapturedGraph:
    """A CUDA graph and the execution context it was captured from (used for nothing else)."""
    context: Any
    graph: Any
    graph_exec: Any
    launched: bool = False


class TensorRTBackend:
    """Runs a serialized engine; see the module docstring for the threading and timing model."""

    def __init__(self, path: Path, contract: ModelContract, sidecar: Dict[str, Any], cuda: str = "cuda-python",
                 cuda_graph=None, spin_wait: bool = False, device: int = 0, flavour: Optional[str] = None,
                 zero_copy: Optional[bool] = None):
        verify_engine_file(path, sidecar)                       # size/sha: no TensorRT needed
        self.flavour = pick_runtime_flavour(sidecar, flavour)
        self.name = self.flavour.name
        # Flavour/version/platform first: these need no GPU, so a wrong engine fails fast everywhere.
        check_compatibility(path, sidecar, RuntimeTarget(self.flavour.name, self.flavour.version))
        self.api = load_cuda_api(cuda, device)                  # raises when there is no GPU
        self.gpu = self.api.gpu_identity()
        check_compatibility(path, sidecar, RuntimeTarget(self.flavour.name, self.flavour.version,
                                                         self.gpu["compute_capability"], self.gpu["gpu_name"],
                                                         platform.machine()))
        self.engine = self._deserialize(path, sidecar)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelLoadError(f"{path}: TensorRT could not create an execution context: not enough free GPU "
                                 f"memory for its activations ({'; '.join(self._logger.errors[-2:]) or 'no log'}). "
                                 "Free GPU memory (other processes, the camera pipeline) or rebuild the engine with "
                                 f"a smaller batch profile: {rebuild_command(path, sidecar)}")
        self.specs = self._tensor_specs(self.flavour.module)
        self._check_contract(contract, path)
        self.input_spec = next(s for s in self.specs if s.is_input)
        self.output_spec = next(s for s in self.specs if not s.is_input)
        self.input_name, self.output_name = self.input_spec.name, self.output_spec.name
        self.min_batch, self.max_batch = batch_range(self.input_spec)
        self.graph_batches = self._graph_batches(cuda_graph)   # each captured on first use, on its own context
        self.zero_copy, zero_copy_choice = self._pick_zero_copy(zero_copy)
        self.buffers = IoBuffers(self.api, self.specs, self.max_batch, self.zero_copy)
        self._bind(self.context)                                 # fixed addresses: required for CUDA graphs
        self.stream = self.api.stream_create()
        self.spin_wait = spin_wait
        self._events = [self.api.event_create(blocking=not spin_wait) for _ in range(4)]
        self._lock = threading.Lock()
        self._shape: Optional[tuple] = None                      # the shared context's input shape
        self._graphs: Dict[int, CapturedGraph] = {}
        self.bench_settings = self._settings(sidecar, zero_copy_choice)

    def _bind(self, context, shape: Optional[tuple] = None) -> None:
        for spec in self.specs:
            context.set_tensor_address(spec.name, self.buffers.device[spec.name])
        if shape is not None and self.input_spec.dynamic and not context.set_input_shape(self.input_name, shape):
            raise ContractError(f"TensorRT refused input shape {shape}")

    def _graph_batches(self, cuda_graph) -> List[int]:
        """cuda_graph: None/True = a graph at the smallest batch (1 for the usual profiles), False = none, or a list
        of batch sizes within the profile."""
        if cuda_graph is None or cuda_graph is True:
            return [self.min_batch]
        if cuda_graph is False:
            return []
        batches = list(cuda_graph) if isinstance(cuda_graph, (list, tuple, set)) else []
        if batches and all(isinstance(b, int) and not isinstance(b, bool) for b in batches):
            if all(self.min_batch <= b <= self.max_batch for b in batches):
                return sorted(set(batches))
        raise ModelLoadError(f"cuda_graph={cuda_graph!r}: pass True (a graph at batch {self.min_batch}), False, or "
                             f"a list of batch sizes within the engine's profile [{self.min_batch}, {self.max_batch}]")

    def _pick_zero_copy(self, zero_copy: Optional[bool]):
        """Zero-copy I/O: auto (None) on integrated GPUs (Jetson), where pinned host memory is the GPU's memory."""
        if zero_copy not in (None, True, False):
            raise ModelLoadError(f"zero_copy={zero_copy!r}: pass True, False, or None (auto: on for integrated GPUs)")
        integrated, can_map = self.api.maps_host_memory()
        if zero_copy and not can_map:
            raise BackendUnavailableError(f"zero_copy=True: {self.gpu['gpu_name']} cannot map pinned host memory "
                                          "into its address space; leave zero_copy unset (copies H2D/D2H)")
        if zero_copy is not None:
            return zero_copy, "requested"
        return integrated and can_map, "auto: " + ("integrated GPU" if integrated else "discrete GPU, copies")

    def _deserialize(self, path: Path, sidecar: Dict[str, Any]):
        plan = Path(path).read_bytes()
        self._logger = make_logger(self.flavour.module)
        self._runtime = self.flavour.module.Runtime(self._logger)
        if (sidecar.get("engine") or {}).get("version_compatible") and hasattr(self._runtime, "engine_host_code_allowed"):
            # VC plans embed the lean runtime (host code); the sha256 check above ties the file to our own build.
            self._runtime.engine_host_code_allowed = True
        if hasattr(self._runtime, "get_engine_validity"):       # TensorRT-RTX checks the header before loading
            validity = self._runtime.get_engine_validity(plan)
            status = validity[0] if isinstance(validity, tuple) else validity
            if getattr(status, "name", "VALID") == "INVALID":
                raise ModelLoadError(f"{path}: TensorRT-RTX reports this engine invalid for this GPU/driver "
                                     f"({self.gpu['gpu_name']}, CC {self.gpu['compute_capability']}). Rebuild it: "
                                     f"{rebuild_command(path, sidecar)}")
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelLoadError(f"{path}: TensorRT could not deserialise the engine ({'; '.join(self._logger.errors[-2:])}). "
                                 f"Rebuild it: {rebuild_command(path, sidecar)}")
        return engine

    def _tensor_specs(self, trt) -> List[TensorSpec]:
        specs = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            profile = None
            if is_input and any(d < 0 for d in shape):
                profile = tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(name, 0))
            specs.append(TensorSpec(name, is_input, numpy_dtype(self.engine.get_tensor_dtype(name)), shape, profile))
        return specs

    def _check_contract(self, contract: ModelContract, path) -> None:
        inputs = [s for s in self.specs if s.is_input]
        outputs = [s for s in self.specs if not s.is_input]
        if len(inputs) != 1 or not outputs:
            raise ModelLoadError(f"{path}: expected one input and at least one output, found "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs")
        problems = shape_problems(contract, inputs[0].shape, outputs[0].shape, "engine")
        if problems:
            raise ContractError(f"{path}: {'; '.join(problems)}; the sidecar does not belong to this engine. Rebuild "
                                "the engine and its sidecar from the matching ONNX with "
                                "`fer-export --engine --onnx MODEL.onnx`.")

    def _settings(self, sidecar, zero_copy_choice: str) -> Dict[str, Any]:
        io = "zero-copy (mapped pinned host memory)" if self.zero_copy else "pinned host buffers + H2D/D2H copies"
        settings = {"backend": self.name, "tensorrt_version": self.flavour.version, "cuda_api": self.api.name,
                    "cuda_graph": bool(self.graph_batches), "cuda_graph_batches": list(self.graph_batches),
                    "zero_copy": self.zero_copy, "io": f"{io}; {zero_copy_choice}",
                    "data_transfers": not self.zero_copy,
                    "spin_wait": self.spin_wait, "sync_mode": "spin" if self.spin_wait else "blocking",
                    "engine_batch_range": [self.min_batch, self.max_batch], **self.gpu}
        settings.update(nvml_snapshot(self.api.device))          # clocks/power when pynvml is installed
        built = (sidecar.get("engine") or {})
        settings["engine_built_with"] = f"{built.get('flavour')} {built.get('version')}"
        return settings

    def _prepare(self, batch: np.ndarray):
        if batch.ndim != 4:
            raise ContractError(f"expected an NCHW batch, got shape {batch.shape}")
        n = int(batch.shape[0])
        shape = input_shape(self.input_spec, n, self.min_batch, self.max_batch)
        if tuple(batch.shape[1:]) != shape[1:]:
            raise ContractError(f"batch shape {batch.shape} does not match the engine input {shape}")
        host = self.buffers.host[self.input_name]
        np.copyto(host[:n], batch, casting="same_kind" if host.dtype.kind == "f" else "unsafe")
        return n, shape

    def _enqueue(self, n: int, shape: tuple) -> None:
        """Launch the CUDA graph of this batch size (captured on first use), else enqueue on the shared context."""
        graph = (self._graphs.get(n) or self._capture(n, shape)) if n in self.graph_batches else None
        if graph is not None:
            try:
                self.api.graph_launch(graph.graph_exec, self.stream)
                graph.launched = True
                return
            except CudaError as exc:
                if graph.launched:
                    raise
                self._drop_graph(n, f"its first launch failed ({exc})")
        if shape != self._shape:
            if self.input_spec.dynamic and not self.context.set_input_shape(self.input_name, shape):
                raise ContractError(f"TensorRT refused input shape {shape}")
            self._shape = shape
        if not self.context.execute_async_v3(self.api.stream_handle(self.stream)):
            raise ModelLoadError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _capture(self, n: int, shape: tuple) -> Optional[CapturedGraph]:
        """Capture execute_async_v3 at batch n on an execution context of its own. TensorRT ties a graph to the
        shapes and state of the context it was captured from, so the shared context (whose shape changes) never
        replays one. One warm-up enqueue flushes the shape change before capture, as TensorRT requires."""
        context, handle = self.engine.create_execution_context(), self.api.stream_handle(self.stream)
        if context is None:
            return self._drop_graph(n, "not enough GPU memory for its own execution context")
        self._bind(context, shape)
        if hasattr(context, "is_stream_capturable") and not context.is_stream_capturable(handle):
            return self._drop_graph(n, "TensorRT-RTX reports the engine is not stream-capturable (capture needs an "
                                       "engine built with REQUIRE_USER_ALLOCATION)")
        if not context.execute_async_v3(handle):
            raise ModelLoadError("TensorRT execute_async_v3 failed during CUDA-graph warm-up")
        self.api.stream_sync(self.stream)
        try:
            self.api.capture_begin(self.stream)
            if not context.execute_async_v3(handle):
                self.api.capture_abort(self.stream)
                return self._drop_graph(n, "TensorRT could not enqueue under stream capture (not stream-capturable)")
            graph, graph_exec = self.api.capture_end(self.stream)
        except CudaError as exc:  # TensorRT enqueued, but CUDA invalidated the capture or cannot instantiate it
            return self._drop_graph(n, f"CUDA rejected the capture ({exc})")
        self._graphs[n] = CapturedGraph(context, graph, graph_exec)
        return self._graphs[n]

    def _drop_graph(self, n: int, why: str) -> None:
        """Run batch n with plain enqueues from now on: one warning, recorded in bench_settings."""
        self.graph_batches.remove(n)
        graph = self._graphs.pop(n, None)
        if graph is not None:
            try:
                self.api.graph_free(graph.graph, graph.graph_exec)
            except CudaError:  # already failing; the plain path must still run
                pass
        warnings.warn(f"CUDA graph at batch {n} disabled: {why}; running plain execute_async_v3 instead")
        self.bench_settings.update(cuda_graph=bool(self.graph_batches), cuda_graph_batches=list(self.graph_batches))
        self.bench_settings.setdefault("cuda_graph_notes", []).append(f"batch {n}: {why}")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Copy in, H2D, enqueue, D2H, wait; CUDA events mark the stage boundaries. Call with the lock held."""
        api, ev, buffers, copies = self.api, self._events, self.buffers, not self.zero_copy
        api.use_device()                                         # the current device is per thread
        n, shape = self._prepare(batch)
        out_shape = (n,) + tuple(self.output_spec.shape[1:])
        in_bytes, out_bytes = nbytes(shape, self.input_spec.dtype), nbytes(out_shape, self.output_spec.dtype)
        api.event_record(ev[0], self.stream)
        if copies:
            api.h2d_async(buffers.device[self.input_name], buffers.host_ptr[self.input_name], in_bytes, self.stream)
        api.event_record(ev[1], self.stream)
        self._enqueue(n, shape)
        api.event_record(ev[2], self.stream)
        if copies:
            api.d2h_async(buffers.host_ptr[self.output_name], buffers.device[self.output_name], out_bytes, self.stream)
        api.event_record(ev[3], self.stream)
        api.event_wait(ev[3], self.spin_wait)
        return np.array(buffers.host[self.output_name][:n].reshape(out_shape), dtype=np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch (within the profile) -> float32 logits."""
        with self._lock:
            return self._infer(batch)

    def timed_run(self, batch: np.ndarray) -> Dict[str, float]:
        """One inference, returning trtexec-named stage times in ms (CUDA events; 'inference' is host wall time)."""
        with self._lock:
            start = time.perf_counter()
            self._infer(batch)
            wall = (time.perf_counter() - start) * 1e3
            h2d, compute, d2h = (self.api.event_elapsed_ms(a, b) for a, b in zip(self._events, self._events[1:]))
        return {"h2d": h2d, "gpu_compute": compute, "d2h": d2h, "host_latency": h2d + compute + d2h, "inference": wall}

    def close(self) -> None:
        with self._lock:
            self.api.use_device()
            for graph in self._graphs.values():
                self.api.graph_free(graph.graph, graph.graph_exec)
            self._graphs.clear()
            self.buffers.free()


def load_engine_backend(path: os.PathLike, contract: ModelContract, sidecar: Optional[Dict[str, Any]],
                        **engine_options) -> TensorRTBackend:
    """fer_edge.runtime.load() for engines. engine_options: cuda ("cuda-python"), cuda_graph (None/True: a graph at
    the smallest batch when capturable; False; or a list of batch sizes, each on its own execution context),
    spin_wait (False: blocking sync), device (GPU index), flavour (force a module), zero_copy (None: on for
    integrated GPUs such as Jetson; True/False force it)."""
    allowed = {"cuda", "cuda_graph", "spin_wait", "device", "flavour", "zero_copy"}
    unknown = sorted(set(engine_options) - allowed)
    if unknown:
        raise ModelLoadError(f"unknown engine option(s) {unknown}; supported: {sorted(allowed)}")
    return TensorRTBackend(Path(path), contract, sidecar or {}, **engine_options)
