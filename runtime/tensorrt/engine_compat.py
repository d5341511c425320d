"""Refuse an engine that cannot run here BEFORE TensorRT deserialises it: a plan built for another GPU or TensorRT
fails deep inside TensorRT with a cryptic log line, or crashes. The sidecar records what the engine was built for,
so that is compared with this machine first, and the error prints the command that rebuilds it.
"""
from __future__ import annotations

import os
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from fer_edge.runtime.artifact_io import sidecar_path, verify_artifact
from fer_edge.runtime.errors import ModelLoadError
from fer_edge.runtime.tensorrt.trt_import import parse_version


@dataclass(frozen=True)
class RuntimeTarget:
    """What this process would run the engine with."""
    flavour: str                                # tensorrt / tensorrt_lean / tensorrt_rtx
    version: str                                # e.g. "10.3.0.30"
    compute_capability: Optional[str] = None    # "8.7"; None when no GPU could be queried
    gpu_name: Optional[str] = None
    machine: str = platform.machine()


def rebuild_command(engine_path: os.PathLike, sidecar: Optional[Dict[str, Any]]) -> str:
    """The fer-export command that rebuilds this engine on this machine (recorded at build time when possible)."""
    engine = (sidecar or {}).get("engine") or {}
    recorded = engine.get("rebuild_args")
    if isinstance(recorded, list) and recorded:
        return shlex.join(["fer-export"] + [str(a) for a in recorded])
    source = (engine.get("source_onnx") or {}).get("path") or "MODEL.onnx"
    return shlex.join(["fer-export", "--engine", "--onnx", str(source), "--out", str(Path(engine_path).parent)])


def verify_engine_file(path: os.PathLike, sidecar: Optional[Dict[str, Any]]) -> None:
    """The engine needs a sidecar with an 'engine' section; size and sha256 are checked like every artifact's."""
    path = Path(path)
    if not sidecar or not isinstance(sidecar.get("engine"), dict):
        raise ModelLoadError(f"{path}: no engine sidecar ({sidecar_path(path).name} with an 'engine' section), so "
                             "fer-edge cannot check what GPU and TensorRT version it was built for. Rebuild it with "
                             "`fer-export --engine --onnx MODEL.onnx`, which writes both files.")
    verify_artifact(path, sidecar, f"Copy the engine again or rebuild it: {rebuild_command(path, sidecar)}")


def _version_problem(engine: Dict[str, Any], target: RuntimeTarget) -> Optional[str]:
    built_flavour, built_version = engine.get("flavour"), str(engine.get("version", ""))
    vc = bool(engine.get("version_compatible"))
    if built_flavour == "tensorrt_rtx" or target.flavour == "tensorrt_rtx":
        if built_flavour != target.flavour:
            return f"it was built with {built_flavour} but this runtime is {target.flavour}; the two plan formats differ"
        if parse_version(built_version) != parse_version(target.version):
            return (f"it was built with TensorRT-RTX {built_version} but {target.version} is installed; RTX engines "
                    "do not load across TensorRT-RTX releases")
        return None
    if built_flavour != "tensorrt":
        return f"its sidecar names an unknown TensorRT flavour {built_flavour!r}"
    built, here = parse_version(built_version), parse_version(target.version)
    if target.flavour == "tensorrt_lean" and not vc:
        return ("tensorrt_lean can only run version-compatible engines and this one is not "
                "(rebuild with --version-compatible, or install full TensorRT)")
    if not vc:
        if built[:3] != here[:3]:
            return (f"it was built with TensorRT {built_version} but {target.version} is installed; a plan only "
                    "loads in the TensorRT version that built it")
        return None
    # Version-compatible plans: same major with builder <= runtime, or one major forward (8->10, 10->11).
    if not built or not here:
        return f"cannot compare TensorRT versions {built_version!r} and {target.version!r}"
    same_major_ok = built[0] == here[0] and built <= here
    next_major_ok = (built[0], here[0]) in ((8, 10), (10, 11))
    if not (same_major_ok or next_major_ok):
        return (f"it is a version-compatible plan from TensorRT {built_version}, which TensorRT {target.version} "
                "cannot run (same major with an older or equal builder, or 8->10 / 10->11, only)")
    return None


def _gpu_problem(engine: Dict[str, Any], target: RuntimeTarget) -> Optional[str]:
    built_machine = (engine.get("target") or {}).get("machine")
    if built_machine and target.machine and built_machine != target.machine:
        return f"it was built on {built_machine} and this is {target.machine}; engines are not portable across platforms"
    if target.compute_capability is None:
        return None
    here = parse_version(target.compute_capability)
    if engine.get("flavour") == "tensorrt_rtx":
        targets = (engine.get("target") or {}).get("compute_capabilities")
        if isinstance(targets, list) and targets and target.compute_capability not in targets:
            return (f"it targets compute capabilities {targets} and this GPU ({target.gpu_name or '?'}) is "
                    f"{target.compute_capability}")
        return None
    built_cc = (engine.get("target") or {}).get("compute_capability")
    level = engine.get("hardware_compat", "none")
    if level == "ampere+":
        if here < (8, 0):
            return (f"it was built for Ampere-or-newer GPUs (hardware compatibility ampere+) and this GPU "
                    f"({target.gpu_name or '?'}) has compute capability {target.compute_capability}")
        return None
    if built_cc and parse_version(str(built_cc)) != here:
        return (f"it was built on a GPU with compute capability {built_cc} "
                f"({(engine.get('target') or {}).get('gpu_name', '?')}) and this GPU ({target.gpu_name or '?'}) is "
                f"{target.compute_capability}")
    return None


def check_compatibility(path: os.PathLike, sidecar: Dict[str, Any], target: RuntimeTarget) -> None:
    """Raise ModelLoadError (with the rebuild command) when the engine cannot run on `target`."""
    engine = sidecar.get("engine") or {}
    problems: List[str] = [p for p in (_version_problem(engine, target), _gpu_problem(engine, target)) if p]
    if problems:
        raise ModelLoadError(f"{path}: this engine cannot run here: " + "; ".join(problems)
                             + ". Engines are built per GPU and TensorRT version; rebuild it on this machine:\n    "
                             + rebuild_command(path, sidecar))
