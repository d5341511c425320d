"""Atomic writes and contract sidecars (`<artifact>.json`) shared by export, calibration and engines."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
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
    return atomic_write_bytes(path, _json_bytes(payload))


def _json_bytes(payload: Dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()


def write_artifact(path: os.PathLike, payload: bytes, contract: ModelContract, kind: str,
                   artifact: Optional[Dict[str, Any]] = None, **sections: Any) -> Path:
    """Write an artifact and its sidecar: the one place that assembles the sidecar's `artifact` block.

    The sidecar records the payload's size and sha256, which `load()` checks before use. The artifact is
    renamed into place first, then the sidecar: a crash in between leaves an artifact with no sidecar (it
    still loads from its embedded contract, with a warning) or with the previous export's sidecar (its
    hash no longer matches, so it is refused), never a sidecar that vouches for bytes it did not hash.
    """
    path = Path(path)
    sidecar = {"contract": contract.to_dict(),
               "artifact": {"kind": kind, "file": path.name, "sha256": hashlib.sha256(payload).hexdigest(),
                            "bytes": len(payload), **(artifact or {})},
               **sections}
    sidecar_bytes = _json_bytes(sidecar)  # serialise before touching disk: a bad section writes nothing
    atomic_write_bytes(path, payload)
    atomic_write_bytes(sidecar_path(path), sidecar_bytes)
    return path


def remove_stale_temp_files(folder: os.PathLike, min_age_s: float = 3600.0) -> list:
    """Delete temp files that `atomic_write_bytes` of a killed earlier run left in folder.

    Only files older than min_age_s go, so a concurrent writer's temp file in the same folder is kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # vanished or not ours to delete: leave it
            pass
    return removed


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
