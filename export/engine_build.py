"""Explicit-precision ONNX -> serialized TensorRT engine + sidecar. The Python API behind `fer-export --engine`.

One build path (docs/tensorrt.md): the ONNX already says which ops are FP32/FP16/INT8 (FP16 graph, or
INT8 Q/DQ), so on TensorRT >= 9.1 and TensorRT-RTX the network is STRONGLY_TYPED and no precision
flags are set. Only TensorRT 8.6 (JetPack 6.0) takes the weakly typed path, where the precision comes
from builder flags chosen from the ONNX's contract (FP16 flag for fp16, INT8+FP16 for Q/DQ).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import fer_edge
from fer_edge.models.artifact_writer import atomic_write_bytes, atomic_write_json, remove_stale_temp_files, write_artifact
from fer_edge.runtime.artifact_io import read_sidecar, sha256_file, sidecar_path
from fer_edge.runtime.contract import METADATA_KEY, ModelContract
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, FerEdgeError, ModelLoadError
from fer_edge.runtime.tensorrt.cuda_buffers import load_cuda_api
from fer_edge.runtime.tensorrt.trt_import import (INSTALL_HINTS, TrtFlavour, import_first, import_flavour, make_logger,
                                                  parse_version)

BUILD_ORDER = ("tensorrt", "tensorrt_rtx")              # tensorrt_lean has no Builder
HARDWARE_COMPAT_LEVELS = ("none", "ampere+", "same-cc")


class EngineBuildError(FerEdgeError, RuntimeError):
    """TensorRT could not parse or build the model; nothing was written."""


# ------------------------------------------------------------------ what the installed TensorRT can build
def import_builder(flavour: str = "auto") -> TrtFlavour:
    """A flavour that can build engines: `tensorrt`, else `tensorrt_rtx` (which builds without a GPU)."""
    chosen = import_first(BUILD_ORDER, "building engines") if flavour in (None, "auto") else import_flavour(flavour)
    if not (hasattr(chosen.module, "Builder") and hasattr(chosen.module, "OnnxParser")):
        raise BackendUnavailableError(f"{chosen.describe()} has no Builder/OnnxParser (a runtime-only package); "
                                      f"install {INSTALL_HINTS['tensorrt']}")
    return chosen


def supports_strong_typing(flavour: TrtFlavour) -> bool:
    """STRONGLY_TYPED exists from TensorRT 9.1 and in every TensorRT-RTX."""
    return flavour.name == "tensorrt_rtx" or parse_version(flavour.version)[:2] >= (9, 1)


def has_precision_flags(flavour: TrtFlavour) -> bool:
    """BuilderFlag.FP16/INT8 (weak typing) exist up to TensorRT 10.x; removed in 11 and absent in RTX."""
    flags = getattr(flavour.module, "BuilderFlag", None)
    return flags is not None and hasattr(flags, "FP16") and hasattr(flags, "INT8")


def local_gpu() -> Dict[str, Optional[str]]:
    """Name, compute capability and driver of GPU 0, or BackendUnavailableError when there is none."""
    return load_cuda_api("cuda-python").gpu_identity()


PRESETS: Dict[str, Dict[str, object]] = {
    # Static batch 1: the robot's latency case (and a prerequisite for CUDA graphs and DLA).
    "latency": {"batch": (1, 1, 1)},
    # 4-8 GB Jetsons: the builder's workspace defaults to all of the shared RAM; cap it and search less.
    "jetson-lowmem": {"batch": (1, 1, 1), "workspace_mb": 512, "opt_level": 2},
}
DEFAULT_BATCH = (1, 8, 32)


class BuildOptionsError(FerEdgeError, ValueError):
    """Engine build options that cannot work; each is named as a BuildOptions field and as its fer-export flag."""


@dataclass
class BuildOptions:
    batch: Tuple[int, int, int] = DEFAULT_BATCH     # optimisation profile min:opt:max
    workspace_mb: Optional[int] = None              # None = TensorRT's default (the device memory)
    opt_level: Optional[int] = None                 # builder_optimization_level 0..5 (None = default 3)
    hardware_compat: str = "none"                   # none | ampere+ | same-cc
    dla_core: Optional[int] = None                  # DLA core with GPU fallback (Jetson AGX/NX)
    timing_cache: Optional[str] = None              # file reused across builds
    version_compatible: bool = False                # plan loadable by newer TensorRT / tensorrt_lean
    preset: Optional[str] = None

    def validate(self) -> "BuildOptions":
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise BuildOptionsError(f"batch profile {lo}:{opt}:{hi} (--batch): need 1 <= min <= opt <= max, "
                                    "e.g. 1:8:32 (or 1:1:1)")
        if self.opt_level is not None and not 0 <= self.opt_level <= 5:
            raise BuildOptionsError(f"opt_level {self.opt_level} (--opt-level): must be 0..5")
        if self.workspace_mb is not None and self.workspace_mb < 16:
            raise BuildOptionsError(f"workspace_mb {self.workspace_mb} (--workspace) is too small; use at least 16 "
                                    "(Jetson: 256-1024)")
        if self.hardware_compat not in HARDWARE_COMPAT_LEVELS:
            raise BuildOptionsError(f"hardware_compat {self.hardware_compat!r} (--hardware-compat): choose one of "
                                    f"{HARDWARE_COMPAT_LEVELS}")
        if self.dla_core is not None and (lo, opt) != (hi, hi):
            raise BuildOptionsError(f"dla_core (--dla) needs a static batch (min=opt=max) but the batch profile is "
                                    f"{lo}:{opt}:{hi}; use --preset latency or --batch 1:1:1")
        return self


def options_with_preset(preset: Optional[str], **explicit) -> BuildOptions:
    """Preset values first, then every explicitly given (non-None) option on top."""
    values: Dict[str, object] = {}
    if preset:
        if preset not in PRESETS:
            raise BuildOptionsError(f"preset {preset!r} (--preset): choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in explicit.items() if v is not None})
    return BuildOptions(preset=preset, **values).validate()


def rebuild_args(onnx_path: Path, out_dir: Path, options: BuildOptions, flavour: str) -> List[str]:
    """fer-export arguments that reproduce this build (printed by the runtime when an engine must be rebuilt)."""
    args = ["--engine", "--onnx", str(onnx_path), "--out", str(out_dir), "--batch", ":".join(map(str, options.batch))]
    if options.workspace_mb:
        args += ["--workspace", str(options.workspace_mb)]
    if options.opt_level is not None:
        args += ["--opt-level", str(options.opt_level)]
    if options.hardware_compat != "none":
        args += ["--hardware-compat", options.hardware_compat]
    if options.dla_core is not None:
        args += ["--dla", str(options.dla_core)]
    if options.timing_cache:
        args += ["--timing-cache", str(options.timing_cache)]
    if options.version_compatible:
        args += ["--version-compatible"]
    if flavour == "tensorrt_rtx":
        args += ["--trt", "tensorrt_rtx"]
    return args


# ------------------------------------------------------------------ source ONNX
def source_contract(onnx_path: Path) -> ModelContract:
    """The source ONNX's contract (sidecar first, else metadata_props); its precision becomes the engine's."""
    sidecar = read_sidecar(onnx_path)
    if sidecar is not None:
        return ModelContract.from_dict(sidecar["contract"], source=str(sidecar_path(onnx_path)))
    try:
        import onnx
    except ImportError:
        raise ContractError(f"{onnx_path}: no sidecar {sidecar_path(onnx_path).name}; install the [export] extra "
                            "to read the contract from the model, or re-export it with fer-export") from None
    proto = onnx.load(str(onnx_path), load_external_data=False)
    text = {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)
    if text is None:
        raise ContractError(f"{onnx_path}: no fer-edge contract (no sidecar, no metadata); export it with fer-export")
    return ModelContract.from_json(text, source=f"{onnx_path} (metadata_props)")


# ------------------------------------------------------------------ progress
def make_progress_monitor(trt, log: Callable[[str], None]):
    """trt.IProgressMonitor printing top-level phases with elapsed time; None when the API lacks it."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.start = time.perf_counter()
            self.depth: Dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            if self.depth[phase_name] <= 1:
                log(f"  [{time.perf_counter() - self.start:6.1f}s] {'  ' * self.depth[phase_name]}{phase_name}")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)
    return Monitor()


