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


# ------------------------------------------------------------------ CUDA layer
# cuda-python >= 12.8 embeds a static CUDA runtime of its own version: on a desktop it needs a driver of the same
# major (R525+ for 12.x, R580+ for 13.x); on Jetson, which has no minor-version compatibility, a driver at least
# as new. cuda-python <= 12.6 (and 11.8) call the installed driver directly, so JetPack pins those.
CUDA_PYTHON_PINS = ("desktop/server: pip install 'fer-edge[trt-cu12]' (driver R525+) or 'fer-edge[trt-cu13]' "
                    "(driver R580+); JetPack 6.1/6.2 (CUDA 12.6): pip install 'cuda-python==12.6.*'; JetPack 6.0 "
                    "(CUDA 12.2): 'cuda-python==12.2.*'; JetPack 5 (CUDA 11.4): 'cuda-python==11.8.*'")
NO_GPU_FIX = ("TensorRT engines need an NVIDIA GPU with a working driver; use the .onnx artifact with ONNX Runtime "
              "on this machine.")


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (11.8.6+, 12.8+, 13.x) or `cuda.cudart` (older)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore
        except ImportError:
            raise BackendUnavailableError("cuda-python is not installed; the TensorRT backend needs it for GPU "
                                          f"memory and streams. Install it: {CUDA_PYTHON_PINS}.") from None
    return cudart


def cuda_version_text(version: int) -> str:
    return f"{version // 1000}.{(version % 1000) // 10}"


def driver_problem(runtime_version: int, driver_version: int) -> str:
    """Why cudaErrorInsufficientDriver, from the driver's and this cuda-python's CUDA versions, with the fix."""
    if driver_version <= 0:
        return "no NVIDIA driver is installed (libcuda.so.1 was not found)"
    driver, runtime = cuda_version_text(driver_version), cuda_version_text(runtime_version)
    head = f"driver {driver} is older than the CUDA runtime {runtime} this cuda-python needs; "
    if driver_version // 1000 < runtime_version // 1000:
        extra = " (or the trt-cu12 extra)" if driver_version // 1000 == 12 else ""
        return head + f"install cuda-python<{runtime_version // 1000}{extra}, or update the driver"
    return head + ("Jetson has no minor-version compatibility: install the cuda-python that calls the driver "
                   f"directly, pip install 'cuda-python=={driver}.*', or JetPack's cuda-compat package")


