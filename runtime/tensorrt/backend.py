"""TensorRT engine backend for FerModel: tensor-name API, pinned buffers, one stream, optional CUDA graph.

Threading model: one backend owns ONE execution context, ONE stream and ONE set of buffers, so `run`
and `timed_run` hold a lock and calls from several threads are serialised (safe, not parallel). For
parallel inference load one model per thread (each gets its own context, stream and buffers).

Per call: copy the faces into the pinned input buffer (cast to the engine's input dtype), H2D on the
stream, enqueue (or launch the captured CUDA graph), D2H, wait on an event. CUDA events around each
stage give trtexec's H2D / GPU Compute / D2H times for `timed_run`.
"""
from __future__ import annotations

import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.tensorrt.cuda_buffers import IoBuffers, TensorSpec, batch_range, input_shape, load_cuda_api, nbytes
from fer_edge.runtime.tensorrt.engine_compat import RuntimeTarget, check_compatibility, rebuild_command, verify_engine_file
from fer_edge.runtime.errors import ContractError, ModelLoadError
from fer_edge.runtime.tensorrt.trt_import import RUNTIME_ORDER, TrtFlavour, import_first, import_flavour, make_logger

TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
              "BOOL": np.bool_, "UINT8": np.uint8, "BF16": None}


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
    built = ((sidecar or {}).get("engine") or {}).get("flavour")
    if built == "tensorrt_rtx":
        return import_flavour("tensorrt_rtx")
    if built == "tensorrt" and (sidecar.get("engine") or {}).get("version_compatible"):
        return import_first(("tensorrt", "tensorrt_lean"), "running a version-compatible engine")
    if built == "tensorrt":
        return import_flavour("tensorrt")
    return import_first(RUNTIME_ORDER, "running engines")


