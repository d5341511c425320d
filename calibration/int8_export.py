"""FP32 ONNX artifact -> gated INT8 Q/DQ ONNX artifact: the `fer-export --int8` pipeline.

calibration source -> stratified sample -> prepare_batch (cached) -> ranges (cached) -> quantize ->
accuracy gate (with sensitivity fallback) -> <name>_int8.onnx + sidecar. Nothing is written unless the
gate passes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np

from fer_edge.calibration import gate, quantize, sources
from fer_edge.calibration.cache import CalibrationCache, ranges_key, tensor_key
from fer_edge.calibration.synthesize import shipped_set_for, shipped_set_name
from fer_edge.data.datasets import FaceSet
from fer_edge.models.artifact_writer import (artifact_name, embed_contract, graph_summary, remove_stale_temp_files,
                                             write_export_artifact)
from fer_edge.runtime.artifact_io import sha256_file, sidecar_contract
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import ContractError, DataError
from fer_edge.runtime.preprocess import prepare_batch


DEFAULT_METHOD = "percentile"
PREPROCESS_CHUNK = 256


@dataclass
class Int8Options:
    calib: Optional[str] = None
    calib_split: Optional[str] = None
    calib_count: int = 512
    calib_method: str = DEFAULT_METHOD
    calib_seed: int = 0
    calib_frame_step: int = sources.DEFAULT_FRAME_STEP
    calib_detector: Optional[str] = None  # videos: None = bundled YuNet, 'haar', a YuNet .onnx, "none" = whole frames
    calib_cache: Optional[str] = None
    val: Optional[str] = None
    val_split: Optional[str] = None
    max_drop: float = 0.5
    min_agreement: float = 0.99
    target: str = "tensorrt"
    gate_on: str = "auto"
    gate_backend: str = "onnxruntime"     # gate.GATE_BACKENDS: where the gate runs FP32 and the INT8 candidates
    recipe: quantize.TrtRecipe = quantize.TrtRecipe()   # tensorrt target: FP16 float part, small layers float


def resolve_calibration(options: Int8Options, bundled: Optional[str]) -> str:
    """The calibration source to use, or a clear error when there is none (checked before any export work).

    bundled: the name of the bundled model being exported, None for the user's own checkpoint.
    """
    if options.calib:
        if not Path(options.calib).exists():
            raise DataError(f"--calib {options.calib}: no such file or folder. " + sources.WHAT_CALIBRATION_IS)
        return options.calib
    if bundled:
        # The project may not ship FER-2013 faces; it ships images synthesised from each bundled model itself.
        return str(shipped_set_for(bundled))
    raise DataError("--int8 needs --calib PATH for your checkpoint. " + sources.WHAT_CALIBRATION_IS)


@dataclass
class CalibrationSet:
    """Calibration and validation faces, read and checked once (before the FP32 export when run by fer-export)."""
    source: FaceSet          # everything the calibration source held
    calib: FaceSet           # the sample the ranges are computed on
    val: FaceSet             # the gate's faces: --val, else a slice of the source held apart from `calib`
    held_apart: bool         # True when `val` is that slice
    contract: ModelContract  # the contract the faces were read for (video crops follow its crop margin)
    path: str = ""           # the calibration source they were read from


# Contract fields that decide how faces are read and labelled; an artifact that differs in one needs a re-read.
_FACE_FIELDS = ("labels", "channels", "input_size", "crop_margin", "color_order")


def _read_role(path: str, role: str, flag: str, split: Optional[str], options: Int8Options,
               contract: ModelContract) -> FaceSet:
    try:
        faces = sources.load_source(path, contract.labels, split, options.calib_frame_step, contract=contract,
                                    detector=options.calib_detector)
    except DataError as exc:  # name the flag: the reader's message names only the path
        raise DataError(f"{flag} {exc}") from None
    sources.check_fits_model(faces, contract, role)
    return faces


def load_calibration(options: Int8Options, calib_source: str, contract: ModelContract,
                     log: Callable[[str], None] = print) -> CalibrationSet:
    """Read the calibration (and --val) faces and check there are enough readable ones for the sample and gate."""
    if shipped_set_name(calib_source):
        log(f"calibration: no --calib given, so the shipped synthetic set {Path(calib_source).name} is used: images "
            "synthesised from the bundled model's own BatchNorm statistics (no faces). Real faces from your "
            "camera calibrate better: pass --calib PATH (docs/int8.md compares the two).")
    faces = _read_role(calib_source, "calibration", "--calib", options.calib_split, options, contract)
    if options.val:
        val = _read_role(options.val, "validation", "--val", options.val_split, options, contract)
        calib, _ = sources.split_calibration(faces, options.calib_count, options.calib_seed, holdout=False)
    else:
        calib, val = sources.split_calibration(faces, options.calib_count, options.calib_seed, holdout=True)
    return CalibrationSet(faces, calib, val, not options.val, contract, str(calib_source))


def _check_read_for(calibration: CalibrationSet, contract: ModelContract, fp32_path: Path) -> None:
    read_for = {k: getattr(calibration.contract, k) for k in _FACE_FIELDS}
    needed = {k: getattr(contract, k) for k in _FACE_FIELDS}
    if read_for != needed:
        differ = sorted(k for k in _FACE_FIELDS if read_for[k] != needed[k])
        raise ContractError(f"{fp32_path}: the calibration faces were read for another contract (differs in "
                            f"{differ}); read them with load_calibration(options, source, <this artifact's contract>)")


def _prepare(faces, contract: ModelContract, what: str = "calibration") -> np.ndarray:
    from tqdm import tqdm
    chunks = []
    for i in tqdm(range(0, len(faces), PREPROCESS_CHUNK), desc=f"preprocessing {what} faces", unit="chunk",
                  leave=False):
        chunks.append(prepare_batch(faces.subset(np.arange(i, min(i + PREPROCESS_CHUNK, len(faces)))).images, contract))
    return np.concatenate(chunks)


def _calibration_tensors(faces, contract: ModelContract, cache: CalibrationCache, options: Int8Options, log):
    key = tensor_key(contract, sources.content_hash(faces), options.calib_count, options.calib_seed)
    cached = cache.load_tensors(key)
    if cached is not None:
        log(f"calibration tensors: reused from cache ({cache.dir})")
        return cached[0], key, True
    tensors = _prepare(faces, contract)
    cache.store_tensors(key, tensors, faces.targets)
    return tensors, key, False


def _ranges(fp32: bytes, tensors: np.ndarray, contract: ModelContract, tkey, cache: CalibrationCache,
            method: str, log):
    key = ranges_key(tkey, contract, method, quantize.RECIPE)
    cached = cache.load_ranges(key, method)
    if cached is not None:
        log(f"calibration ranges ({method}): reused from cache")
        return cached, key, True
    from tqdm import tqdm
    with tqdm(total=len(tensors), desc=f"calibrating ({method})", unit="img", leave=False) as bar:
        ranges = quantize.compute_ranges(fp32, contract.input_name, tensors, method, progress=bar.update)
    cache.store_ranges(key, method, ranges)
    return ranges, key, False


def _quantization_summary(target: str, recipe: quantize.TrtRecipe, fp32: bytes) -> dict:
    trt = target == "tensorrt"
    float_dtype = recipe.float_dtype if trt else "float32"
    return {"format": "QDQ", "target": target,
            "activations": ("int8 symmetric per-tensor" if trt
                            else "uint8 asymmetric per-tensor (ONNX Runtime CPU only)"),
            "weights": "int8 symmetric per-channel (axis 0)",
            "op_types": list(quantize.QUANTIZED_OP_TYPES), "bias": float_dtype,
            "float_dtype": float_dtype, "io_dtype": "float32",
            "float_by_recipe": quantize.float_by_recipe(fp32) if trt and recipe.float_small_layers else {}}


def _validation_record(options: Int8Options, calibration: "CalibrationSet") -> dict:
    """How to read the gate's validation faces again (benchmarks/gpu_check re-runs the gate on the engine), and the
    hash that proves it got the same faces."""
    absolute = lambda path: str(Path(path).resolve()) if path else None  # noqa: E731
    return {"calib": absolute(calibration.path), "calib_split": options.calib_split,
            "calib_count": options.calib_count, "calib_seed": options.calib_seed,
            "calib_frame_step": options.calib_frame_step, "calib_detector": options.calib_detector,
            "val": absolute(options.val), "val_split": options.val_split,
            # the bundled model's name whose shipped set calibrated (sidecars before FER+ wrote True: fer2013)
            "shipped_set": (shipped_set_name(calibration.path) if calibration.path else None) or False,
            "faces_sha256": sources.content_hash(calibration.val)}


def export_int8(fp32_path: Path, options: Int8Options, calib_source: Union[str, CalibrationSet],
                out_dir: Optional[Path] = None, log: Callable[[str], None] = print,
                command: Optional[List[str]] = None) -> Path:
    """Quantize a fer-export FP32 artifact; return the INT8 artifact path (written only if the gate passes).

    calib_source: a calibration source path, or the CalibrationSet that load_calibration read from one."""
    import onnx

    start = time.perf_counter()
    fp32_path = Path(fp32_path)
    contract = sidecar_contract(fp32_path)
    if contract is None or contract.precision != "fp32":
        raise ContractError(f"{fp32_path}: INT8 needs an FP32 artifact written by fer-export (with its .json sidecar)")
    out_dir = Path(out_dir) if out_dir else fp32_path.parent
    fp32 = fp32_path.read_bytes()

    if isinstance(calib_source, CalibrationSet):
        _check_read_for(calib_source, contract, fp32_path)
        calibration = calib_source
    else:
        calibration = load_calibration(options, calib_source, contract, log)
    remove_stale_temp_files(out_dir)  # temp files of an earlier run that was killed
    faces, calib_faces, val_faces = calibration.source, calibration.calib, calibration.val
    log(f"calibration: {len(calib_faces)} faces from {faces.source} "
        f"({'stratified by class' if faces.labelled else 'unlabelled'}, seed {options.calib_seed}); "
        f"validation: {len(val_faces)} faces from {val_faces.source}"
        + (" (held apart from the calibration images)" if calibration.held_apart else ""))

    cache = CalibrationCache(Path(options.calib_cache) if options.calib_cache else out_dir / ".calib-cache",
                             artifact_name(contract, "int8", ""), log)
    tensors, tkey, tensors_hit = _calibration_tensors(calib_faces, contract, cache, options, log)
    t_ranges = time.perf_counter()
    ranges, rkey, ranges_hit = _ranges(fp32, tensors, contract, tkey, cache, options.calib_method, log)
    ranges_s = time.perf_counter() - t_ranges

    def quantize_excluding(nodes):
        return quantize.quantize(fp32, ranges, options.calib_method, exclude=nodes, target=options.target,
                                 recipe=options.recipe)

    val_tensors = _prepare(val_faces, contract, "validation")
    rule = gate.GateRule(options.max_drop, options.min_agreement, options.gate_on)
    quantizable = quantize.quantizable_nodes(fp32, options.target, options.recipe)
    result = gate.run_gate(quantize_excluding, fp32, quantizable, val_tensors,
                           val_faces.targets, rule, contract.input_name, log, backend=options.gate_backend)

    float_dtype = options.recipe.float_dtype if options.target == "tensorrt" else "float32"
    int8_contract = contract.with_precision("int8", quantize.precision_mix(result.model, float_dtype))
    proto = onnx.load_from_string(result.model)
    embed_contract(proto, int8_contract)
    path = out_dir / artifact_name(contract, "int8")
    total_s = time.perf_counter() - start
    calibration_report = {"method": options.calib_method, "count": len(calib_faces), "seed": options.calib_seed,
                          "source": faces.source, "hash": rkey.digest, "tensors_hash": tkey.digest,
                          "cache": {"dir": str(cache.dir), "tensors_reused": tensors_hit, "ranges_reused": ranges_hit},
                          "ranged_tensors": len(ranges), "ranges_seconds": round(ranges_s, 2)}
    gate_report = {"rule": rule.describe(val_faces.labelled), "gate_on": options.gate_on,
                   "backend": options.gate_backend,
                   "max_drop": options.max_drop,
                   "min_agreement": options.min_agreement, "validation": val_faces.source,
                   "validation_count": len(val_faces), "held_apart_from_calibration": calibration.held_apart,
                   "validation_set": _validation_record(options, calibration),
                   "before": gate.result_record(result.before), "after": gate.result_record(result.after),
                   "kept_in_higher_precision": {"blocks": result.excluded_groups, "nodes": result.excluded_nodes},
                   "sensitivity": [r.as_dict() for r in result.sensitivity], "steps": result.steps,
                   "gate_seconds": round(result.seconds, 2), "total_seconds": round(total_s, 2)}
    write_export_artifact(path, proto.SerializeToString(), int8_contract,
                          artifact={"quantization": _quantization_summary(options.target, options.recipe, fp32),
                                    **graph_summary(proto)},
                          calibration=calibration_report, gate=gate_report,
                          export={"from": fp32_path.name, "from_sha256": sha256_file(fp32_path),
                                  "command": command or []})
    kept = ", ".join(result.excluded_groups) or "none"
    log(f"int8: method {options.calib_method}, {len(calib_faces)} calibration faces (hash {rkey.digest}); "
        f"kept in higher precision: {kept}")
    log(f"int8: before gate {gate.result_line(result.before)}; after gate {gate.result_line(result.after)}; "
        f"{total_s:.1f} s")
    return path
