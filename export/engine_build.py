"""Explicit-precision ONNX -> serialized TensorRT engine + sidecar. The Python API behind `fer-export --engine`.

One build path (docs/tensorrt.md): the ONNX already says which ops are FP32/FP16/INT8 (FP16 graph, or
INT8 Q/DQ), so on TensorRT >= 9.1 and TensorRT-RTX the network is STRONGLY_TYPED and no precision
flags are set. Only TensorRT 8.6 (JetPack 6.0) takes the weakly typed path, where the precision comes
from builder flags chosen from the ONNX's contract (FP16 flag for fp16, INT8+FP16 for Q/DQ).

Options and errors: engine_options.py; checks before parsing: engine_checks.py; the GPU the engine is for:
engine_target.py; progress output: engine_progress.py.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import fer_edge
from fer_edge.export.engine_checks import (check_dla, check_hardware_compat, check_opset, check_quantization_target,
                                           hardware_compat_level)
from fer_edge.export.engine_options import (DEFAULT_BATCH, HARDWARE_COMPAT_LEVELS, PRESETS, BuildOptions,
                                            BuildOptionsError, EngineBuildError, TensorRTBuildFailed,
                                            options_with_preset, rebuild_args)
from fer_edge.export.engine_progress import build_progress, make_progress_monitor, wants_monitor
from fer_edge.export.engine_target import build_target, local_gpu
from fer_edge.models.artifact_writer import (atomic_write_bytes, atomic_write_json, engine_name, remove_stale_temp_files,
                                             write_artifact)
from fer_edge.runtime.artifact_io import read_sidecar, sha256_file, sidecar_path
from fer_edge.runtime.contract import METADATA_KEY, ModelContract
from fer_edge.runtime.errors import BackendUnavailableError, ContractError, ModelLoadError
from fer_edge.runtime.tensorrt.trt_import import INSTALL_HINTS, TrtFlavour, import_first, import_flavour, make_logger, parse_version

BUILD_ORDER = ("tensorrt", "tensorrt_rtx")              # tensorrt_lean has no Builder
# The engine-build API: what callers import from here, wherever it is defined.
__all__ = ["BUILD_ORDER", "DEFAULT_BATCH", "HARDWARE_COMPAT_LEVELS", "PRESETS", "BuildOptions", "BuildOptionsError",
           "BuiltEngine", "EngineBuildError", "TensorRTBuildFailed", "build_engine", "check_build_request",
           "engine_path_for", "import_builder", "local_gpu", "options_with_preset", "source_contract",
           "supports_strong_typing"]


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


# ------------------------------------------------------------------ source ONNX
def source_contract(onnx_path: Path, sidecar: Optional[Dict[str, Any]] = None) -> ModelContract:
    """The source ONNX's contract (sidecar first, else metadata_props); its precision becomes the engine's."""
    sidecar = read_sidecar(onnx_path) if sidecar is None else sidecar
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


def check_build_request(onnx_path: Path, options: BuildOptions, flavour: TrtFlavour,
                        log: Callable[[str], None] = print) -> ModelContract:
    """Every check that needs no parsing: the source's quantization target, DLA vs its precision, hardware
    compatibility vs this TensorRT and machine. Returns the source's contract."""
    sidecar = read_sidecar(onnx_path)
    contract = source_contract(onnx_path, sidecar)
    check_quantization_target(onnx_path, contract, sidecar)
    check_dla(contract.precision, options, onnx_path.name, log)
    check_hardware_compat(flavour, options)
    check_opset(onnx_path, flavour)
    return contract


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


