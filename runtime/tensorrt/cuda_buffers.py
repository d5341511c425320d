"""CUDA memory, streams, events and graphs for the TensorRT backend, plus the shape logic (no GPU) around them.

The CUDA layer is NVIDIA's cuda-python (`cuda.bindings.runtime`, what its TensorRT samples use), imported only
when an engine is loaded so the runtime imports without it.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from fer_edge.runtime.errors import BackendUnavailableError, ContractError, FerEdgeError

Shape = Tuple[int, ...]


class CudaError(FerEdgeError, RuntimeError):
    """A CUDA runtime call failed."""


# ------------------------------------------------------------------ shape logic (no GPU)
@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: dims use -1 for dynamic; `profile` = (min, opt, max) shapes for inputs."""
    name: str
    is_input: bool
    dtype: np.dtype
    shape: Shape
    profile: Optional[Tuple[Shape, Shape, Shape]] = None

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)


def batch_range(spec: TensorSpec) -> Tuple[int, int]:
    """(min, max) batch the engine's input accepts, from its profile (or its static batch dim)."""
    if spec.shape[0] >= 0:
        return spec.shape[0], spec.shape[0]
    if spec.profile is None:
        raise ContractError(f"input {spec.name!r} has a dynamic batch but no optimisation profile")
    return int(spec.profile[0][0]), int(spec.profile[2][0])


def max_shape(spec: TensorSpec, max_batch: int) -> Shape:
    """Shape to allocate for: the profile max for inputs; for outputs, dynamic dims are the batch."""
    if spec.is_input and spec.profile is not None:
        return tuple(int(d) for d in spec.profile[2])
    if any(d < 0 for d in spec.shape[1:]):
        raise ContractError(f"tensor {spec.name!r} has dynamic non-batch dims {spec.shape}; only the batch may vary")
    return (max_batch,) + tuple(int(d) for d in spec.shape[1:]) if spec.shape[0] < 0 else tuple(spec.shape)


def input_shape(spec: TensorSpec, batch: int, min_batch: int, max_batch: int) -> Shape:
    """Concrete input shape for `batch` faces, refusing batches outside the profile."""
    if not min_batch <= batch <= max_batch:
        raise ContractError(f"batch {batch} is outside the engine's profile [{min_batch}, {max_batch}]; "
                            "split the batch (FerModel.infer does) or rebuild with a wider --batch min:opt:max")
    return (batch,) + tuple(int(d) for d in (spec.profile[2] if spec.profile else spec.shape)[1:])


