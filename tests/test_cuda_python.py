"""The cuda-python layer against the real cuda-python packages, and its messages when the driver is the problem.

Every `self.rt.<call>(...)` in runtime/tensorrt/cuda_buffers.py is checked, by name and number of arguments,
against the real signatures of cuda-python 11.8 (JetPack 5), 12.6 (the JetPack 6 pin), 12.9 (trt-cu12) and
13.x (trt-cu13): their Cython functions carry signatures, and they import without a driver. Each version is
installed once into ~/.cache/fer-edge-tests/cuda-python-<version> (FER_EDGE_TEST_CACHE moves it); the test
skips, saying why, when pip cannot download it. Warm, the four checks take a few seconds.
"""
from __future__ import annotations

import ast
import enum
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fer_edge.runtime.errors import BackendUnavailableError
from fer_edge.runtime.tensorrt import cuda_buffers

CACHE = Path(os.environ.get("FER_EDGE_TEST_CACHE", Path.home() / ".cache" / "fer-edge-tests"))
# version -> what pip installs (cuda-python split into cuda-bindings in 12.8; 12.9+ need cuda-pathfinder).
CUDA_PYTHON = {
    "11.8.7": ["cuda-bindings==11.8.7"],
    "12.6.2.post1": ["cuda-python==12.6.2.post1"],
    "12.9.10": ["cuda-bindings==12.9.10", "cuda-pathfinder==1.9.1"],
    "13.5.0": ["cuda-bindings==13.5.0", "cuda-pathfinder==1.9.1"],
}
MARKER = ".fer-edge-complete"


def cuda_python_folder(version: str) -> Path:
    """The cached --target install of one cuda-python version (installed on first use)."""
    folder, specs = CACHE / f"cuda-python-{version}", CUDA_PYTHON[version]
    if (folder / MARKER).is_file() and (folder / MARKER).read_text() == " ".join(specs):
        return folder
    staging = CACHE / f".cuda-python-{version}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                          "--target", str(staging), *specs], capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"pip could not install {' '.join(specs)}: {(pip.stderr.strip().splitlines() or ['?'])[-1]}")
    (staging / MARKER).write_text(" ".join(specs))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _chain(node):
    """['self', 'rt', 'cudaMalloc'] for the expression self.rt.cudaMalloc; None for anything else."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id] + names[::-1] if isinstance(node, ast.Name) else None


def cudart_uses(path: Path):
    """Calls (name, positional count, keyword names) and attributes the module makes of cuda-python's runtime,
    plus every use the check could not follow (an alias of self.rt or of one of its namespaces hides calls)."""
    tree = ast.parse(path.read_text())
    calls, attrs, hidden = set(), set(), []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        chain = _chain(node) if isinstance(node, ast.Attribute) else None
        if not chain or chain[:2] != ["self", "rt"] or isinstance(parents.get(node), ast.Attribute):
            continue                                   # only the longest self.rt.* chain counts
        parent = parents.get(node)
        if isinstance(parent, ast.Call) and parent.func is node and len(chain) == 3:
            calls.add((chain[2], len(parent.args), tuple(sorted(k.arg for k in parent.keywords))))
        elif len(chain) >= 3:
            attrs.add(".".join(chain[2:]))
        if len(chain) < 4 and isinstance(parent, ast.Assign) and not (isinstance(parent.targets[0], ast.Attribute)
                                                                     and _chain(parent.targets[0]) == ["self", "rt"]):
            hidden.append(f"line {node.lineno}: {'.'.join(chain)} assigned to a name")
    return sorted(calls), sorted(attrs), hidden


CHECKER = r"""
import inspect, json, re, sys
folder, calls, attrs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, folder)
from fer_edge.runtime.tensorrt import cuda_buffers
rt = cuda_buffers.import_cudart()
problems = [] if rt.__file__.startswith(folder) else [f"imported {rt.__file__}, not the one under {folder}"]
for name, npos, keywords in calls:
    fn = getattr(rt, name, None)
    if fn is None:
        problems.append(f"{name}: missing")
        continue
    try:
        inspect.signature(fn).bind(*range(npos), **{k: 0 for k in keywords})
    except TypeError as exc:
        problems.append(f"{name}{inspect.signature(fn)} called with {npos} positional {keywords}: {exc}")
for attr in attrs:
    obj = rt
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        problems.append(f"{attr}: missing")
outcome = {"problems": problems}
try:
    api = cuda_buffers.CudaPythonApi(0)
except Exception as exc:
    outcome["error"] = [type(exc).__name__, str(exc)]
else:   # a GPU is here: one round trip through pinned and device memory, replayed by a captured graph
    import numpy as np
    host, host_ptr, _ = api.pinned_empty((64,), np.float32)
    out, out_ptr, _ = api.pinned_empty((64,), np.float32)
    dev, stream = api.device_alloc(256), api.stream_create()
    api.capture_begin(stream)
    api.h2d_async(dev, host_ptr, 256, stream)
    api.d2h_async(out_ptr, dev, 256, stream)
    graph = api.capture_end(stream)
    host[:] = np.arange(64)
    api.graph_launch(graph[1], stream)
    api.stream_sync(stream)
    outcome["gpu"] = [api.gpu_identity()["gpu_name"], bool((out == host).all())]
    api.graph_free(*graph)
    api.device_free(dev)
