"""TensorRT engines without a GPU: real builds with tensorrt-rtx on the CPU, the pre-deserialisation checks,
the trtexec statistics and the buffer/graph layer (driven by a fake engine + fake CUDA layer)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_export_stack, synthetic_faces
from fer_edge.benchmarks import latency as latency_summary
from fer_edge.benchmarks import trtexec_stats
from fer_edge.runtime.tensorrt import cuda_buffers
from fer_edge.runtime.tensorrt import engine_compat
from fer_edge.runtime.tensorrt import backend as tensorrt_backend
from fer_edge.models.artifact_writer import atomic_write_json
from fer_edge.runtime.artifact_io import sha256_file, sidecar_path
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError
from fer_edge.runtime.tensorrt.trt_import import parse_version

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="needs tensorrt-rtx (pip install tensorrt-rtx-cu12) to build engines on CPU")


def _gpu_present() -> bool:
    try:
        cuda_buffers.load_cuda_api("cuda-python")
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- real builds (tensorrt-rtx on CPU)
@pytest.fixture(scope="module")
def engines(reference_onnx, tmp_path_factory):
    """Engines (dynamic batch 1:4:8) from the reference model's FP32, FP16 and INT8 ONNX, sharing one timing cache."""
    from fer_edge.export.engine_build import BuildOptions, build_engine
    out = tmp_path_factory.mktemp("engines")
    cache = out / "rtx.timing-cache"
    logs = []
    built = {p: build_engine(reference_onnx[p][0], out_dir=out, log=logs.append, flavour="tensorrt_rtx",
                             options=BuildOptions(batch=(1, 4, 8), timing_cache=str(cache), progress=True))
             for p in ("fp32", "fp16", "int8")}
    return built, cache, logs


@needs_rtx
@needs_export_stack
def test_reference_model_fp32_fp16_int8_build_strongly_typed_engines_with_sidecars(engines, reference_onnx):
    from fer_edge.models.bundled import REFERENCE_MODEL
    built, _, logs = engines
    for precision, engine in built.items():
        onnx_path, contract = reference_onnx[precision]
        side = json.loads(engine.sidecar.read_text())
        meta = side["engine"]
        assert engine.path.stat().st_size > 100_000
        assert side["artifact"] == {"kind": "engine", "file": engine.path.name, "sha256": sha256_file(engine.path),
                                    "bytes": engine.path.stat().st_size}
        # The contract is the source ONNX's, precision included, and traces back to the shipped weights.
        assert side["contract"] == contract.to_dict()
        assert side["contract"]["precision"] == meta["precision"] == precision
        assert side["contract"]["source_weights_sha256"] == sha256_file(REFERENCE_MODEL)
        assert meta["flavour"] == "tensorrt_rtx" and parse_version(meta["version"]) >= (1,)
        assert meta["strongly_typed"] is True            # read back from the parsed network
        size = contract.input_size
        assert meta["profile"]["input"] == {"min": [1, 1, size, size], "opt": [4, 1, size, size],
                                            "max": [8, 1, size, size]}
        assert meta["io"] == [{"name": "input", "mode": "input", "dtype": "FLOAT", "shape": [-1, 1, size, size]},
                              {"name": "logits", "mode": "output", "dtype": "FLOAT", "shape": [-1, 7]}]
        assert meta["source_onnx"]["sha256"] == sha256_file(onnx_path)
        assert meta["target"]["compute_capabilities"]      # RTX targets, no GPU needed
        assert meta["rebuild_args"][:3] == ["--engine", "--onnx", str(onnx_path)]
        assert "--batch" in meta["rebuild_args"] and "1:4:8" in meta["rebuild_args"]
    assert any("Building engine" in line for line in logs)  # the progress monitor reported phases


@needs_rtx
@needs_export_stack
def test_timing_cache_is_written_then_loaded_by_the_next_build(engines):
    built, cache, _ = engines
    first, second = built["fp32"].engine_meta["timing_cache"], built["fp16"].engine_meta["timing_cache"]
    assert first["loaded_bytes"] == 0 and first["saved_bytes"] > 0
    assert second["loaded_bytes"] == first["saved_bytes"]  # the second build read the first one's file
    key = json.loads(sidecar_path(cache).read_text())["key"]
    assert key["flavour"] == "tensorrt_rtx" and key["version"] == built["fp32"].engine_meta["version"]
    # TensorRT-RTX documents timing caches as no-ops: the sidecar must say so rather than pretend.
    assert first["applied_by_tensorrt"] is False