def _apply_timing_cache(flavour: TrtFlavour, config, options: BuildOptions, cache_bytes: bytes, log):
    # TensorRT-RTX keeps the API but documents timing-cache operations as no-ops (RTX >= 1.2): the file
    # round-trips, TensorRT-RTX just does not use it.
    applied_by_trt = flavour.name != "tensorrt_rtx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = config.create_timing_cache(cache_bytes if applied_by_trt else b"")
        accepted = config.set_timing_cache(cache, False)   # False: TensorRT rejected the cache (another device)
    if accepted is False:
        log(f"  warning: TensorRT rejected the timing cache {options.timing_cache}; building without it")
    log(f"  timing cache {options.timing_cache}: " + (f"loaded {len(cache_bytes)} bytes" if cache_bytes else "new")
        + ("" if applied_by_trt else " (TensorRT-RTX ignores timing caches)"))
    return {"path": str(options.timing_cache), "loaded_bytes": len(cache_bytes),
            "applied_by_tensorrt": applied_by_trt and accepted is not False}


# ------------------------------------------------------------------ build
@dataclass
class BuiltEngine:
    path: Path
    sidecar: Path
    contract: ModelContract
    engine_meta: Dict[str, object] = field(default_factory=dict)


def _precision_flags(trt, precision: str) -> Tuple[List[str], list]:
    """TensorRT 8.6's weak typing: the BuilderFlags that give the ONNX's precision (INT8 Q/DQ runs with FP16)."""
    names = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
    missing = [name for name in names if not hasattr(trt.BuilderFlag, name)]
    if missing:
        raise EngineBuildError(f"this TensorRT has neither strong typing nor BuilderFlag {missing}")
    return names, [getattr(trt.BuilderFlag, name) for name in names]


