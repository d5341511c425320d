"""Engine-build checks for the first real use on a GPU (issue #10, build side): hardware compatibility per TensorRT
version and platform, the GPU read without cuda-python, DLA vs the source's precision, engine names, the
--int8-target cpu refusal and the opt-in progress monitor. Real builds use tensorrt-rtx on the CPU; TensorRT 10.x
and Jetson are stood in for by a module proxy and a fake /proc/device-tree.
"""
from __future__ import annotations

import json
import sys
import types

import pytest

from engine_sources import engine_sources, needs_export_stack, needs_rtx  # noqa: F401 (fixture)
from fer_edge.export import engine_target
from fer_edge.export.engine_build import BuildOptions, BuildOptionsError, EngineBuildError, engine_path_for
from fer_edge.export.engine_checks import check_dla, check_hardware_compat
from fer_edge.models.artifact_writer import atomic_write_json, embed_contract, engine_name
from fer_edge.runtime.artifact_io import sidecar_path
from fer_edge.runtime.errors import BackendUnavailableError
from fer_edge.runtime.tensorrt.trt_import import TrtFlavour


def _trt_10_3_stand_in():
    """tensorrt_rtx with TensorRT 10.3's HardwareCompatibilityLevel (no SAME_COMPUTE_CAPABILITY, which 10.9 added),
    posing as `tensorrt`: the parts of a build before TensorRT runs are the same."""
    import tensorrt_rtx

    class Trt103(types.ModuleType):
        HardwareCompatibilityLevel = types.SimpleNamespace(
            NONE=tensorrt_rtx.HardwareCompatibilityLevel.NONE,
            AMPERE_PLUS=tensorrt_rtx.HardwareCompatibilityLevel.AMPERE_PLUS)

        def __getattr__(self, name):
            return getattr(tensorrt_rtx, name)
    return TrtFlavour(Trt103("tensorrt"), "tensorrt", "10.3.0.30")