@needs_rtx
@needs_export_stack
def test_timing_cache_from_another_tensorrt_is_refused(exported, tmp_path):
    from fer_edge.export.engine_build import BuildOptions, EngineBuildError, build_engine
    cache = tmp_path / "old.cache"
    cache.write_bytes(b"x" * 64)
    atomic_write_json(sidecar_path(cache), {"key": {"flavour": "tensorrt", "version": "10.3.0.30"}})
    with pytest.raises(EngineBuildError, match="per TensorRT version and GPU"):
        build_engine(exported["fp32"].path, out_dir=tmp_path, log=lambda m: None, flavour="tensorrt_rtx",
                     options=BuildOptions(batch=(1, 1, 1), timing_cache=str(cache)))
    assert not list(tmp_path.glob("*.engine"))


def _qdq_onnx(exported, out: Path) -> Path:
    """INT8 Q/DQ ONNX by fer-export --int8's recipe (ungated, as the engine-build benchmark makes it)."""
    from fer_edge.benchmarks.engine_build_bench import int8_qdq
    faces, _ = synthetic_faces(16, seed=3)
    return int8_qdq(exported["fp32"].path, exported["fp32"].contract, out / "model_int8.onnx", faces)


@needs_rtx
@needs_export_stack
@pytest.mark.slow
def test_int8_qdq_onnx_parses_and_builds_strongly_typed(exported, tmp_path):
    import onnx
    from fer_edge.export.engine_build import BuildOptions, build_engine
    path = _qdq_onnx(exported, tmp_path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    built = build_engine(path, out_dir=tmp_path, log=lambda m: None, flavour="tensorrt_rtx",
                         options=BuildOptions(batch=(1, 1, 4)))
    assert built.engine_meta["strongly_typed"] is True and built.engine_meta["precision"] == "int8"
    assert json.loads(built.sidecar.read_text())["contract"]["precision"] == "int8"


@needs_rtx
@needs_export_stack
def test_cli_builds_from_existing_onnx(exported, tmp_path, capsys):
    from fer_edge.cli.export import main
    rc = main(["--engine", "--onnx", str(exported["fp16"].path), "--out", str(tmp_path), "--preset", "latency",
               "--trt", "tensorrt_rtx"])
    assert rc == 0
    engine = next(tmp_path.glob("*_rtx_b1-1-1.engine"))
    meta = json.loads(sidecar_path(engine).read_text())["engine"]
    assert meta["build_options"]["preset"] == "latency" and meta["precision"] == "fp16"
    assert f"wrote {engine}" in capsys.readouterr().out


@needs_rtx
@needs_export_stack
@pytest.mark.slow
def test_cli_exports_then_builds_the_fp16_engine(fitted_checkpoint, synthetic_npz, tmp_path, capsys):
    from fer_edge.cli.export import main
    rc = main(["--checkpoint", str(fitted_checkpoint), "--fp16", "--engine", "--trt", "tensorrt_rtx", "--preset",
               "latency", "--out", str(tmp_path), "--parity-data", str(synthetic_npz)])
    assert rc == 0
    engines = sorted(p.name for p in tmp_path.glob("*.engine"))
    assert engines == ["tf_efficientnetv2_b0_32px_fer2013_fp16_rtx_b1-1-1.engine"]  # the lowest precision only
    assert json.loads((tmp_path / (engines[0] + ".json")).read_text())["contract"]["precision"] == "fp16"


def test_cli_refuses_bad_engine_options(tmp_path, capsys):
    from fer_edge.cli.export import main
    with pytest.raises(SystemExit):
        main(["--onnx", "x.onnx"])                       # --onnx without --engine
    assert "add --engine" in capsys.readouterr().err
    assert main(["--engine", "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"0")
    assert main(["--engine", "--onnx", str(onnx), "--dla", "0"]) == 2
    assert "(--dla) needs a static batch" in capsys.readouterr().err


def test_build_options_presets_and_batch_parsing():
    import argparse
    from fer_edge.cli.engine_args import batch_profile
    from fer_edge.export.engine_build import BuildOptionsError, options_with_preset
    assert batch_profile("1:8:32") == (1, 8, 32) and batch_profile("4") == (4, 4, 4)
    for bad in ("1:2", "a:b:c"):
        with pytest.raises(argparse.ArgumentTypeError, match="MIN:OPT:MAX"):
            batch_profile(bad)
    for bad in ("8:4:16", "0:1:1"):
        with pytest.raises(BuildOptionsError, match=r"batch profile .* \(--batch\): need 1 <= min <= opt <= max"):
            options_with_preset(None, batch=batch_profile(bad))
    low = options_with_preset("jetson-lowmem")
    assert (low.batch, low.workspace_mb, low.opt_level) == ((1, 1, 1), 512, 2)
    assert options_with_preset("jetson-lowmem", workspace_mb=1024).workspace_mb == 1024  # explicit wins
    with pytest.raises(BuildOptionsError, match=r"opt_level 7 \(--opt-level\)"):
        options_with_preset(None, opt_level=7)


# ---------------------------------------------------------------- refusing engines before deserialisation
SIDECAR_TRT = {"contract": {}, "artifact": {}, "engine": {
    "flavour": "tensorrt", "version": "10.3.0.30", "version_compatible": False, "hardware_compat": "none",
    "target": {"machine": "aarch64", "gpu_name": "Orin", "compute_capability": "8.7"},
    "source_onnx": {"path": "fer-artifacts/m_fp16.onnx"},
    "rebuild_args": ["--engine", "--onnx", "fer-artifacts/m_fp16.onnx", "--out", "fer-artifacts", "--batch", "1:1:1"]}}
REBUILD = "fer-export --engine --onnx fer-artifacts/m_fp16.onnx --out fer-artifacts --batch 1:1:1"


def _engine(**changes):
    side = json.loads(json.dumps(SIDECAR_TRT))
    side["engine"].update(changes)
    return side


@pytest.mark.parametrize("target,match", [
    (engine_compat.RuntimeTarget("tensorrt", "10.3.0.30", "8.6", "RTX 3090", "aarch64"), "compute capability 8.7"),
    (engine_compat.RuntimeTarget("tensorrt", "10.16.1.11", "8.7", "Orin", "aarch64"), "built with TensorRT 10.3.0.30"),
    (engine_compat.RuntimeTarget("tensorrt_rtx", "1.7.1.116", "8.7", "Orin", "aarch64"), "built with tensorrt"),
    (engine_compat.RuntimeTarget("tensorrt", "10.3.0.30", "8.7", "Orin", "x86_64"), "not portable across platforms"),
    (engine_compat.RuntimeTarget("tensorrt_lean", "10.3.0.30", "8.7", "Orin", "aarch64"), "version-compatible"),
])
def test_mismatched_engine_is_refused_with_rebuild_command(target, match):
    with pytest.raises(ModelLoadError, match=match) as err:
        engine_compat.check_compatibility("m.engine", SIDECAR_TRT, target)
    assert REBUILD in str(err.value)


def test_compatibility_rules_that_allow_loading():
    orin = engine_compat.RuntimeTarget("tensorrt", "10.3.0.30", "8.7", "Orin", "aarch64")
    engine_compat.check_compatibility("m.engine", SIDECAR_TRT, orin)  # same everything
    engine_compat.check_compatibility("m.engine", _engine(version="10.3.0.26"), orin)  # build number only
    vc = _engine(version_compatible=True, version="10.1.0")
    engine_compat.check_compatibility("m.engine", vc, orin)  # VC: older builder, same major
    engine_compat.check_compatibility("m.engine", _engine(version_compatible=True, version="10.3.0"),
                                      engine_compat.RuntimeTarget("tensorrt", "11.4.0", "8.7", "Orin", "aarch64"))
    with pytest.raises(ModelLoadError, match="cannot run"):
        engine_compat.check_compatibility("m.engine", _engine(version_compatible=True, version="10.16.0"), orin)
    ampere = _engine(hardware_compat="ampere+", target={"machine": "x86_64", "compute_capability": "8.6"})
    engine_compat.check_compatibility("m.engine", ampere, engine_compat.RuntimeTarget("tensorrt", "10.3.0", "9.0", "H100", "x86_64"))
    with pytest.raises(ModelLoadError, match="Ampere-or-newer"):
        engine_compat.check_compatibility("m.engine", ampere, engine_compat.RuntimeTarget("tensorrt", "10.3.0", "7.5", "T4", "x86_64"))
    rtx = _engine(flavour="tensorrt_rtx", version="1.7.1.116", target={"machine": "x86_64", "compute_capabilities": ["8.6", "8.9"]})
    engine_compat.check_compatibility("m.engine", rtx, engine_compat.RuntimeTarget("tensorrt_rtx", "1.7.1.116", "8.9", "RTX 4090", "x86_64"))
    with pytest.raises(ModelLoadError, match=r"targets compute capabilities \['8.6', '8.9'\]"):
        engine_compat.check_compatibility("m.engine", rtx, engine_compat.RuntimeTarget("tensorrt_rtx", "1.7.1.116", "12.0", "RTX 5090", "x86_64"))
    with pytest.raises(ModelLoadError, match="do not load across TensorRT-RTX releases"):
        engine_compat.check_compatibility("m.engine", rtx, engine_compat.RuntimeTarget("tensorrt_rtx", "1.8.0", "8.9", "RTX 4090", "x86_64"))


@pytest.fixture
def copied_engine(engines, tmp_path):
    built, _, _ = engines
    src = built["fp16"]
    dst = tmp_path / src.path.name
    shutil.copy(src.path, dst)
    shutil.copy(src.sidecar, sidecar_path(dst))
    return dst


@pytest.fixture
def no_deserialise(monkeypatch):
    """Any attempt to create a TensorRT runtime fails the test: the checks must come first."""
    import tensorrt_rtx

    def forbidden(*a, **k):
        raise AssertionError("TensorRT deserialisation was reached")
    monkeypatch.setattr(tensorrt_rtx, "Runtime", forbidden)


@needs_rtx
@needs_export_stack
def test_truncated_or_corrupt_engine_is_refused_before_deserialisation(copied_engine, no_deserialise):
    from fer_edge.runtime import load
    data = copied_engine.read_bytes()
    copied_engine.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load(copied_engine)
    assert "fer-export --engine --onnx" in str(err.value)
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    copied_engine.write_bytes(bytes(corrupt))
    with pytest.raises(ModelLoadError, match="sha256"):
        load(copied_engine)


@needs_rtx
@needs_export_stack
@pytest.mark.parametrize("change,match", [
    ({"version": "1.5.0.1"}, "do not load across TensorRT-RTX releases"),
    ({"target": {"machine": "aarch64"}}, "not portable across platforms"),
])
def test_real_engine_with_foreign_sidecar_is_refused_before_deserialisation(copied_engine, no_deserialise, change, match):
    from fer_edge.runtime import load
    side = json.loads(sidecar_path(copied_engine).read_text())
    side["engine"].update(change)
    atomic_write_json(sidecar_path(copied_engine), side)
    with pytest.raises(ModelLoadError, match=match) as err:
        load(copied_engine)
    assert f"fer-export --engine --onnx {side['engine']['source_onnx']['path']}" in str(err.value)


@needs_rtx
@needs_export_stack
@pytest.mark.skipif(_gpu_present(), reason="a CUDA GPU is present")
def test_engine_on_a_machine_without_gpu_says_so(copied_engine):
    from fer_edge.runtime import load
    with pytest.raises(BackendUnavailableError, match="GPU"):
        load(copied_engine)


def test_engine_without_sidecar_is_refused(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"plan")
    with pytest.raises(ModelLoadError, match="no engine sidecar"):
        engine_compat.verify_engine_file(path, None)


def test_missing_tensorrt_names_the_install_command(monkeypatch):
    from fer_edge.export.engine_build import import_builder
    for name in ("tensorrt", "tensorrt_lean", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(BackendUnavailableError) as err:
        import_builder()
    # One extra per CUDA major, with the driver each needs; JetPack's own TensorRT on Jetson.
    assert "pip install 'fer-edge[trt-cu12]' (driver R525+) or 'fer-edge[trt-cu13]' (driver R580+)" in str(err.value)
    assert "python3-libnvinfer" in str(err.value)
    with pytest.raises(BackendUnavailableError, match="fer-edge\\[trt-cu12\\]"):
        tensorrt_backend.pick_runtime_flavour(SIDECAR_TRT, None)


def test_missing_cuda_python_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(BackendUnavailableError, match="cuda-python is not installed") as err:
        cuda_buffers.load_cuda_api("cuda-python")
    # The pin per platform: desktop extras per CUDA major, and the cuda-python each JetPack's driver can run.
    for pin in ("'fer-edge[trt-cu12]'", "'fer-edge[trt-cu13]'", "JetPack 6.1/6.2 (CUDA 12.6): pip install "
                "'cuda-python==12.6.*'", "JetPack 6.0 (CUDA 12.2): 'cuda-python==12.2.*'", "'cuda-python==11.8.*'"):
        assert pin in str(err.value)


@pytest.mark.parametrize("other", ["pycuda", "cupy"])
def test_other_cuda_layers_are_refused_naming_cuda_python_per_platform(other):
    """pycuda stays removed (its pushed context must be popped on every thread; it cannot capture CUDA graphs)."""
    with pytest.raises(BackendUnavailableError) as err:
        cuda_buffers.load_cuda_api(other)
    message = str(err.value)
    assert f"cuda={other!r} is not supported" in message and "pass cuda='cuda-python' or leave it out" in message
    assert "JetPack 6.1/6.2 (CUDA 12.6): pip install 'cuda-python==12.6.*'" in message


def test_gpu_check_refuses_without_gpu_stack(monkeypatch, capsys):
    from fer_edge.benchmarks import gpu_check
    for name in ("tensorrt", "tensorrt_lean", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)
    assert gpu_check.main([]) == 3
    assert "cannot run on this machine" in capsys.readouterr().err


# ---------------------------------------------------------------- trtexec statistics
def test_trtexec_percentiles_median_and_cv():
    values = list(range(1, 101))                       # 1..100 ms
    s = latency_summary.summarize(values)
    # trtexec: sorted[max(n-1-int((1-p/100)*n), 0)] in float32 -> p90 = 90, p95 = 95, p99 = 100 (!)
    assert (s["p90"], s["p95"], s["p99"]) == (90.0, 95.0, 100.0)
    assert s["median"] == 50.5 and s["min"] == 1 and s["max"] == 100 and s["mean"] == 50.5
    assert s["cv_percent"] == pytest.approx(np.std(values) / 50.5 * 100)
    assert latency_summary.summarize([3.0, 1.0, 2.0])["median"] == 2.0
    assert latency_summary.percentile([5.0], 99) == 5.0
    ten = latency_summary.summarize(range(10))
    assert ten["p90"] == 8.0 and ten["p99"] == 9.0
    with pytest.raises(ValueError):
        latency_summary.summarize([])


def test_stage_summary_throughput_and_warnings():
    rng = np.random.default_rng(0)
    runs = [{"h2d": 0.02, "gpu_compute": float(c), "d2h": 0.01, "host_latency": 0.03 + float(c), "inference": 0.5}
            for c in rng.normal(0.15, 0.03, 200).clip(0.05)]
    summary = trtexec_stats.summarize_stages(runs)
    assert set(summary) == {"h2d", "gpu_compute", "d2h", "host_latency", "inference"}
    notes = trtexec_stats.warnings_for(summary)
    assert any("unstable" in n for n in notes) and any("1.5x" in n for n in notes)
    assert not any("data transfers" in n for n in notes)
    slow_copy = trtexec_stats.summarize_stages([{"h2d": 1.0, "gpu_compute": 0.1, "d2h": 0.01}] * 3)
    assert any("data transfers" in n for n in trtexec_stats.warnings_for(slow_copy))
    assert trtexec_stats.throughput_qps(1000, 1, 500.0) == 2000.0
    table = trtexec_stats.stages_markdown(summary)
    assert "GPU Compute Time" in table and table.count("\n") == 6


# ---------------------------------------------------------------- buffer / graph layer without a GPU
SPECS = [cuda_buffers.TensorSpec("input", True, np.dtype(np.float16), (-1, 1, 32, 32),
                                 ((1, 1, 32, 32), (4, 1, 32, 32), (8, 1, 32, 32))),
         cuda_buffers.TensorSpec("logits", False, np.dtype(np.float16), (-1, 7))]


def test_shape_and_profile_logic():
    assert cuda_buffers.batch_range(SPECS[0]) == (1, 8)
    assert cuda_buffers.max_shape(SPECS[0], 8) == (8, 1, 32, 32)
    assert cuda_buffers.max_shape(SPECS[1], 8) == (8, 7)
    assert cuda_buffers.input_shape(SPECS[0], 3, 1, 8) == (3, 1, 32, 32)
    with pytest.raises(ContractError, match="outside the engine's profile"):
        cuda_buffers.input_shape(SPECS[0], 9, 1, 8)
    static = [cuda_buffers.TensorSpec("input", True, np.dtype(np.float32), (1, 1, 32, 32)), SPECS[1]]
    assert cuda_buffers.batch_range(static[0]) == (1, 1)
    with pytest.raises(ContractError, match="no optimisation profile"):
        cuda_buffers.batch_range(cuda_buffers.TensorSpec("input", True, np.dtype(np.float32), (-1, 1, 32, 32)))
    assert cuda_buffers.nbytes((8, 7), np.float16) == 112


class FakeCuda:
    """Host-memory stand-in for the CUDA layer, as strict as CUDA where the backend can go wrong.

    'Device' buffers are numpy byte arrays and events count time. The current device is per thread (a new thread
    starts on device 0), so a stream operation from a thread where another device is current fails like CUDA's
    "invalid device context". `fail` makes a capture invalid at cudaStreamEndCapture ("capture"), instantiation
    fail ("instantiate") or every graph launch fail ("launch"). `integrated` models Jetson: mapped pinned host
    memory is the memory the engine reads (the device pointer is the host pointer, as with UVA)."""
    name = "fake"

    def __init__(self, device=0, integrated=False, can_map=True, fail=()):
        self.mem, self.next_ptr, self.calls, self.clock = {}, 0x1000, [], 0.0
        self.device, self.integrated, self.can_map, self.fail = device, integrated, can_map, set(fail)
        self.capturing = None                       # (context, state) pairs recorded while a capture is open
        self.contexts = []                          # every execution context the engine created
        self._thread = threading.local()
        self.use_device()                           # as CudaPythonApi.__init__ does on the loading thread

    def use_device(self):
        self._thread.device = self.device

    def on_device(self, what):
        if getattr(self._thread, "device", 0) != self.device:
            raise cuda_buffers.CudaError(f"{what}: invalid device context (GPU {self.device} is not current on "
                                         f"thread {threading.current_thread().name})")

    def _alloc(self, size):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + size + 256
        self.mem[ptr] = np.zeros(size, np.uint8)
        return ptr

    def maps_host_memory(self):
        return self.integrated, self.can_map

    def device_alloc(self, size):
        self.calls.append(("device_alloc", size))
        return self._alloc(size)

    def pinned_empty(self, shape, dtype, mapped=False):
        if mapped and not self.can_map:
            raise cuda_buffers.CudaError("cudaHostAlloc(cudaHostAllocMapped): not supported on this GPU")
        ptr = self._alloc(cuda_buffers.nbytes(shape, dtype))
        self.calls.append(("pinned", mapped))
        return self.mem[ptr].view(dtype).reshape(shape), ptr, (ptr if mapped else None)

    def device_free(self, ptr):
        self.mem.pop(ptr)

    pinned_free = device_free

    def h2d_async(self, dst, src, size, stream):
        self.on_device("cudaMemcpyAsync")
        self.calls.append(("h2d", size))
        self.mem[dst][:size] = self.mem[src][:size]

    def d2h_async(self, dst, src, size, stream):
        self.on_device("cudaMemcpyAsync")
        self.calls.append(("d2h", size))
        self.mem[dst][:size] = self.mem[src][:size]

    def stream_create(self):
        return "stream"

    def stream_handle(self, stream):
        return 7

    def stream_sync(self, stream):
        self.on_device("cudaStreamSynchronize")

    def event_create(self, blocking):
        return {"t": 0.0}

    def event_record(self, event, stream):
        self.on_device("cudaEventRecord")
        self.clock += 0.25
        event["t"] = self.clock

    def event_wait(self, event, spin):
        pass

    def event_elapsed_ms(self, a, b):
        return b["t"] - a["t"]

    def capture_begin(self, stream):
        self.on_device("cudaStreamBeginCapture")
        self.capturing = []

    def capture_end(self, stream):
        captured, self.capturing = self.capturing, None
        if "capture" in self.fail or not all(ctx.capturable for ctx, _ in captured):
            raise cuda_buffers.CudaError("CUDA call failed: cudaErrorStreamCaptureInvalidated")
        if "instantiate" in self.fail:
            raise cuda_buffers.CudaError("CUDA call failed: cudaErrorInvalidValue (cudaGraphInstantiate)")
        self.calls.append(("graph_captured",))
        return "graph", captured

    def capture_abort(self, stream):
        self.capturing = None

    def graph_launch(self, graph_exec, stream):
        self.on_device("cudaGraphLaunch")
        if "launch" in self.fail:
            raise cuda_buffers.CudaError("CUDA call failed: cudaErrorInvalidValue (cudaGraphLaunch)")
        self.calls.append(("graph_launch",))
        for context, state in graph_exec:
            context.replay(state)

    def graph_free(self, graph, graph_exec):
        self.calls.append(("graph_free",))

    def gpu_identity(self):
        return {"gpu_name": "Fake GPU", "compute_capability": "8.7", "cuda_driver": "12.6"}


class FakeContext:
    """Execution context whose 'kernel' is logits[i, k] = mean(input[i]) + k, on the fake device memory.

    Like TensorRT, a shape change is deferred until the next enqueue flushes it, and a CUDA graph stays valid only
    while its context is unchanged since the capture: replaying it after the context was given another shape (or
    capturing before the shape change was flushed) produces wrong output (-1000), as undefined behaviour may."""
    capturable = True

    def __init__(self, api):
        self.api, self.addr, self.shape, self.state, self.flushed = api, {}, None, 0, True
        self.device = api.device

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        if tuple(shape) != self.shape:
            self.shape, self.state, self.flushed = tuple(shape), self.state + 1, False
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], 7)

    def compute(self, stale=False):
        n = self.shape[0]
        x = self.api.mem[self.addr["input"]].view(np.float16)[: n * 32 * 32].reshape(n, -1).astype(np.float32)
        out = self.api.mem[self.addr["logits"]].view(np.float16)
        out[: n * 7] = -1000 if stale else (x.mean(1, keepdims=True) + np.arange(7)).ravel()

    def replay(self, state):
        self.compute(stale=state != self.state)

    def execute_async_v3(self, stream):
        self.api.on_device("execute_async_v3")
        self.api.calls.append(("enqueue", self.api.capturing is not None))
        if self.api.capturing is not None:
            self.api.capturing.append((self, self.state if self.flushed else None))
            return True
        self.compute()
        self.flushed = True
        return True


class FakeRtxContext(FakeContext):
    """TensorRT-RTX: says whether it is stream-capturable; a capture of one that is not gets invalidated."""
    capturable = False

    def is_stream_capturable(self, stream):
        return self.capturable


def _fake_backend(monkeypatch, cuda_graph=None, api=None, contexts=None, context_type=FakeContext, **options):
    """A TensorRTBackend on FakeCuda and a fake engine (FP16 I/O, batch 1:4:8); `contexts` limits how many
    execution contexts the engine can create before create_execution_context returns None (out of memory)."""
    from fer_edge.runtime.contract import ModelContract
    api = api or FakeCuda()
    monkeypatch.setattr(tensorrt_backend, "verify_engine_file", lambda p, s: None)
    monkeypatch.setattr(tensorrt_backend, "check_compatibility", lambda p, s, t: None)
    monkeypatch.setattr(tensorrt_backend, "load_cuda_api", lambda name, device: api)

    class FakeEngine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return SPECS[i].name

        def get_tensor_mode(self, name):
            return "IN" if name == "input" else "OUT"

        def get_tensor_shape(self, name):
            return next(s.shape for s in SPECS if s.name == name)

        def get_tensor_profile_shape(self, name, idx):
            return SPECS[0].profile

        def get_tensor_dtype(self, name):
            return type("DT", (), {"name": "HALF"})()

        def create_execution_context(self):
            if contexts is not None and len(api.contexts) >= contexts:
                return None
            api.contexts.append(context_type(api))
            return api.contexts[-1]

    class FakeTrt:
        TensorIOMode = type("M", (), {"INPUT": "IN"})

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                return FakeEngine()

    flavour = type("F", (), {"module": FakeTrt, "name": "tensorrt", "version": "10.3.0"})()
    monkeypatch.setattr(tensorrt_backend, "pick_runtime_flavour", lambda s, f: flavour)
    monkeypatch.setattr(tensorrt_backend, "make_logger", lambda trt: type("L", (), {"errors": []})())
    contract = ModelContract(arch="tf_efficientnetv2_b0", labels=list("abcdefg"), input_size=32, channels=1,
                             color_order="GRAY", mean=[0.5], std=[0.5]).validate()
    plan = Path(__file__)  # any readable file stands in for the plan bytes
    backend = tensorrt_backend.TensorRTBackend(plan, contract, {"engine": {"flavour": "tensorrt", "version": "10.3.0"}},
                                               cuda_graph=cuda_graph, **options)
    return backend, api, contract


def expected_logits(x: np.ndarray) -> np.ndarray:
    """What the fake engine computes for a float32 batch (FP16 I/O)."""
    return x.astype(np.float16).astype(np.float32).reshape(len(x), -1).mean(1, keepdims=True) + np.arange(7)


def test_backend_buffers_dtypes_graph_and_timings_with_fake_gpu(monkeypatch):
    backend, api, contract = _fake_backend(monkeypatch)
    # Buffers allocated once, for the profile max, in the engine's dtype (FP16 I/O here).
    allocs = [c for c in api.calls if c[0] == "device_alloc"]
    assert allocs == [("device_alloc", 8 * 32 * 32 * 2), ("device_alloc", 8 * 7 * 2)]
    assert backend.max_batch == 8 and backend.bench_settings["cuda_graph"] is True
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1, 32, 32)).astype(np.float32)
    out = backend.run(x)
    assert out.dtype == np.float32 and out.shape == (3, 7)
    want = x.astype(np.float16).astype(np.float32).reshape(3, -1).mean(1, keepdims=True) + np.arange(7)
    np.testing.assert_allclose(out, want, atol=1e-2)
    assert ("h2d", 3 * 32 * 32 * 2) in api.calls and ("d2h", 3 * 7 * 2) in api.calls   # only the used rows
    # Batch 1: warm-up enqueue, capture, then graph launches (no re-capture on the next call).
    api.calls.clear()
    one = x[:1]
    np.testing.assert_allclose(backend.run(one), want[:1], atol=1e-2)
    np.testing.assert_allclose(backend.run(one), want[:1], atol=1e-2)
    assert api.calls.count(("graph_captured",)) == 1 and api.calls.count(("graph_launch",)) == 2
    times = backend.timed_run(one)
    assert set(times) == {"h2d", "gpu_compute", "d2h", "host_latency", "inference"}
    assert times["h2d"] == times["gpu_compute"] == times["d2h"] == 0.25
    assert times["host_latency"] == pytest.approx(0.75)
    with pytest.raises(ContractError, match="outside the engine's profile"):
        backend.run(np.zeros((9, 1, 32, 32), np.float32))
    allocs_after = [c for c in api.calls if c[0] == "device_alloc"]
    assert allocs_after == []                                  # never reallocated per call
    backend.close()