def _configure(trt_flavour: TrtFlavour, builder, config, contract: ModelContract, options: BuildOptions,
               strongly_typed: bool) -> Dict[str, object]:
    """Apply options to the builder config; returns the flags actually set (for the sidecar)."""
    trt = trt_flavour.module
    applied: Dict[str, object] = {}
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.hardware_compat != "none":
        config.hardware_compatibility_level = hardware_compat_level(trt_flavour, options.hardware_compat)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        applied["profiling_verbosity"] = "DETAILED"
    if not strongly_typed:  # TensorRT 8.6: precision from flags, chosen by the ONNX's precision
        names, flags = _precision_flags(trt, contract.precision)
        for flag in flags:
            config.set_flag(flag)
        applied["precision_flags"] = names
    if options.dla_core is not None:
        cores = getattr(builder, "num_DLA_cores", 0)
        if options.dla_core >= cores:
            raise EngineBuildError(f"--dla {options.dla_core}: this device has {cores} DLA core(s) "
                                   "(DLA exists on Jetson AGX Orin / Orin NX only)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # unsupported layers run on the GPU
        applied["dla"] = {"core": options.dla_core, "gpu_fallback": True}
    return applied


def _parse(trt, builder, onnx_path: Path, strongly_typed: bool, logger):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    if not strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # 8.6 still needs it
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildFailed(f"{onnx_path}: TensorRT's ONNX parser failed: " + " | ".join(errors[:5])
                                  + ". Check the opset (TensorRT 8.6 parses <= 17) and that the ONNX is complete.")
    return network, parser


def _check_network(network, contract: ModelContract, options: BuildOptions, onnx_path: Path) -> List[int]:
    """The parsed network's input against the contract and the batch profile; returns C, H, W."""
    if network.num_inputs != 1 or network.get_input(0).name != contract.input_name:
        raise EngineBuildError(f"{onnx_path}: expected one input named {contract.input_name!r}, found "
                               f"{[network.get_input(i).name for i in range(network.num_inputs)]}")
    input_dims = [int(d) for d in network.get_input(0).shape]
    want = contract.input_dims()        # C, H, W; H, W, C for a uint8-input ONNX (preprocessing in the graph)
    if input_dims[1:] != want:
        raise EngineBuildError(f"{onnx_path}: input dims {input_dims} do not match the contract N x {want}")
    if input_dims[0] >= 0 and options.batch != (input_dims[0],) * 3:
        raise EngineBuildError(f"{onnx_path}: the ONNX has a static batch of {input_dims[0]}; use --batch "
                               f"{input_dims[0]} or export with a dynamic batch")
    return want


def _io_summary(network) -> List[Dict[str, object]]:
    tensors = [(network.get_input(i), "input") for i in range(network.num_inputs)]
    tensors += [(network.get_output(i), "output") for i in range(network.num_outputs)]
    return [{"name": t.name, "mode": mode, "dtype": getattr(t.dtype, "name", str(t.dtype)),
             "shape": [int(d) for d in t.shape]} for t, mode in tensors]


def engine_path_for(onnx_path: Path, out_dir: Path, flavour: str, options: BuildOptions) -> Path:
    return out_dir / engine_name(onnx_path.stem, "rtx" if flavour == "tensorrt_rtx" else "trt", options.batch,
                                 options.dla_core, options.hardware_compat, options.version_compatible)


def build_engine(onnx_path: os.PathLike, out_dir: Optional[os.PathLike] = None,
                 options: Optional[BuildOptions] = None, flavour: str = "auto", output: Optional[os.PathLike] = None,
                 log: Callable[[str], None] = print, extra_meta: Optional[Dict[str, object]] = None) -> BuiltEngine:
    """Build a serialized engine from an explicit-precision fer-edge ONNX and write it with its sidecar.

    out_dir: folder for the engine named by models.artifact_writer.engine_name (default: the ONNX's folder);
    output: exact engine path instead. flavour: auto (tensorrt, else tensorrt_rtx), tensorrt or tensorrt_rtx.
    extra_meta: more fields for the sidecar's engine section (e.g. the INT8 fallback steps that led here).
    Raises TensorRTBuildFailed when TensorRT itself rejects the network; nothing is written then.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path}: no such ONNX file; export one first with `fer-export` (--fp16/--int8)")
    options = (options or BuildOptions()).validate()
    trt_flavour = import_builder(flavour)
    trt = trt_flavour.module
    contract = check_build_request(onnx_path, options, trt_flavour, log)
    strongly_typed = supports_strong_typing(trt_flavour)
    out_dir = Path(out_dir) if out_dir is not None else onnx_path.parent
    engine_path = Path(output) if output else engine_path_for(onnx_path, out_dir, trt_flavour.name, options)
    log(f"building {engine_path.name} from {onnx_path.name} ({contract.precision}, {trt_flavour.describe()}, "
        f"{'strongly typed' if strongly_typed else 'weakly typed'}, batch {options.batch})")

    logger = make_logger(trt, warn=log)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    target = build_target(trt_flavour, config, log)
    check_hardware_compat(trt_flavour, options, target)      # now with the build GPU's compute capability
    network, _parser = _parse(trt, builder, onnx_path, strongly_typed, logger)
    # Recorded from the parsed network itself, not from what we asked for.
    network_typed = bool(strongly_typed and network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    want = _check_network(network, contract, options, onnx_path)

    profile = builder.create_optimization_profile()
    shapes = [tuple([b] + want) for b in options.batch]
    profile.set_shape(contract.input_name, *shapes)
    config.add_optimization_profile(profile)
    applied = _configure(trt_flavour, builder, config, contract, options, strongly_typed)
    monitor = make_progress_monitor(trt, log) if wants_monitor(options.progress) else None
    if monitor is not None:
        config.progress_monitor = monitor
    applied["progress_monitor"] = monitor is not None
    log("  progress: " + ("TensorRT's build phases" if monitor is not None else
                          "elapsed time every 10 s (--build-progress shows TensorRT's phases; it slows the build)"))

    cache_key = _cache_key(trt_flavour, target)
    cache_bytes = load_timing_cache(options.timing_cache, cache_key)
    cache_info = _apply_timing_cache(trt_flavour, config, options, cache_bytes, log) if options.timing_cache else None

    start = time.perf_counter()
    with build_progress(monitor, log):
        plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise TensorRTBuildFailed(f"TensorRT failed to build {engine_path.name}: "
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
        **(extra_meta or {}),
    }
    remove_stale_temp_files(engine_path.parent)  # temp files of an earlier build that was killed
    write_artifact(engine_path, data, contract, "engine", engine=meta)
    log(f"  built in {seconds:.1f}s, {len(data) / 1e6:.1f} MB")
    return BuiltEngine(engine_path, sidecar_path(engine_path), contract, meta)