class _Spinner:
    """Elapsed-time ticker for TensorRT versions without IProgressMonitor (8.6)."""

    def __init__(self, log: Callable[[str], None], every_s: float = 10.0):
        self.log, self.every_s, self._stop = log, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        start = time.perf_counter()
        while not self._stop.wait(self.every_s):
            self.log(f"  still building... {time.perf_counter() - start:.0f}s")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ timing cache
def _cache_key(flavour: TrtFlavour, target: Dict[str, object]) -> Dict[str, object]:
    return {"flavour": flavour.name, "version": flavour.version, "gpu_name": target.get("gpu_name"),
            "compute_capability": target.get("compute_capability")}


def load_timing_cache(path: Optional[str], key: Dict[str, object]) -> bytes:
    """Bytes of an existing cache written for the same TensorRT and GPU (its .json says which), or b''."""
    if not path or not Path(path).exists():
        return b""
    meta_path = sidecar_path(path)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is None or meta.get("key") != key:
        raise EngineBuildError(f"--timing-cache {path} was written for {meta.get('key') if meta else 'an unknown build'}, "
                               f"not for {key}. Timing caches are per TensorRT version and GPU: pass another "
                               "--timing-cache file or delete this one.")
    return Path(path).read_bytes()


def save_timing_cache(path: str, data: bytes, key: Dict[str, object]) -> None:
    atomic_write_bytes(path, data)
    atomic_write_json(sidecar_path(path), {"key": key, "bytes": len(data), "sha256": sha256_file(path)})


