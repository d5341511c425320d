"""CUDA memory, streams, events and graphs for the TensorRT backend, plus the shape logic around them.

Two interchangeable CUDA layers implement the same small interface:
  - CudaPythonApi (default): NVIDIA's `cuda.bindings.runtime` (pip install cuda-python), what NVIDIA's
    TensorRT samples use. Supports CUDA-graph capture.
  - PycudaApi (optional, `load(path, cuda="pycuda")`): pycuda, built from source on the device. No graph
    capture API, so CUDA graphs are off with it.
Neither is imported at module import time (pycuda.autoinit creates a context as a side effect).

The shape helpers at the top need no GPU and are unit-tested in CI.
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


def batch_range(specs: List[TensorSpec]) -> Tuple[int, int]:
    """(min, max) batch the engine accepts, from the input's profile (or its static batch dim)."""
    inputs = [s for s in specs if s.is_input]
    if len(inputs) != 1:
        raise ContractError(f"the engine has {len(inputs)} inputs; fer-edge models have exactly one")
    spec = inputs[0]
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


def split_batches(count: int, max_batch: int) -> List[slice]:
    """Slices covering `count` items in chunks of at most `max_batch`."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    return [slice(i, min(i + max_batch, count)) for i in range(0, count, max_batch)]


def nbytes(shape: Shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


# ------------------------------------------------------------------ CUDA layers
class CudaPythonApi:
    """cuda.bindings.runtime: every call returns (err, *values); `_check` turns errors into CudaError."""
    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:  # cuda-python < 12.6 layout
                from cuda import cudart  # type: ignore
            except ImportError:
                raise BackendUnavailableError("cuda-python is not installed; the TensorRT backend needs it for GPU "
                                              "memory and streams: pip install 'fer-edge[trt]' (or pip install "
                                              "cuda-python; on JetPack 6 use cuda-python<13). Or pass cuda='pycuda'.") from None
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

    # memory
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

    # streams and events
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

    # graphs
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

    # identity
    def gpu_identity(self) -> Dict[str, Optional[str]]:
        props = self._check(self.rt.cudaGetDeviceProperties(self.device))
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        driver = self._check(self.rt.cudaDriverGetVersion())
        return {"gpu_name": name, "compute_capability": f"{props.major}.{props.minor}",
                "cuda_driver": f"{driver // 1000}.{(driver % 1000) // 10}"}


class PycudaApi:
    """pycuda equivalents (optional). pycuda exposes no stream-capture API, so no CUDA graphs."""
    name = "pycuda"
    supports_graphs = False

    def __init__(self, device: int = 0):
        try:
            import pycuda.driver as drv
        except ImportError:
            raise BackendUnavailableError("pycuda is not installed: pip install pycuda (builds against the local "
                                          "CUDA toolkit), or use the default cuda='cuda-python'") from None
        try:
            drv.init()
            self.context = drv.Device(device).retain_primary_context()
            self.context.push()
        except Exception as exc:
            raise BackendUnavailableError(f"pycuda found no usable GPU ({exc})") from None
        self.drv = drv
        self.device = device
        self._allocations: Dict[int, object] = {}

    def device_alloc(self, size: int) -> int:
        mem = self.drv.mem_alloc(max(size, 1))
        self._allocations[int(mem)] = mem
        return int(mem)

    def device_free(self, ptr: int) -> None:
        mem = self._allocations.pop(ptr, None)
        if mem is not None:
            mem.free()

    def pinned_empty(self, shape: Shape, dtype) -> Tuple[np.ndarray, int]:
        array = self.drv.pagelocked_empty(shape, dtype)
        self._allocations[array.ctypes.data] = array  # keep it alive
        return array, array.ctypes.data

    def pinned_free(self, ptr: int) -> None:
        self._allocations.pop(ptr, None)

    def h2d_async(self, dst: int, src_ptr: int, size: int, stream) -> None:
        self.drv.memcpy_htod_async(dst, self._host_view(src_ptr, size), stream)

    def d2h_async(self, dst_ptr: int, src: int, size: int, stream) -> None:
        self.drv.memcpy_dtoh_async(self._host_view(dst_ptr, size), src, stream)

    def _host_view(self, ptr: int, size: int) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_byte * size).from_address(ptr))

    def stream_create(self):
        return self.drv.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream.handle)

    def stream_sync(self, stream) -> None:
        stream.synchronize()

    def event_create(self, blocking: bool):
        return self.drv.Event(self.drv.event_flags.BLOCKING_SYNC if blocking else 0)

    def event_record(self, event, stream) -> None:
        event.record(stream)

    def event_wait(self, event, spin: bool) -> None:
        if spin:
            while not event.query():
                pass
        else:
            event.synchronize()

    def event_elapsed_ms(self, start, end) -> float:
        return float(start.time_till(end))

    def gpu_identity(self) -> Dict[str, Optional[str]]:
        dev = self.drv.Device(self.device)
        major, minor = dev.compute_capability()
        driver = self.drv.get_driver_version()
        return {"gpu_name": dev.name(), "compute_capability": f"{major}.{minor}",
                "cuda_driver": f"{driver // 1000}.{(driver % 1000) // 10}"}


CUDA_APIS = {"cuda-python": CudaPythonApi, "pycuda": PycudaApi}


def load_cuda_api(name: str = "cuda-python", device: int = 0):
    if name not in CUDA_APIS:
        raise BackendUnavailableError(f"cuda={name!r} is not supported; choose one of {sorted(CUDA_APIS)}")
    return CUDA_APIS[name](device)


class IoBuffers:
    """Pinned host + device buffers for every I/O tensor, allocated once for the profile maximum and reused."""

    def __init__(self, api, specs: List[TensorSpec]):
        self.api = api
        self.specs = {s.name: s for s in specs}
        self.min_batch, self.max_batch = batch_range(specs)
        self.host: Dict[str, np.ndarray] = {}
        self.device: Dict[str, int] = {}
        self._host_ptr: Dict[str, int] = {}
        try:
            for spec in specs:
                shape = max_shape(spec, self.max_batch)
                self.host[spec.name], self._host_ptr[spec.name] = api.pinned_empty(shape, spec.dtype)
                self.device[spec.name] = api.device_alloc(nbytes(shape, spec.dtype))
        except BaseException:
            self.free()
            raise

    def host_ptr(self, name: str) -> int:
        return self._host_ptr[name]

    def free(self) -> None:
        for ptr in self.device.values():
            self.api.device_free(ptr)
        for ptr in self._host_ptr.values():
            self.api.pinned_free(ptr)
        self.device.clear()
        self._host_ptr.clear()
        self.host.clear()