def nbytes(shape: Shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


# ------------------------------------------------------------------ CUDA layers
class CudaPythonApi:
    """cuda.bindings.runtime: every call returns (err, *values); `_check` turns errors into CudaError."""
    name = "cuda-python"

    def __init__(self, device: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:  # cuda-python < 12.6 layout
                from cuda import cudart  # type: ignore
            except ImportError:
                raise BackendUnavailableError("cuda-python is not installed; the TensorRT backend needs it for GPU "
                                              "memory and streams: pip install 'fer-edge[trt]' (or pip install "
                                              "cuda-python; on JetPack 6 use cuda-python<13).") from None
        self.rt = cudart
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or not count:
            raise BackendUnavailableError(f"no usable CUDA GPU ({self._err_text(err) if err else 'no devices'}). "
                                          "TensorRT engines need an NVIDIA GPU with a working driver; use the "
                                          ".onnx artifact with ONNX Runtime on this machine.")
        if device >= count:
            raise BackendUnavailableError(f"CUDA device {device} requested but only {count} GPU(s) are present")
        self._check(cudart.cudaSetDevice(device))
        self.device = device

    def _err_text(self, err) -> str:
        try:
            return f"{err.name}: {self.rt.cudaGetErrorString(err)[1].decode()}"
        except Exception:  # pragma: no cover - best effort
            return str(err)

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA call failed: {self._err_text(err)}")
        return values[0] if len(values) == 1 else (tuple(values) if values else None)

    def device_alloc(self, size: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(size, 1))))

    def device_free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def pinned_empty(self, shape: Shape, dtype) -> Tuple[np.ndarray, int]:
        """A numpy array backed by page-locked host memory (async copies need it) and its pointer."""
        size = nbytes(shape, dtype)
        ptr = int(self._check(self.rt.cudaMallocHost(max(size, 1))))
        raw = (ctypes.c_byte * max(size, 1)).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8, count=size).view(dtype).reshape(shape)
        return array, ptr

    def pinned_free(self, ptr: int) -> None:
        self._check(self.rt.cudaFreeHost(ptr))

    def h2d_async(self, dst: int, src_ptr: int, size: int, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, src_ptr, size, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def d2h_async(self, dst_ptr: int, src: int, size: int, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst_ptr, src, size, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def stream_create(self):
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream) -> int:
        return int(stream)

    def stream_sync(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def event_create(self, blocking: bool):
        flags = self.rt.cudaEventBlockingSync if blocking else self.rt.cudaEventDefault
        return self._check(self.rt.cudaEventCreateWithFlags(flags))

    def event_record(self, event, stream) -> None:
        self._check(self.rt.cudaEventRecord(event, stream))

    def event_wait(self, event, spin: bool) -> None:
        """Spin on cudaEventQuery (lowest latency, burns a core) or block (frees the CPU; Jetson power)."""
        if not spin:
            self._check(self.rt.cudaEventSynchronize(event))
            return
        not_ready = self.rt.cudaError_t.cudaErrorNotReady
        while True:
            err = self.rt.cudaEventQuery(event)[0]
            if err != not_ready:
                self._check((err,))
                return

    def event_elapsed_ms(self, start, end) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end)))

    def capture_begin(self, stream) -> None:
        self._check(self.rt.cudaStreamBeginCapture(
            stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))

    def capture_end(self, stream):
        """End capture and instantiate; returns (graph, graph_exec)."""
        graph = self._check(self.rt.cudaStreamEndCapture(stream))
        graph_exec = self._check(self.rt.cudaGraphInstantiate(graph, 0))
        return graph, graph_exec

    def capture_abort(self, stream) -> None:
        """End a failed capture and drop the partial graph, ignoring its errors."""
        try:
            graph = self.rt.cudaStreamEndCapture(stream)[1]
            if graph is not None:
                self.rt.cudaGraphDestroy(graph)
        except Exception:  # pragma: no cover - best effort cleanup
            pass

    def graph_launch(self, graph_exec, stream) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream))

    def graph_free(self, graph, graph_exec) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec))
        self._check(self.rt.cudaGraphDestroy(graph))

    def gpu_identity(self) -> Dict[str, Optional[str]]:
        props = self._check(self.rt.cudaGetDeviceProperties(self.device))
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        driver = self._check(self.rt.cudaDriverGetVersion())
        return {"gpu_name": name, "compute_capability": f"{props.major}.{props.minor}",
                "cuda_driver": f"{driver // 1000}.{(driver % 1000) // 10}"}


def load_cuda_api(name: str = "cuda-python", device: int = 0) -> CudaPythonApi:
    if name != "cuda-python":
        raise BackendUnavailableError(f"cuda={name!r} is not supported; the TensorRT backend uses cuda-python "
                                      "(pip install 'fer-edge[trt]'): pass cuda='cuda-python' or leave it out")
    return CudaPythonApi(device)


class IoBuffers:
    """Pinned host + device buffers for every I/O tensor, allocated once for the profile maximum and reused."""

    def __init__(self, api, specs: List[TensorSpec], max_batch: int):
        self.api = api
        self.host: Dict[str, np.ndarray] = {}
        self.device: Dict[str, int] = {}
        self.host_ptr: Dict[str, int] = {}
        try:
            for spec in specs:
                shape = max_shape(spec, max_batch)
                self.host[spec.name], self.host_ptr[spec.name] = api.pinned_empty(shape, spec.dtype)
                self.device[spec.name] = api.device_alloc(nbytes(shape, spec.dtype))
        except BaseException:
            self.free()
            raise

    def free(self) -> None:
        for ptr in self.device.values():
            self.api.device_free(ptr)
        for ptr in self.host_ptr.values():
            self.api.pinned_free(ptr)
        self.device.clear()
        self.host_ptr.clear()
        self.host.clear()