# ------------------------------------------------------------------ build
@dataclass
class BuiltEngine:
    path: Path
    sidecar: Path
    contract: ModelContract
    engine_meta: Dict[str, object] = field(default_factory=dict)


def build_target(flavour: TrtFlavour, config) -> Dict[str, object]:
    """What the engine is built for: the local GPU (TensorRT), or RTX compute-capability targets (no GPU needed)."""
    target: Dict[str, object] = {"machine": platform.machine()}
    if flavour.name == "tensorrt_rtx":
        ccs = [str(config.get_compute_capability(i)).split(".")[-1] for i in range(config.num_compute_capabilities)]
        # SM86 -> "8.6"; an empty list means TensorRT-RTX's default set (8.6, 8.9, 12.0 per its docs).
        target["compute_capabilities"] = [f"{c[2:-1]}.{c[-1]}" for c in ccs if c.startswith("SM")] or "default"
        return target
    target.update(local_gpu())
    return target


def _configure(trt, flavour: TrtFlavour, builder, network, config, contract: ModelContract, options: BuildOptions,
               strongly_typed: bool, log) -> Dict[str, object]:
    """Apply options to the builder config; returns the flags actually set (for the sidecar)."""
    applied: Dict[str, object] = {}
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.hardware_compat != "none":
        level = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[options.hardware_compat]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if not strongly_typed:  # TensorRT 8.6: precision from flags, chosen by the ONNX's precision
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[contract.precision]
        for name in flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
        applied["precision_flags"] = flags
    if options.dla_core is not None:
        cores = getattr(builder, "num_DLA_cores", 0)
        if options.dla_core >= cores:
            raise EngineBuildError(f"--dla {options.dla_core}: this device has {cores} DLA core(s) "
                                   "(DLA exists on Jetson AGX Orin / Orin NX only)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # unsupported layers run on the GPU
        applied["dla"] = {"core": options.dla_core, "gpu_fallback": True}
    monitor = make_progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    applied["_monitor"] = monitor
    return applied


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool, logger):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    if not strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # 8.6 still needs it
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: " + " | ".join(errors[:5])
                               + ". Check the opset (TensorRT 8.6 parses <= 17) and that the ONNX is complete.")
    return network, parser


def _io_summary(network) -> List[Dict[str, object]]:
    tensors = [(network.get_input(i), "input") for i in range(network.num_inputs)]
    tensors += [(network.get_output(i), "output") for i in range(network.num_outputs)]
    return [{"name": t.name, "mode": mode, "dtype": getattr(t.dtype, "name", str(t.dtype)),
             "shape": [int(d) for d in t.shape]} for t, mode in tensors]


def engine_path_for(onnx_path: Path, out_dir: Path, flavour: str, batch: Tuple[int, int, int]) -> Path:
    tag = "rtx" if flavour == "tensorrt_rtx" else "trt"
    return out_dir / f"{onnx_path.stem}_{tag}_b{batch[0]}-{batch[1]}-{batch[2]}.engine"