print(json.dumps(outcome))
"""


def test_the_checker_sees_calls_attributes_and_aliases(tmp_path):
    """The AST walk itself: arity of a call, an enum member, and an alias that would hide later calls."""
    source = tmp_path / "m.py"
    source.write_text("class A:\n    def f(self, g):\n        self.rt.cudaGraphInstantiate(g, 0)\n"
                      "        x = self.rt.cudaError_t.cudaSuccess\n        attr = self.rt.cudaDeviceAttr\n")
    calls, attrs, hidden = cudart_uses(source)
    assert calls == [("cudaGraphInstantiate", 2, ())]
    assert attrs == ["cudaDeviceAttr", "cudaError_t.cudaSuccess"]
    assert hidden == ["line 5: self.rt.cudaDeviceAttr assigned to a name"]


def test_cuda_buffers_uses_no_alias_that_hides_a_call():
    calls, attrs, hidden = cudart_uses(Path(cuda_buffers.__file__))
    assert hidden == []
    assert ("cudaGraphInstantiateWithFlags", 2, ()) in calls and ("cudaHostAlloc", 2, ()) in calls


@pytest.mark.parametrize("version", list(CUDA_PYTHON))
def test_every_cuda_python_call_matches_the_real_signatures(version):
    folder = cuda_python_folder(version)
    calls, attrs, _ = cudart_uses(Path(cuda_buffers.__file__))
    run = subprocess.run([sys.executable, "-c", CHECKER, str(folder), json.dumps(calls), json.dumps(attrs)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["problems"] == [], f"cuda-python {version}: " + "; ".join(outcome["problems"])
    if "gpu" in outcome:
        assert outcome["gpu"][1], f"cuda-python {version}: captured copies did not round-trip on {outcome['gpu'][0]}"
        return
    # No usable GPU here: cuda-python 11.8 and 12.6 raise when libcuda.so.1 is missing, 12.9 and 13 report an
    # insufficient driver of version 0; either way the message says what is wrong, never a raw RuntimeError.
    kind, message = outcome["error"]
    assert kind == "BackendUnavailableError", message
    assert message.startswith("no usable CUDA GPU: ")
    assert "no NVIDIA driver" in message or "is older than the CUDA runtime" in message, message


# ---------------------------------------------------------------- driver messages, on a fake runtime module
class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def _fake_runtime(monkeypatch, device_count, driver=0, runtime=12090):
    """Install a stand-in for `cuda.bindings.runtime` whose cudaGetDeviceCount returns (or raises) `device_count`."""
    def get_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    rt = types.SimpleNamespace(cudaError_t=CudaError, cudaGetDeviceCount=get_count,
                               cudaDriverGetVersion=lambda: (CudaError.cudaSuccess, driver),
                               cudaRuntimeGetVersion=lambda: (CudaError.cudaSuccess, runtime),
                               cudaGetErrorString=lambda err: (CudaError.cudaSuccess, b"CUDA driver version is "
                                                               b"insufficient for CUDA runtime version"))
    package = types.ModuleType("cuda.bindings")
    package.runtime = rt
    monkeypatch.setitem(sys.modules, "cuda.bindings", package)


INSUFFICIENT = (CudaError.cudaErrorInsufficientDriver, None)


def test_desktop_driver_older_than_cuda_python_13_names_the_cu12_pin(monkeypatch):
    _fake_runtime(monkeypatch, INSUFFICIENT, driver=12040, runtime=13050)     # R550 driver, cuda-python 13.5
    with pytest.raises(BackendUnavailableError) as err:
        cuda_buffers.load_cuda_api("cuda-python")
    assert ("no usable CUDA GPU: driver 12.4 is older than the CUDA runtime 13.5 this cuda-python needs; install "
            "cuda-python<13 (or the trt-cu12 extra)") in str(err.value)


def test_jetson_driver_older_than_cuda_python_12_9_names_the_jetpack_pin(monkeypatch):
    _fake_runtime(monkeypatch, INSUFFICIENT, driver=12060, runtime=12090)     # JetPack 6.1, cuda-python 12.9
    with pytest.raises(BackendUnavailableError) as err:
        cuda_buffers.load_cuda_api("cuda-python")
    message = str(err.value)
    assert "driver 12.6 is older than the CUDA runtime 12.9 this cuda-python needs" in message
    assert "Jetson has no minor-version compatibility" in message and "pip install 'cuda-python==12.6.*'" in message


@pytest.mark.parametrize("count,driver,want", [
    (INSUFFICIENT, 0, "no usable CUDA GPU: no NVIDIA driver is installed (libcuda.so.1 was not found)"),
    (RuntimeError("Failed to dlopen libcuda.so.1"), 0,             # cuda-python 11.8 / 12.6 without a driver
     "no usable CUDA GPU: no NVIDIA driver could be loaded (Failed to dlopen libcuda.so.1)"),
    ((CudaError.cudaErrorNoDevice, 0), 12060, "no usable CUDA GPU (cudaErrorNoDevice"),
    ((CudaError.cudaSuccess, 0), 12060, "no usable CUDA GPU (no devices)"),
])
def test_no_driver_or_no_gpu_is_a_clear_backend_error(monkeypatch, count, driver, want):
    _fake_runtime(monkeypatch, count, driver=driver)
    with pytest.raises(BackendUnavailableError, match="use the .onnx artifact|cuda-python per platform") as err:
        cuda_buffers.load_cuda_api("cuda-python")
    assert want in str(err.value)


def test_driver_problem_for_jetpack_5():
    assert cuda_buffers.driver_problem(12090, 11040) == (
        "driver 11.4 is older than the CUDA runtime 12.9 this cuda-python needs; install cuda-python<12, or update "
        "the driver")