class CudaPythonApi:
    """cuda-python's runtime API: every call returns (err, *values); `_check` turns errors into CudaError.

    Only calls with the same arity in cuda-python 11.8, 12.x and 13.x are used (cudaGraphInstantiateWithFlags, not
    cudaGraphInstantiate, whose 11.8 form takes a log buffer)."""
    name = "cuda-python"

    def __init__(self, device: int = 0):
        self.rt = import_cudart()
        try:
            err, count = self.rt.cudaGetDeviceCount()
        except RuntimeError as exc:  # cuda-python <= 12.6 raise when libcuda.so.1 cannot be loaded
            raise BackendUnavailableError(f"no usable CUDA GPU: no NVIDIA driver could be loaded ({exc}). "
                                          f"{NO_GPU_FIX}") from None
        if err == self.rt.cudaError_t.cudaErrorInsufficientDriver:
            driver = int(self.rt.cudaDriverGetVersion()[1] or 0)     # 0 when no driver is installed
            runtime = self._check(self.rt.cudaRuntimeGetVersion())
            fix = f"cuda-python per platform: {CUDA_PYTHON_PINS}." if driver else NO_GPU_FIX
            raise BackendUnavailableError(f"no usable CUDA GPU: {driver_problem(runtime, driver)}. {fix}")
        if err != self.rt.cudaError_t.cudaSuccess or not count:
            raise BackendUnavailableError(f"no usable CUDA GPU ({self._err_text(err) if err else 'no devices'}). "
                                          f"{NO_GPU_FIX}")
        if device >= count:
            raise BackendUnavailableError(f"CUDA device {device} requested but only {count} GPU(s) are present")
        self.device = device
        self.use_device()

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

    def use_device(self) -> None:
        """Make this GPU current on the calling thread: the runtime API's current device is per thread."""
        self._check(self.rt.cudaSetDevice(self.device))

    def device_alloc(self, size: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(size, 1))))

    def device_free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def maps_host_memory(self) -> Tuple[bool, bool]:
        """(integrated GPU, can map pinned host memory): Jetson's iGPU reads host memory without copies."""
        integrated = self._check(self.rt.cudaDeviceGetAttribute(self.rt.cudaDeviceAttr.cudaDevAttrIntegrated,
                                                                self.device))
        can_map = self._check(self.rt.cudaDeviceGetAttribute(self.rt.cudaDeviceAttr.cudaDevAttrCanMapHostMemory,
                                                             self.device))
        return bool(integrated), bool(can_map)

    def pinned_empty(self, shape: Shape, dtype, mapped: bool = False) -> Tuple[np.ndarray, int, Optional[int]]:
        """A numpy array backed by page-locked host memory (async copies need it), its pointer and, when `mapped`,
        the device pointer of the same memory (zero-copy: the GPU reads and writes it directly)."""
        size = max(nbytes(shape, dtype), 1)
        if mapped:
            ptr = int(self._check(self.rt.cudaHostAlloc(size, self.rt.cudaHostAllocMapped)))
            device_ptr = int(self._check(self.rt.cudaHostGetDevicePointer(ptr, 0)))
        else:
            ptr, device_ptr = int(self._check(self.rt.cudaMallocHost(size))), None
        raw = (ctypes.c_byte * size).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8, count=nbytes(shape, dtype)).view(dtype).reshape(shape)
        return array, ptr, device_ptr

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
        """End capture and instantiate; returns (graph, graph_exec). CudaError when CUDA invalidated the capture
        (cudaStreamEndCapture fails, capture mode ends anyway) or the graph cannot be instantiated."""
        graph = self._check(self.rt.cudaStreamEndCapture(stream))
        try:
            return graph, self._check(self.rt.cudaGraphInstantiateWithFlags(graph, 0))
        except CudaError:
            self.rt.cudaGraphDestroy(graph)
            raise

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
        return {"gpu_name": name, "compute_capability": f"{props.major}.{props.minor}",
                "cuda_driver": cuda_version_text(self._check(self.rt.cudaDriverGetVersion()))}


def load_cuda_api(name: str = "cuda-python", device: int = 0) -> CudaPythonApi:
    if name != "cuda-python":
        # pycuda was removed: its pushed context must be popped on every thread and it cannot capture CUDA graphs.
        raise BackendUnavailableError(f"cuda={name!r} is not supported; the TensorRT backend uses NVIDIA's "
                                      f"cuda-python only: pass cuda='cuda-python' or leave it out. Install it: "
                                      f"{CUDA_PYTHON_PINS}")
    return CudaPythonApi(device)


class IoBuffers:
    """Pinned host + device buffers for every I/O tensor, allocated once for the profile maximum and reused.

    zero_copy: mapped pinned host memory only; `device` holds its device pointers, so no H2D/D2H copy is needed."""

    def __init__(self, api, specs: List[TensorSpec], max_batch: int, zero_copy: bool = False):
        self.api, self.zero_copy = api, zero_copy
        self.host: Dict[str, np.ndarray] = {}
        self.device: Dict[str, int] = {}
        self.host_ptr: Dict[str, int] = {}
        self._owned: List[int] = []                  # device allocations (none with zero-copy)
        try:
            for spec in specs:
                shape = max_shape(spec, max_batch)
                self.host[spec.name], self.host_ptr[spec.name], mapped = api.pinned_empty(shape, spec.dtype, zero_copy)
                if zero_copy:
                    self.device[spec.name] = mapped
                else:
                    self.device[spec.name] = api.device_alloc(nbytes(shape, spec.dtype))
                    self._owned.append(self.device[spec.name])
        except BaseException:
            self.free()
            raise

    def free(self) -> None:
        for ptr in self._owned:
            self.api.device_free(ptr)
        for ptr in self.host_ptr.values():
            self.api.pinned_free(ptr)
        self._owned.clear()
        self.device.clear()
        self.host_ptr.clear()
        self.host.clear()