def build_engine(onnx_path: os.PathLike, out_dir: Optional[os.PathLike] = None,
                 options: Optional[BuildOptions] = None, flavour: str = "auto", output: Optional[os.PathLike] = None,
                 log: Callable[[str], None] = print) -> BuiltEngine:
    """Build a serialized engine from an explicit-precision fer-edge ONNX and write it with its sidecar.

    out_dir: folder for <onnx stem>_<trt|rtx>_b<min>-<opt>-<max>.engine (default: the ONNX's folder);
    output: exact engine path instead. flavour: auto (tensorrt, else tensorrt_rtx), tensorrt or tensorrt_rtx.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: no such ONNX file; export one first with `fer-export` (--fp16/--int8)")
    options = (options or BuildOptions()).validate()
    contract = source_contract(onnx_path)
    trt_flavour = import_builder(flavour)
    trt = trt_flavour.module
    strongly_typed = supports_strong_typing(trt_flavour)
    if not strongly_typed and not has_precision_flags(trt_flavour):  # pragma: no cover - no such release
        raise EngineBuildError(f"{trt_flavour.describe()} has neither strong typing nor precision flags")
    out_dir = Path(out_dir) if out_dir is not None else onnx_path.parent
    engine_path = Path(output) if output else engine_path_for(onnx_path, out_dir, trt_flavour.name, options.batch)
    log(f"building {engine_path.name} from {onnx_path.name} ({contract.precision}, {trt_flavour.describe()}, "
        f"{'strongly typed' if strongly_typed else 'weakly typed'}, batch {options.batch})")

    logger = make_logger(trt, warn=log)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, onnx_path, strongly_typed, logger)
    # Recorded from the parsed network itself, not from what we asked for.
    network_typed = bool(strongly_typed and network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    if network.num_inputs != 1 or network.get_input(0).name != contract.input_name:
        raise EngineBuildError(f"{onnx_path}: expected one input named {contract.input_name!r}, found "
                               f"{[network.get_input(i).name for i in range(network.num_inputs)]}")
    input_dims = [int(d) for d in network.get_input(0).shape]
    want = [contract.channels, contract.input_size, contract.input_size]
    if input_dims[1:] != want:
        raise EngineBuildError(f"{onnx_path}: input dims {input_dims} do not match the contract N x {want}")
    if input_dims[0] >= 0 and options.batch != (input_dims[0],) * 3:
        raise EngineBuildError(f"{onnx_path}: the ONNX has a static batch of {input_dims[0]}; use --batch "
                               f"{input_dims[0]} or export with a dynamic batch")

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shapes = [tuple([b] + want) for b in options.batch]
    profile.set_shape(contract.input_name, *shapes)
    config.add_optimization_profile(profile)
    applied = _configure(trt, trt_flavour, builder, network, config, contract, options, strongly_typed, log)
    monitor = applied.pop("_monitor")
    target = build_target(trt_flavour, config)

    cache_key = _cache_key(trt_flavour, target)
    cache_bytes = load_timing_cache(options.timing_cache, cache_key)
    cache_info: Optional[Dict[str, object]] = None
    if options.timing_cache:
        # TensorRT-RTX keeps the API but documents timing-cache operations as no-ops (RTX >= 1.2): the file
        # round-trips, TensorRT-RTX just does not use it.
        applied_by_trt = trt_flavour.name != "tensorrt_rtx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cache = config.create_timing_cache(cache_bytes if applied_by_trt else b"")
            config.set_timing_cache(cache, False)
        cache_info = {"path": str(options.timing_cache), "loaded_bytes": len(cache_bytes),
                      "applied_by_tensorrt": applied_by_trt}
        log(f"  timing cache {options.timing_cache}: "
            + (f"loaded {len(cache_bytes)} bytes" if cache_bytes else "new")
            + ("" if applied_by_trt else " (TensorRT-RTX ignores timing caches)"))

    start = time.perf_counter()
    if monitor is None:
        with _Spinner(log):
            plan = builder.build_serialized_network(network, config)
    else:
        plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build {engine_path.name}: "
                               + (" | ".join(logger.errors[-3:]) or "see the TensorRT log above")
                               + ". Try --workspace with more memory or --opt-level 3; nothing was written.")
    data = bytes(memoryview(plan))
    if options.timing_cache:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cache_data = bytes(memoryview(config.get_timing_cache().serialize()))
        save_timing_cache(options.timing_cache, cache_data, cache_key)
        cache_info["saved_bytes"] = len(cache_data)

    meta = {
        "flavour": trt_flavour.name, "version": trt_flavour.version, "strongly_typed": network_typed,
        "version_compatible": options.version_compatible, "hardware_compat": options.hardware_compat,
        "target": target, "precision": contract.precision,
        "build_options": {k: v for k, v in asdict(options).items()}, "builder_flags": applied,
        "profile": {contract.input_name: {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}},
        "io": _io_summary(network),
        "source_onnx": {"path": str(onnx_path.resolve()), "sha256": sha256_file(onnx_path), "precision": contract.precision},
        "timing_cache": cache_info, "build_seconds": round(seconds, 3),
        "built_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fer_edge": fer_edge.__version__,
        "rebuild_args": rebuild_args(onnx_path, engine_path.parent, options, trt_flavour.name),
    }
    remove_stale_temp_files(engine_path.parent)  # temp files of an earlier build that was killed
    write_artifact(engine_path, data, contract, "engine", engine=meta)
    log(f"  built in {seconds:.1f}s, {len(data) / 1e6:.1f} MB")
    return BuiltEngine(engine_path, sidecar_path(engine_path), contract, meta)
