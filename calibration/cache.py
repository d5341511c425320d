"""On-disk cache of calibration tensors and activation ranges, keyed by everything that decides them.

Layout: <cache dir>/<slot>/tensors.npy + tensors.json, and ranges-<method>.json, where <slot> names
the model (arch, size, labels). Each JSON records the key's components, so a cache built from other
weights, preprocessing, labels, data, count, seed or method is rebuilt and the reason printed
(e.g. "calibration cache stale: weights changed") instead of being used silently.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from fer_edge.models.artifact_writer import atomic_write_bytes, atomic_write_json
from fer_edge.runtime.contract import ModelContract

CACHE_FORMAT = 1


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CacheKey:
    """Components of a cache key; `digest` identifies one calibration (stored in the INT8 sidecar)."""
    components: Dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return _digest(self.components)

    def stale_reasons(self, stored: Dict[str, str]) -> list:
        names = sorted(set(self.components) | set(stored))
        return [f"{name} changed" for name in names if self.components.get(name) != stored.get(name)]


def tensor_key(contract: ModelContract, data_hash: str, count: int, seed: int) -> CacheKey:
    """What the calibration tensors depend on: preprocessing, labels (stratification) and the sampled data."""
    return CacheKey({"format": str(CACHE_FORMAT), "preprocessing": _digest(contract.preprocessing_fields()),
                     "labels": _digest(list(contract.labels)), "data": data_hash, "count": str(count),
                     "seed": str(seed)})


def ranges_key(tensors: CacheKey, contract: ModelContract, method: str, recipe: str) -> CacheKey:
    """Ranges additionally depend on the weights, the calibration method and which tensors are calibrated."""
    return CacheKey({**tensors.components, "weights": contract.source_weights_sha256 or "unknown",
                     "method": method, "recipe": recipe})


class CalibrationCache:
    def __init__(self, root: Path, slot: str, log: Callable[[str], None] = print):
        self.dir = Path(root) / slot
        self.log = log

    def _manifest(self, name: str) -> Optional[dict]:
        path = self.dir / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.log(f"calibration cache stale: {path} is unreadable; rebuilding")
            return {}

    def _check(self, what: str, name: str, key: CacheKey) -> Optional[dict]:
        manifest = self._manifest(name)
        if manifest is None:
            return None
        reasons = key.stale_reasons(manifest.get("key", {}))
        if reasons:
            self.log(f"calibration cache stale ({what}): {', '.join(reasons)}; rebuilding {self.dir / name}")
            return None
        return manifest

    # ------------------------------------------------------------ tensors
    def load_tensors(self, key: CacheKey) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
        manifest = self._check("tensors", "tensors.json", key)
        if manifest is None:
            return None
        try:
            with np.load(self.dir / "tensors.npz", allow_pickle=False) as data:
                tensors = data["x"]
                targets = data["y"] if "y" in data.files else None
        except (OSError, ValueError, KeyError):
            self.log(f"calibration cache stale (tensors): {self.dir / 'tensors.npz'} is missing or corrupt; rebuilding")
            return None
        if manifest.get("sha256") != hashlib.sha256(tensors.tobytes()).hexdigest():
            self.log("calibration cache stale (tensors): stored tensors do not match their checksum; rebuilding")
            return None
        return tensors, targets

    def store_tensors(self, key: CacheKey, tensors: np.ndarray, targets: Optional[np.ndarray]) -> None:
        buffer = io.BytesIO()
        arrays = {"x": tensors} if targets is None else {"x": tensors, "y": targets}
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.dir / "tensors.npz", buffer.getvalue())
        # The manifest goes last: a crash in between leaves no manifest, so no stale pairing.
        atomic_write_json(self.dir / "tensors.json", {"key": key.components, "digest": key.digest,
                                                      "shape": list(tensors.shape),
                                                      "sha256": hashlib.sha256(tensors.tobytes()).hexdigest()})

    # ------------------------------------------------------------- ranges
    def load_ranges(self, key: CacheKey, method: str) -> Optional[Dict[str, Tuple[float, float]]]:
        manifest = self._check(f"{method} ranges", f"ranges-{method}.json", key)
        if manifest is None:
            return None
        return {name: (float(lo), float(hi)) for name, (lo, hi) in manifest.get("ranges", {}).items()}

    def store_ranges(self, key: CacheKey, method: str, ranges: Dict[str, Tuple[float, float]]) -> None:
        atomic_write_json(self.dir / f"ranges-{method}.json",
                          {"key": key.components, "digest": key.digest, "method": method,
                           "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}})
