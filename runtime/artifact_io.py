"""Atomic writes and contract sidecars (`<artifact>.json`) shared by export, calibration and engines."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from .contract import ModelContract
from .errors import ContractError


def sidecar_path(artifact: os.PathLike) -> Path:
    return Path(str(artifact) + ".json")


def atomic_write_bytes(path: os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; artifacts are shared with other users and containers, so honour the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: os.PathLike, payload: Dict[str, Any]) -> Path:
    return atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def sha256_file(path: os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(artifact: os.PathLike) -> Optional[Dict[str, Any]]:
    """The sidecar's JSON, or None when there is none. A sidecar that is not JSON is an error."""
    path = sidecar_path(artifact)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: sidecar is not valid JSON ({exc}); delete it and re-export with fer-export") from None
    if not isinstance(data, dict) or "contract" not in data:
        raise ContractError(f"{path}: sidecar has no 'contract' section; re-export the model with fer-export")
    return data


def sidecar_contract(artifact: os.PathLike) -> Optional[ModelContract]:
    data = read_sidecar(artifact)
    if data is None:
        return None
    return ModelContract.from_dict(data["contract"], source=str(sidecar_path(artifact)))
