"""The bundled reference model as an FP32 ONNX in the user's cache, exported on first use (fer-demo, benchmarks)."""
from __future__ import annotations

import os
from pathlib import Path

from fer_edge.export.exporter import export_model
from fer_edge.models.checkpoint import REFERENCE_MODEL, require_export_stack
from fer_edge.runtime.artifact_io import sha256_file
from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError


def cache_dir() -> Path:
    base = os.environ.get("FER_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fer-edge")
    return Path(base)


def reference_model_path(log=print) -> Path:
    """The bundled reference model as FP32 ONNX in the user cache, exported on first use."""
    try:
        require_export_stack("no --model given, and exporting the bundled reference model")
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{exc}; or export once on another machine with `fer-export` and pass "
                                      "--model model.onnx") from None
    if not REFERENCE_MODEL.exists():
        raise FerEdgeError(f"the bundled reference model {REFERENCE_MODEL} is missing; reinstall fer-edge or pass --model")
    folder = cache_dir() / f"reference-{sha256_file(REFERENCE_MODEL)[:12]}"
    found = sorted(folder.glob("*_fp32.onnx"))
    if found:
        return found[0]
    log(f"exporting the reference model to {folder} (first use only) ...")
    return Path(export_model(checkpoint=None, out_dir=str(folder), log=log)["fp32"].path)
