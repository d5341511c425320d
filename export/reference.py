"""A bundled model as an FP32 ONNX, exported on first use (fer-demo, benchmarks) and reused after.

An export is reused when its sidecar records the bundled weights' sha256 and precision fp32, whether it sits in
the user cache (`reference-<sha256[:12]>`, where the first use exports) or in ./fer-artifacts, where a plain
`fer-export` writes it: an export takes minutes, and finding one takes milliseconds and needs no torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from fer_edge.export.exporter import export_model
from fer_edge.models.bundled import BUNDLED_MODELS, DEFAULT_MODEL, bundled_model
from fer_edge.models.bundled import weights_sha256 as bundled_weights_sha256
from fer_edge.models.checkpoint import require_export_stack
from fer_edge.runtime.artifact_io import sidecar_contract
from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError

# fer-export's default --out (cli/export.py, export_model's out_dir), relative to the working folder.
FER_EXPORT_DEFAULT_OUT = "fer-artifacts"


def cache_dir() -> Path:
    base = os.environ.get("FER_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fer-edge")
    return Path(base)


def reference_weights_sha256(name: str = DEFAULT_MODEL) -> str:
    return bundled_weights_sha256(name)


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


def reference_model_path(name: str = DEFAULT_MODEL, log=print) -> Path:
    """A bundled model as FP32 ONNX: an existing export of the same weights, or a new one in the cache."""
    weights = bundled_model(name).weights
    sha = reference_weights_sha256(name)
    found = find_reference_export(sha)
    if found is not None:
        log(f"model: {found} (the bundled {name} model, exported earlier; weights sha256 {sha[:12]})")
        return found
    try:
        require_export_stack(f"exporting the bundled {name} model")
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{exc}; or export once on another machine with `fer-export` and pass "
                                      "--model model.onnx") from None
    folder = cache_folder(sha)
    log(f"exporting the bundled {name} model to {folder} (first use only; a few minutes) ...")
    return Path(export_model(checkpoint=str(weights), out_dir=str(folder), log=log)["fp32"].path)


def bundled_name_in(value: Optional[str]) -> Optional[str]:
    """The bundled model a --model value of fer-demo / fer-bench --pipeline names (None: the default one), or None
    when it is an artifact path. A file of the same name as a bundled model wins: it is what the user has."""
    if value is None:
        return DEFAULT_MODEL
    return value if value in BUNDLED_MODELS and not Path(value).exists() else None
