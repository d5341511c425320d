"""The TensorRT backend's CUDA-graph, threading, memory and zero-copy behaviour, on the fake engine and fake CUDA
layer of test_engine.py, which model what the real ones do wrong to careless code: a graph replayed after its
context ran another shape gives wrong output, CUDA can invalidate a capture TensorRT reported as enqueued, the
current GPU is per thread, create_execution_context() returns None without GPU memory, and Jetson's pinned host
memory is the GPU's memory."""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fer_edge.runtime.errors import BackendUnavailableError, ModelLoadError
from fer_edge.runtime.tensorrt import backend as tensorrt_backend
from test_engine import FakeCuda, FakeRtxContext, _fake_backend, expected_logits

BATCHES = [1, 2, 1, 3, 1, 8, 1]     # a robot's faces per frame: the shape changes between batch-1 calls


def _faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 32, 32)).astype(np.float32)


def _run_sequence(backend, batches=BATCHES):
    for i, n in enumerate(batches):
        x = _faces(n, seed=i)
        np.testing.assert_allclose(backend.run(x), expected_logits(x), atol=1e-2, err_msg=f"call {i} (batch {n})")


def test_batch_1_graph_lives_on_its_own_context_so_shape_changes_never_make_it_stale(monkeypatch):
    backend, api, _ = _fake_backend(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no fallback: the graph really runs
        _run_sequence(backend)
    assert api.calls.count(("graph_captured",)) == 1 and api.calls.count(("graph_launch",)) == 4
    shared, graph_context = api.contexts
    assert graph_context is not backend.context and graph_context.shape == (1, 1, 32, 32)
    assert graph_context.state == 1                    # its shape was set once, before the capture
    assert backend.bench_settings["cuda_graph"] is True and backend.bench_settings["cuda_graph_batches"] == [1]


def test_graphs_for_several_batch_sizes_each_get_a_context(monkeypatch):
    backend, api, _ = _fake_backend(monkeypatch, cuda_graph=[1, 2])
    _run_sequence(backend, [1, 2, 1, 3, 2, 1])
    assert len(api.contexts) == 3 and api.calls.count(("graph_captured",)) == 2
    assert api.calls.count(("graph_launch",)) == 5    # every call at batch 1 or 2; batch 3 enqueues
    assert sorted(c.shape[0] for c in api.contexts[1:]) == [1, 2]
    backend.close()
    assert api.calls.count(("graph_free",)) == 2 and api.mem == {}


@pytest.mark.parametrize("option", [[0], [9], [1, 9], "yes", [True], []])
def test_cuda_graph_batches_outside_the_profile_or_of_the_wrong_type_are_refused(monkeypatch, option):
    with pytest.raises(ModelLoadError, match=r"cuda_graph=.*within the engine's profile \[1, 8\]"):
        _fake_backend(monkeypatch, cuda_graph=option)


@pytest.mark.parametrize("failure,why", [
    ("capture", "CUDA rejected the capture .*cudaErrorStreamCaptureInvalidated"),
    ("instantiate", "CUDA rejected the capture .*cudaGraphInstantiate"),
    ("launch", "its first launch failed .*cudaGraphLaunch"),
])
def test_capture_cuda_invalidates_falls_back_to_enqueue_with_one_warning(monkeypatch, failure, why):
    backend, api, _ = _fake_backend(monkeypatch, api=FakeCuda(fail={failure}))
    with pytest.warns(UserWarning, match=f"CUDA graph at batch 1 disabled: {why}") as caught:
        _run_sequence(backend)                          # never raises, every output right
    assert len([w for w in caught if "CUDA graph" in str(w.message)]) == 1
    assert backend.bench_settings["cuda_graph"] is False and backend.bench_settings["cuda_graph_batches"] == []
    assert backend.bench_settings["cuda_graph_notes"][0].startswith("batch 1: ")
    backend.close()
    assert api.mem == {}


def test_tensorrt_rtx_engine_that_is_not_stream_capturable_is_never_captured(monkeypatch):
    backend, api, _ = _fake_backend(monkeypatch, context_type=FakeRtxContext)
    with pytest.warns(UserWarning, match="not stream-capturable .*REQUIRE_USER_ALLOCATION"):
        _run_sequence(backend)
    assert ("enqueue", True) not in api.calls           # no capture attempted
    assert backend.bench_settings["cuda_graph"] is False


def test_calls_from_8_threads_on_gpu_1_make_the_gpu_current_on_each_thread(monkeypatch):
    backend, api, _ = _fake_backend(monkeypatch, api=FakeCuda(device=1), device=1)
    sizes = [1, 2, 1, 3, 1, 4, 1, 8] * 4

    def one(i):
        x = _faces(sizes[i], seed=i)
        return x, backend.run(x)

    with ThreadPoolExecutor(8) as pool:
        for x, out in pool.map(one, range(len(sizes))):
            np.testing.assert_allclose(out, expected_logits(x), atol=1e-2)
    assert api.calls.count(("graph_captured",)) == 1
    with ThreadPoolExecutor(1) as pool:
        pool.submit(backend.close).result()             # closing from another thread works too
    assert api.mem == {}


def test_no_gpu_memory_for_the_execution_context_is_a_clear_load_error(monkeypatch):
    with pytest.raises(ModelLoadError, match="could not create an execution context: not enough free GPU memory"):
        _fake_backend(monkeypatch, contexts=0)


def test_no_gpu_memory_for_a_graph_context_runs_without_that_graph(monkeypatch):
    backend, api, _ = _fake_backend(monkeypatch, contexts=1)
    with pytest.warns(UserWarning, match="batch 1 disabled: not enough GPU memory for its own execution context"):
        _run_sequence(backend)
    assert len(api.contexts) == 1 and ("graph_launch",) not in api.calls


def test_integrated_gpu_uses_zero_copy_io_by_default(monkeypatch):
    backend, api, _ = _fake_backend(monkeypatch, api=FakeCuda(integrated=True))
    _run_sequence(backend)
    assert not [c for c in api.calls if c[0] in ("device_alloc", "h2d", "d2h")]   # no device buffers, no copies
    assert api.calls.count(("pinned", True)) == 2
    settings = backend.bench_settings
    assert settings["zero_copy"] is True and settings["data_transfers"] is False
    assert settings["io"] == "zero-copy (mapped pinned host memory); auto: integrated GPU"
    backend.close()
    assert api.mem == {}


@pytest.mark.parametrize("integrated,zero_copy,want,choice", [
    (True, False, False, "requested"), (False, None, False, "auto: discrete GPU, copies"),
    (False, True, True, "requested")])
def test_zero_copy_is_selectable(monkeypatch, integrated, zero_copy, want, choice):
    backend, api, _ = _fake_backend(monkeypatch, api=FakeCuda(integrated=integrated), zero_copy=zero_copy)
    _run_sequence(backend, [1, 3])
    assert backend.zero_copy is want and backend.bench_settings["io"].endswith(choice)
    assert (("h2d", 3 * 32 * 32 * 2) in api.calls) is not want


def test_zero_copy_refused_where_the_gpu_cannot_map_host_memory_or_the_value_is_unclear(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="zero_copy=True: Fake GPU cannot map pinned host memory"):
        _fake_backend(monkeypatch, api=FakeCuda(can_map=False), zero_copy=True)
    with pytest.raises(ModelLoadError, match=r"zero_copy='yes': pass True, False, or None"):
        _fake_backend(monkeypatch, zero_copy="yes")


def test_load_passes_zero_copy_through(monkeypatch):
    backend, api, contract = _fake_backend(monkeypatch)
    loaded = tensorrt_backend.load_engine_backend(Path(__file__), contract, {"engine": {}}, zero_copy=True)
    assert loaded.zero_copy is True


def test_fer_bench_shows_zero_copy_next_to_the_backend(monkeypatch):
    from fer_edge.benchmarks.fer_bench import model_entry
    from fer_edge.benchmarks.report import markdown_table
    from fer_edge.runtime.model import FerModel
    rows = []
    for integrated in (True, False):
        backend, _, contract = _fake_backend(monkeypatch, api=FakeCuda(integrated=integrated))
        rows.append(model_entry(FerModel(Path(__file__), contract, backend, {}), backend.bench_settings))
    table = markdown_table(rows, [1]).splitlines()
    assert "| tensorrt (zero-copy I/O) |" in table[2] and "| tensorrt |" in table[3]