class TensorRTBackend:
    """Runs a serialized engine; see the module docstring for the threading and timing model."""

    def __init__(self, path: Path, contract: ModelContract, sidecar: Dict[str, Any], cuda: str = "cuda-python",
                 cuda_graph: Optional[bool] = None, spin_wait: bool = False, device: int = 0,
                 flavour: Optional[str] = None):
        verify_engine_file(path, sidecar)                       # size/sha: no TensorRT needed
        self.flavour = pick_runtime_flavour(sidecar, flavour)
        self.name = self.flavour.name
        # Flavour/version/platform first: these need no GPU, so a wrong engine fails fast everywhere.
        check_compatibility(path, sidecar, RuntimeTarget(self.flavour.name, self.flavour.version))
        self.api = load_cuda_api(cuda, device)                  # raises when there is no GPU
        gpu = self.api.gpu_identity()
        check_compatibility(path, sidecar, RuntimeTarget(self.flavour.name, self.flavour.version,
                                                         gpu["compute_capability"], gpu["gpu_name"],
                                                         platform.machine()))
        trt = self.flavour.module
        plan = Path(path).read_bytes()
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if (sidecar.get("engine") or {}).get("version_compatible") and hasattr(self._runtime, "engine_host_code_allowed"):
            # VC plans embed the lean runtime (host code); the sha256 check above ties the file to our own build.
            self._runtime.engine_host_code_allowed = True
        if hasattr(self._runtime, "get_engine_validity"):       # TensorRT-RTX checks the header before loading
            validity = self._runtime.get_engine_validity(plan)
            status = validity[0] if isinstance(validity, tuple) else validity
            if getattr(status, "name", "VALID") == "INVALID":
                raise ModelLoadError(f"{path}: TensorRT-RTX reports this engine invalid for this GPU/driver "
                                     f"({gpu['gpu_name']}, CC {gpu['compute_capability']}). Rebuild it: "
                                     f"{rebuild_command(path, sidecar)}")
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelLoadError(f"{path}: TensorRT could not deserialise the engine ({'; '.join(self._logger.errors[-2:])}). "
                                 f"Rebuild it: {rebuild_command(path, sidecar)}")
        self.context = self.engine.create_execution_context()
        self.specs = self._tensor_specs(trt)
        self._check_contract(contract, path)
        self.input_name = next(s.name for s in self.specs if s.is_input)
        self.output_name = next(s.name for s in self.specs if not s.is_input)
        self.min_batch, self.max_batch = batch_range(self.specs)
        self.buffers = IoBuffers(self.api, self.specs)
        for spec in self.specs:                                  # fixed addresses: required for CUDA graphs
            self.context.set_tensor_address(spec.name, self.buffers.device[spec.name])
        self.stream = self.api.stream_create()
        self.spin_wait = spin_wait
        self._events = [self.api.event_create(blocking=not spin_wait) for _ in range(4)]
        self._lock = threading.Lock()
        self._shape: Optional[tuple] = None
        self._graphs: Dict[int, tuple] = {}
        self.cuda_graph = self._resolve_graph_option(cuda_graph)
        self.gpu = gpu
        self.bench_settings = self._settings(sidecar)

    # ------------------------------------------------------------ setup helpers
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
        fix = ("the sidecar does not belong to this engine. Rebuild the engine and its sidecar from the matching "
               "ONNX with `fer-export --engine --onnx MODEL.onnx`.")
        want = (contract.channels, contract.input_size, contract.input_size)
        if tuple(inputs[0].shape[1:]) != want:
            raise ContractError(f"{path}: the engine input is {inputs[0].shape} but the contract says N x "
                                f"{want[0]} x {want[1]} x {want[2]}; {fix}")
        width = outputs[0].shape[-1] if outputs[0].shape else -1      # -1: dynamic, checked per call by FerModel
        if width >= 0 and width != contract.num_classes:
            raise ContractError(f"{path}: the engine outputs {width} classes but the contract lists "
                                f"{contract.num_classes} labels {contract.labels}; {fix}")

    def _resolve_graph_option(self, requested: Optional[bool]) -> bool:
        if requested and not self.api.supports_graphs:
            raise ModelLoadError(f"cuda_graph=True needs CUDA stream capture, which cuda={self.api.name!r} does "
                                 "not offer; use cuda='cuda-python' or cuda_graph=False")
        if requested is None:   # default: on for batch-1 latency where capture is possible
            return bool(self.api.supports_graphs)
        return bool(requested)

    def _settings(self, sidecar) -> Dict[str, Any]:
        settings = {"backend": self.name, "tensorrt_version": self.flavour.version, "cuda_api": self.api.name,
                    "cuda_graph": self.cuda_graph, "cuda_graph_batches": "1 (fixed shape)" if self.cuda_graph else "none",
                    "data_transfers": True, "spin_wait": self.spin_wait, "sync_mode": "spin" if self.spin_wait else "blocking",
                    "engine_batch_range": [self.min_batch, self.max_batch], **self.gpu}
        from fer_edge.runtime.tensorrt.gpu_info import nvml_snapshot                     # optional: clocks/power when pynvml is present
        settings.update(nvml_snapshot(self.api.device))
        built = (sidecar.get("engine") or {})
        settings["engine_built_with"] = f"{built.get('flavour')} {built.get('version')}"
        return settings

    # ------------------------------------------------------------ inference
    def _prepare(self, batch: np.ndarray) -> int:
        if batch.ndim != 4:
            raise ContractError(f"expected an NCHW batch, got shape {batch.shape}")
        n = int(batch.shape[0])
        spec = next(s for s in self.specs if s.is_input)
        shape = input_shape(spec, n, self.min_batch, self.max_batch)
        if tuple(batch.shape[1:]) != shape[1:]:
            raise ContractError(f"batch shape {batch.shape} does not match the engine input {shape}")
        if shape != self._shape:
            if spec.dynamic and not self.context.set_input_shape(self.input_name, shape):
                raise ContractError(f"TensorRT refused input shape {shape}")
            self._shape = shape
        host = self.buffers.host[self.input_name]
        np.copyto(host[:n], batch, casting="same_kind" if host.dtype.kind == "f" else "unsafe")
        return n

    def _enqueue(self, n: int) -> None:
        """Run the engine on the stream: the captured graph for this batch size, else a plain enqueue."""
        if self.cuda_graph and n == 1:
            graph = self._graphs.get(n) or self._capture(n)
            if graph is not None:
                self.api.graph_launch(graph[1], self.stream)
                return
        if not self.context.execute_async_v3(self.api.stream_handle(self.stream)):
            raise ModelLoadError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _capture(self, n: int):
        """Capture execute_async_v3 into a CUDA graph (after one warm-up enqueue, as trtexec does)."""
        handle = self.api.stream_handle(self.stream)
        if not self.context.execute_async_v3(handle):
            raise ModelLoadError("TensorRT execute_async_v3 failed during CUDA-graph warm-up")
        self.api.stream_sync(self.stream)
        self.api.capture_begin(self.stream)
        if not self.context.execute_async_v3(handle):
            self.api.capture_abort(self.stream)
            # Not capturable (e.g. data-dependent shapes): say so, record it, and run without a graph.
            warnings.warn("CUDA-graph capture failed (the engine is not stream-capturable); running without a graph")
            self.cuda_graph = False
            self.bench_settings["cuda_graph"] = False
            self.bench_settings["cuda_graph_note"] = "capture failed: the engine is not stream-capturable"
            return None
        self._graphs[n] = self.api.capture_end(self.stream)
        return self._graphs[n]

    def _output(self, n: int) -> np.ndarray:
        out_shape = (n,) + tuple(self.context.get_tensor_shape(self.output_name))[1:]
        return np.array(self.buffers.host[self.output_name][:n].reshape(out_shape), dtype=np.float32)

    def _submit(self, n: int) -> None:
        api, ev = self.api, self._events
        in_bytes = nbytes(self._shape, self.buffers.host[self.input_name].dtype)
        out_spec = next(s for s in self.specs if s.name == self.output_name)
        out_bytes = nbytes((n,) + tuple(self.context.get_tensor_shape(self.output_name))[1:], out_spec.dtype)
        api.event_record(ev[0], self.stream)
        api.h2d_async(self.buffers.device[self.input_name], self.buffers.host_ptr(self.input_name), in_bytes, self.stream)
        api.event_record(ev[1], self.stream)
        self._enqueue(n)
        api.event_record(ev[2], self.stream)
        api.d2h_async(self.buffers.host_ptr(self.output_name), self.buffers.device[self.output_name], out_bytes, self.stream)
        api.event_record(ev[3], self.stream)
        api.event_wait(ev[3], self.spin_wait)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch (within the profile) -> float32 logits."""
        with self._lock:
            n = self._prepare(batch)
            self._submit(n)
            return self._output(n)

    def timed_run(self, batch: np.ndarray) -> Dict[str, float]:
        """One inference, returning trtexec-named stage times in ms (CUDA events; 'inference' is host wall time)."""
        with self._lock:
            start = time.perf_counter()
            n = self._prepare(batch)
            self._submit(n)
            self._output(n)
            wall = (time.perf_counter() - start) * 1e3
            ev = self._events
            h2d = self.api.event_elapsed_ms(ev[0], ev[1])
            compute = self.api.event_elapsed_ms(ev[1], ev[2])
            d2h = self.api.event_elapsed_ms(ev[2], ev[3])
        return {"h2d": h2d, "gpu_compute": compute, "d2h": d2h, "host_latency": h2d + compute + d2h, "inference": wall}

    def close(self) -> None:
        with self._lock:
            for graph, graph_exec in self._graphs.values():
                self.api.graph_free(graph, graph_exec)
            self._graphs.clear()
            self.buffers.free()


def load_engine_backend(path: os.PathLike, contract: ModelContract, sidecar: Optional[Dict[str, Any]],
                        **engine_options) -> TensorRTBackend:
    """Entry point used by fer_edge.runtime.load() for .engine/.plan/.trt files.

    engine_options: cuda ("cuda-python" | "pycuda"), cuda_graph (None = on at batch 1 when capturable),
    spin_wait (False = blocking sync), device (GPU index), flavour (force tensorrt/tensorrt_lean/tensorrt_rtx).
    """
    allowed = {"cuda", "cuda_graph", "spin_wait", "device", "flavour"}
    unknown = sorted(set(engine_options) - allowed)
    if unknown:
        raise ModelLoadError(f"unknown engine option(s) {unknown}; supported: {sorted(allowed)}")
    return TensorRTBackend(Path(path), contract, sidecar or {}, **engine_options)
