"""Writing fer-edge artifacts: names, the contract inside the ONNX, and each file with its sidecar, atomically.

The reading side (sidecar paths, integrity check, contract) is `fer_edge.runtime.artifact_io`; this is the one
writer that export, calibration and engine builds share.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from fer_edge.data.labels import LABEL_SETS
from fer_edge.runtime.artifact_io import sidecar_path
from fer_edge.runtime.contract import METADATA_KEY, ModelContract
from fer_edge.runtime.errors import FerEdgeError


class ExportError(FerEdgeError, RuntimeError):
    """The export cannot write where asked, or its result failed a check (parity); nothing was written."""


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
        os.chmod(tmp, 0o666 & ~current_umask())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def current_umask() -> int:
    """The process umask (POSIX has no call that only reads it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    return match is not None and not writer_alive(int(match.group(1)))


def writer_alive(pid: int) -> bool:
    """Whether the process that wrote a temp file (its PID in the name) still runs; this process counts as alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def label_set_name(labels: List[str]) -> str:
    for name, known in LABEL_SETS.items():
        if list(known) == list(labels):
            return name
    return f"{len(labels)}cls"


def artifact_name(contract: ModelContract, precision: str, suffix: str = ".onnx") -> str:
    return f"{contract.arch}_{contract.input_size}px_{label_set_name(contract.labels)}_{precision}{suffix}"


def engine_name(source_stem: str, builder: str, batch, dla_core: Optional[int] = None,
                hardware_compat: str = "none", version_compatible: bool = False) -> str:
    """<source stem>_<trt|rtx>_b<min>-<opt>-<max>[_dla<N>][_<hardware compat>][_vc].engine.

    Every build option that makes a different plan is in the name, so a DLA or fleet build never overwrites
    the GPU engine (or its sidecar) built from the same ONNX."""
    parts = [source_stem, builder, "b" + "-".join(str(b) for b in batch)]
    if dla_core is not None:
        parts.append(f"dla{dla_core}")
    if hardware_compat != "none":
        parts.append(hardware_compat.replace("+", "-plus"))   # ampere+ -> ampere-plus, same-cc
    if version_compatible:
        parts.append("vc")
    return "_".join(parts) + ".engine"


def float_fallback_name(int8_path: os.PathLike, blocks_in_float: int) -> str:
    """<INT8 stem>_float<K>.onnx: an INT8 ONNX derived with K blocks in float (the engine build's INT8 fallback)."""
    path = Path(int8_path)
    return f"{path.stem}_float{blocks_in_float}{path.suffix}"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(out_dir, flag: str = "--out") -> Path:
    """The output folder, refused unless it is (or can become) a folder we can write to. Creates nothing:
    a failed check elsewhere must leave no trace, and the artifact writer creates the folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{flag} {out}: is a file, not a folder; pass a folder path (it is created if missing)")
    existing = _nearest_existing(out.absolute())
    if not existing.is_dir():
        raise ExportError(f"{flag} {out}: cannot create it because {existing} is a file, not a folder; "
                          "pass a folder path outside it")
    try:
        # A real file, named like the writer's temp files, so a kill here is cleaned up like theirs. os.access
        # would miss read-only mounts, ACLs and root's exemptions.
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fer-export-write-check.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ExportError(f"{flag} {out}: cannot write in {existing} ({exc.strerror}); pass a folder you can "
                          "write to, or fix its permissions") from None
    return out


def embed_contract(proto, contract: ModelContract) -> None:
    """Write the contract into metadata_props, replacing any earlier one."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    proto.producer_name = "fer-edge"


def graph_summary(proto) -> Dict[str, object]:
    ops = Counter(node.op_type for node in proto.graph.node)
    return {"opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "nodes": sum(ops.values()), "op_counts": dict(sorted(ops.items()))}


def write_export_artifact(path: Path, payload: bytes, contract: ModelContract, **sidecar) -> Path:
    """write_artifact for an ONNX artifact, with a disk that filled up (or vanished) since the up-front check
    reported as one line instead of a traceback."""
    try:
        return write_artifact(path, payload, contract, "onnx", **sidecar)
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); free some space or pass another --out, "
                          "then run the export again") from None
