"""The bundled reference model as an FP32 ONNX, exported on first use (fer-demo, benchmarks) and reused after.

An export is reused when its sidecar records the bundled weights' sha256 and precision fp32, whether it sits in
the user cache (`reference-<sha256[:12]>`, where the first use exports) or in ./fer-artifacts, where a plain
`fer-export` writes it: an export takes minutes, and finding one takes milliseconds and needs no torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from fer_edge.export.exporter import export_model
from fer_edge.models.checkpoint import REFERENCE_MODEL, require_export_stack
from fer_edge.runtime.artifact_io import sha256_file, sidecar_contract
from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError

# fer-export's default --out (cli/export.py, export_model's out_dir), relative to the working folder.
FER_EXPORT_DEFAULT_OUT = "fer-artifacts"


def cache_dir() -> Path:
    base = os.environ.get("FER_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fer-edge")
    return Path(base)


def reference_weights_sha256() -> str:
    if not REFERENCE_MODEL.exists():
        raise FerEdgeError(f"the bundled reference model {REFERENCE_MODEL} is missing; reinstall fer-edge or pass "
                           "--model")
    return sha256_file(REFERENCE_MODEL)


def cache_folder(weights_sha256: str) -> Path:
    return cache_dir() / f"reference-{weights_sha256[:12]}"


def find_reference_export(weights_sha256: Optional[str] = None) -> Optional[Path]:
    """An existing FP32 ONNX export of the bundled weights (cache first, then ./fer-artifacts), or None."""
    sha = weights_sha256 or reference_weights_sha256()
    for folder in (cache_folder(sha), Path(FER_EXPORT_DEFAULT_OUT)):
        for path in sorted(folder.glob("*_fp32.onnx")):
            if _fp32_weights_sha256(path) == sha:
                return path
    return None


def _fp32_weights_sha256(path: Path) -> Optional[str]:
    try:
        contract = sidecar_contract(path)
    except FerEdgeError:    # a damaged sidecar: not this export (load() would refuse the file anyway)
        return None
    return contract.source_weights_sha256 if contract is not None and contract.precision == "fp32" else None


def reference_model_path(log=print) -> Path:
    """The bundled reference model as FP32 ONNX: an existing export of the same weights, or a new one in the cache."""
    sha = reference_weights_sha256()
    found = find_reference_export(sha)
    if found is not None:
        log(f"model: {found} (the bundled reference model, exported earlier; weights sha256 {sha[:12]})")
        return found
    try:
        require_export_stack("no --model given, and exporting the bundled reference model")
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{exc}; or export once on another machine with `fer-export` and pass "
                                      "--model model.onnx") from None
    folder = cache_folder(sha)
    log(f"exporting the bundled reference model to {folder} (first use only; a few minutes) ...")
    return Path(export_model(checkpoint=None, out_dir=str(folder), log=log)["fp32"].path)