def test_fermodel_splits_batches_beyond_engine_max(monkeypatch):
    from fer_edge.runtime.model import FerModel
    backend, api, contract = _fake_backend(monkeypatch, cuda_graph=False)
    seen = []
    real_run = backend.run
    monkeypatch.setattr(backend, "run", lambda b: seen.append(len(b)) or real_run(b))
    model = FerModel(Path("m.engine"), contract, backend, {})
    faces, _ = synthetic_faces(19)
    preds = model.predict(list(faces))
    assert len(preds) == 19 and seen == [8, 8, 3]
    assert not any(c[0] == "graph_launch" for c in api.calls)   # cuda_graph=False honoured


def test_with_block_frees_the_engine_buffers_and_graph(monkeypatch):
    from fer_edge.runtime.model import FerModel
    backend, api, contract = _fake_backend(monkeypatch)
    with FerModel(Path("m.engine"), contract, backend, {}) as model:
        assert len(model.predict(synthetic_faces(1)[0])) == 1        # batch 1: captures the CUDA graph
        assert api.mem
    assert model.closed and api.mem == {}                             # every pinned and device buffer freed
    with pytest.raises(ModelLoadError, match="closed.*load it again"):
        model.predict(synthetic_faces(1)[0])
    model.close()                                                     # closing twice is harmless


def test_unknown_engine_option_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown engine option"):
        tensorrt_backend.load_engine_backend(tmp_path / "m.engine", None, {}, cuda_graphs=True)