@pytest.fixture
def jetson(tmp_path, monkeypatch):
    """This machine as an AGX Orin: its device tree (JetPack 6 has no NVML), and no cuda-python."""
    tree = tmp_path / "device-tree"
    tree.mkdir()
    (tree / "compatible").write_bytes(b"nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00")
    (tree / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(engine_target, "DEVICE_TREE", tree)
    for name in ("cuda", "cuda.bindings", "pynvml"):
        monkeypatch.setitem(sys.modules, name, None)
    return tree


# ---------------------------------------------------------------- 1. hardware compatibility
@needs_rtx
@needs_export_stack
def test_same_cc_on_tensorrt_10_3_is_refused_with_the_fix_before_building(engine_sources, tmp_path, monkeypatch,
                                                                          capsys):
    from fer_edge.cli.export import main
    from fer_edge.export import engine_build
    monkeypatch.setattr(engine_build, "import_flavour", lambda name: _trt_10_3_stand_in())
    rc = main(["--engine", "--onnx", str(engine_sources["fp16"]), "--out", str(tmp_path), "--trt", "tensorrt",
               "--hardware-compat", "same-cc"])
    err = capsys.readouterr().err
    assert rc == 2, err        # before: a raw AttributeError traceback from getattr(HardwareCompatibilityLevel, ...)
    assert "same-cc needs TensorRT >= 10.9" in err and "tensorrt 10.3.0.30" in err and "ampere+" in err
    assert not list(tmp_path.glob("*.engine*"))


def test_hardware_compat_needs_a_recent_enough_gpu_and_is_refused_on_jetson(jetson, monkeypatch):
    trt = types.SimpleNamespace(HardwareCompatibilityLevel=types.SimpleNamespace(AMPERE_PLUS=1,
                                                                                   SAME_COMPUTE_CAPABILITY=2))
    trt_10_9 = TrtFlavour(trt, "tensorrt", "10.9.0.34")
    with pytest.raises(BuildOptionsError, match="not support hardware-compatible engines on JetPack"):
        check_hardware_compat(trt_10_9, BuildOptions(hardware_compat="ampere+"))
    monkeypatch.setattr(engine_target, "DEVICE_TREE", jetson.parent / "no-such-tree")   # a desktop now
    check_hardware_compat(trt_10_9, BuildOptions(hardware_compat="same-cc"), {"compute_capability": "8.9"})
    with pytest.raises(BuildOptionsError, match=r"compute capability 7\.5 or newer.*V100.*7\.0"):
        check_hardware_compat(trt_10_9, BuildOptions(hardware_compat="same-cc"),
                              {"gpu_name": "V100", "compute_capability": "7.0"})
    with pytest.raises(BuildOptionsError, match=r"ampere\+: .*8\.0 or newer.*T4.*7\.5"):
        check_hardware_compat(trt_10_9, BuildOptions(hardware_compat="ampere+"),
                              {"gpu_name": "T4", "compute_capability": "7.5"})
    with pytest.raises(BuildOptionsError, match="exclude each other"):
        BuildOptions(batch=(1, 1, 1), dla_core=0, hardware_compat="ampere+").validate()


@needs_rtx
@needs_export_stack
def test_hardware_compat_is_refused_on_tensorrt_rtx_which_ignores_it(engine_sources, tmp_path, capsys):
    """TensorRT-RTX logs "setHardwareCompatibilityLevel() is unsupported" and builds anyway, so the sidecar said
    ampere+ about an engine that is not."""
    from fer_edge.cli.export import main
    rc = main(["--engine", "--onnx", str(engine_sources["fp16"]), "--out", str(tmp_path), "--trt", "tensorrt_rtx",
               "--preset", "latency", "--hardware-compat", "ampere+"])
    assert rc == 2 and "TensorRT-RTX does not support hardware compatibility" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.engine"))


# ---------------------------------------------------------------- 4. the GPU, read without cuda-python
def test_jetson_gpu_is_read_from_the_device_tree_without_cuda_python(jetson):
    target = engine_target.build_target(TrtFlavour(types.SimpleNamespace(), "tensorrt", "10.3.0.30"), None,
                                        log=pytest.fail)
    assert target["gpu_name"] == "Orin" and target["compute_capability"] == "8.7"
    assert target["gpu_source"] == "device-tree" and target["board"] == "NVIDIA Jetson AGX Orin Developer Kit"
    (jetson / "compatible").write_bytes(b"nvidia,p9999\x00nvidia,tegra999\x00")
    with pytest.raises(BackendUnavailableError) as err:
        engine_target.local_gpu()
    text = str(err.value)
    assert "unknown SoC ['nvidia,tegra999']" in text and "pynvml is not installed" in text and "cuda-python" in text


class _FakeNvml(types.ModuleType):
    """pynvml's API (nvidia-ml-py) over a list of (name, (major, minor)) GPUs."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus, init_error=None):
        super().__init__("pynvml")
        self.gpus, self.init_error, self.shutdowns = gpus, init_error, 0

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle][0].encode()     # older pynvml returns bytes

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.gpus[handle][1]

    def nvmlSystemGetCudaDriverVersion(self):
        return 12080


def test_desktop_gpu_is_read_through_nvml_when_it_is_unambiguous(monkeypatch, tmp_path):
    from fer_edge.runtime.tensorrt.gpu_info import nvml_identity
    monkeypatch.setattr(engine_target, "DEVICE_TREE", tmp_path)             # not a Jetson
    monkeypatch.setitem(sys.modules, "cuda", None)                           # and no cuda-python
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    nvml = _FakeNvml([("NVIDIA H200", (9, 0)), ("NVIDIA H200", (9, 0))])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert engine_target.local_gpu() == {"gpu_name": "NVIDIA H200", "compute_capability": "9.0",
                                         "cuda_driver": "12.8", "gpu_source": "nvml"}
    assert nvml.shutdowns == 1
    # NVML numbers GPUs by PCI bus, CUDA fastest first: with two kinds, NVML cannot say which one CUDA builds on.
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([("NVIDIA RTX A2000", (8, 6)), ("NVIDIA L40S", (8, 9))]))
    with pytest.raises(RuntimeError, match="different kinds"):
        nvml_identity()
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([], init_error="NVML Shared Library Not Found"))
    with pytest.raises(RuntimeError, match="NVML unavailable .*Library Not Found"):
        nvml_identity()


def test_nvml_functions_used_exist_in_the_real_pynvml():
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName",
                 "nvmlDeviceGetCudaComputeCapability", "nvmlSystemGetCudaDriverVersion", "NVMLError"):
        assert hasattr(pynvml, name), name
    assert set(_FakeNvml.__dict__) - set(dir(pynvml)) <= {"__init__", "__doc__", "__module__", "gpus", "init_error",
                                                          "shutdowns"}


def test_a_build_without_any_gpu_source_goes_on_and_says_what_the_sidecar_loses(monkeypatch):
    def nothing(reason):
        def read():
            raise RuntimeError(reason)
        return read
    for name in list(engine_target.SOURCES):
        monkeypatch.setitem(engine_target.SOURCES, name, nothing(f"{name} says no"))
    logs = []
    target = engine_target.build_target(TrtFlavour(types.SimpleNamespace(), "tensorrt", "10.3.0.30"), None,
                                        logs.append)
    assert target["compute_capability"] is None and target["gpu_source"] is None
    text = "\n".join(logs)
    assert all(f"{name} says no" in text for name in engine_target.SOURCES)
    assert "built anyway" in text and "cannot refuse it on another GPU" in text and "nvidia-ml-py" in text


# ---------------------------------------------------------------- 9. DLA and engine names
@needs_rtx
@needs_export_stack
def test_dla_with_an_fp32_onnx_is_refused_before_building_or_exporting(engine_sources, tmp_path, capsys):
    from fer_edge.cli.export import main
    rc = main(["--engine", "--onnx", str(engine_sources["fp32"]), "--out", str(tmp_path), "--trt", "tensorrt_rtx",
               "--batch", "1", "--dla", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "is FP32, and DLA runs only FP16 and INT8" in err and "fer-export --fp16" in err, err
    out = tmp_path / "export"
    rc = main(["--engine", "--trt", "tensorrt_rtx", "--batch", "1", "--dla", "0", "--out", str(out)])
    assert rc == 2 and "add --fp16 or --int8" in capsys.readouterr().err
    assert not out.exists()                       # refused before the export wrote anything


def test_dla_with_an_int8_onnx_says_what_falls_back_to_the_gpu():
    logs = []
    check_dla("fp16", BuildOptions(batch=(1, 1, 1), dla_core=0), "m_fp16.onnx", logs.append)
    assert logs == []
    check_dla("int8", BuildOptions(batch=(1, 1, 1), dla_core=1), "m_int8.onnx", logs.append)
    assert "FP32 ones fall back to the GPU" in logs[0]


def test_engine_names_keep_dla_hardware_compat_and_version_compatible_builds_apart(tmp_path):
    onnx = tmp_path / "m_fp16.onnx"
    static = (1, 1, 1)
    names = {engine_path_for(onnx, tmp_path, "tensorrt", BuildOptions(batch=static, **kw)).name for kw in (
        {}, {"dla_core": 0}, {"dla_core": 1}, {"hardware_compat": "ampere+"}, {"hardware_compat": "same-cc"},
        {"version_compatible": True})}
    assert names == {"m_fp16_trt_b1-1-1.engine", "m_fp16_trt_b1-1-1_dla0.engine", "m_fp16_trt_b1-1-1_dla1.engine",
                     "m_fp16_trt_b1-1-1_ampere-plus.engine", "m_fp16_trt_b1-1-1_same-cc.engine",
                     "m_fp16_trt_b1-1-1_vc.engine"}
    assert engine_name("m_int8", "rtx", (1, 8, 32)) == "m_int8_rtx_b1-8-32.engine"


# ---------------------------------------------------------------- 11. --int8-target cpu
@needs_rtx
@needs_export_stack
def test_cpu_target_int8_onnx_is_refused_before_parsing_naming_the_files_to_build_from(engine_sources, tmp_path):
    import onnx
    from fer_edge.calibration import quantize
    from fer_edge.cli.export import main
    from fer_edge.export.engine_build import build_engine
    from fer_edge.runtime.preprocess import prepare_batch
    from conftest import synthetic_faces
    contract = engine_sources["contract"]
    fp32 = engine_sources["fp32"].read_bytes()
    faces, _ = synthetic_faces(8, seed=4)
    ranges = quantize.compute_ranges(fp32, "input", prepare_batch(list(faces), contract), "max")
    proto = onnx.load_from_string(quantize.quantize(fp32, ranges, "max", target="cpu"))
    int8 = contract.with_precision("int8")
    embed_contract(proto, int8)
    path = engine_sources["dir"] / "cpu_target_int8.onnx"     # next to the fixture's fp16/fp32 ONNX
    path.write_bytes(proto.SerializeToString())
    atomic_write_json(sidecar_path(path), {"contract": int8.to_dict(), "artifact": {"quantization": {"target": "cpu"}}})
    with pytest.raises(EngineBuildError) as err:
        build_engine(path, out_dir=tmp_path, flavour="tensorrt_rtx", log=lambda m: None)
    text = str(err.value)
    assert "--int8-target cpu" in text and str(engine_sources["fp16"]) in text and "fer-export --int8" in text
    sidecar_path(path).unlink()                   # no sidecar: the uint8 zero points in the graph give it away
    with pytest.raises(EngineBuildError, match="quantized for ONNX Runtime on the CPU"):
        build_engine(path, out_dir=tmp_path, flavour="tensorrt_rtx", log=lambda m: None)
    assert not list(tmp_path.glob("*.engine"))
    # fer-export --int8 --int8-target cpu --engine is refused before the export
    rc = main(["--int8", "--int8-target", "cpu", "--engine", "--trt", "tensorrt_rtx", "--out", str(tmp_path / "x")])
    assert rc == 2 and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- 14. progress monitor opt-in
def test_progress_monitor_only_on_a_terminal_or_when_asked():
    from fer_edge.export.engine_progress import wants_monitor
    tty, pipe = types.SimpleNamespace(isatty=lambda: True), types.SimpleNamespace(isatty=lambda: False)
    assert wants_monitor(None, tty) and not wants_monitor(None, pipe)
    assert wants_monitor(True, pipe) and not wants_monitor(False, tty)


@needs_rtx
@needs_export_stack
def test_a_build_without_a_terminal_attaches_no_progress_monitor(engine_sources, tmp_path, capsys):
    from fer_edge.cli.export import main
    rc = main(["--engine", "--onnx", str(engine_sources["fp16"]), "--out", str(tmp_path), "--trt", "tensorrt_rtx",
               "--preset", "latency"])                # pytest's stdout is no terminal
    out = capsys.readouterr().out
    assert rc == 0 and "progress: elapsed time every 10 s" in out and "Building engine" not in out
    engine = next(tmp_path.glob("*_rtx_b1-1-1.engine"))
    meta = json.loads(sidecar_path(engine).read_text())["engine"]
    assert meta["builder_flags"]["progress_monitor"] is False and meta["build_options"]["progress"] is None
    rc = main(["--engine", "--onnx", str(engine_sources["fp16"]), "--out", str(tmp_path), "--trt", "tensorrt_rtx",
               "--preset", "latency", "--build-progress"])
    assert rc == 0 and "Building engine" in capsys.readouterr().out   # TensorRT's phases, when asked
    assert json.loads(sidecar_path(engine).read_text())["engine"]["builder_flags"]["progress_monitor"] is True


# ---------------------------------------------------------------- TensorRT 8.6 (JetPack 6.0) and the opset-19 INT8
@needs_export_stack
def test_an_opset_19_int8_file_is_refused_on_tensorrt_8_6_naming_the_float32_recipe(engine_sources):
    import onnx
    from fer_edge.export.engine_checks import check_opset
    int8 = engine_sources["int8"]
    opset = max(o.version for o in onnx.load(str(int8), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 19, "the default INT8 recipe is the FP16-scale graph"
    with pytest.raises(EngineBuildError, match=r"opset 19.*TensorRT 8\.6\.2.*--int8-float fp32"):
        check_opset(int8, TrtFlavour(None, "tensorrt", "8.6.2"))
    check_opset(int8, TrtFlavour(None, "tensorrt", "10.3.0"))          # JetPack 6.1+ parses it
    check_opset(engine_sources["fp32"], TrtFlavour(None, "tensorrt", "8.6.2"))   # opset 17 builds on 8.6


def test_int8_float_flag_selects_the_recipe():
    from fer_edge.cli.export import build_parser
    from fer_edge.cli.int8_args import options_from_args
    for flag, dtype, small_float in (([], "float16", True), (["--int8-float", "fp32"], "float32", True),
                                     (["--int8-small-layers", "int8"], "float16", False)):
        recipe = options_from_args(build_parser().parse_args(["--int8", *flag])).recipe
        assert (recipe.float_dtype, recipe.float_small_layers) == (dtype, small_float)


@needs_export_stack
def test_a_corrupt_onnx_is_a_clear_build_error_not_a_protobuf_traceback(tmp_path):
    from fer_edge.export.engine_checks import check_opset
    junk = tmp_path / "model_int8.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(EngineBuildError, match="not a readable ONNX file.*Re-export it with fer-export"):
        check_opset(junk, TrtFlavour(None, "tensorrt", "8.6.2"))
