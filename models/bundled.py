"""The models that ship inside the package, chosen by name: `fer-export --model ferplus`, `fer-demo --model ferplus`.

Each is a fp16 .safetensors in models/reference_model/ with its contract in the file's metadata. Without a name
the FER-2013 model is used (the one every quickstart number is measured on).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from fer_edge.runtime.artifact_io import sha256_file
from fer_edge.runtime.errors import FerEdgeError

_FOLDER = Path(__file__).resolve().parent / "reference_model"


@dataclass(frozen=True)
class BundledModel:
    name: str
    weights: Path
    summary: str   # one line for --help and logs


BUNDLED_MODELS: Dict[str, BundledModel] = {
    "fer2013": BundledModel("fer2013", _FOLDER / "fer2013_tf_efficientnetv2_b0.safetensors",
                            "7 FER-2013 classes (angry, disgust, fear, happy, sad, surprise, neutral)"),
    "ferplus": BundledModel("ferplus", _FOLDER / "ferplus_tf_efficientnetv2_b0.safetensors",
                            "8 FER+ classes (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt)"),
}
DEFAULT_MODEL = "fer2013"
REFERENCE_MODEL = BUNDLED_MODELS[DEFAULT_MODEL].weights   # the default bundled weights


def bundled_model(name: Optional[str] = None) -> BundledModel:
    """The bundled model called `name` (None: the default), checked to be present."""
    name = DEFAULT_MODEL if name is None else name
    if name not in BUNDLED_MODELS:
        raise FerEdgeError(f"--model {name}: no bundled model of that name; the bundled models are "
                           f"{', '.join(BUNDLED_MODELS)} (or pass a file)")
    model = BUNDLED_MODELS[name]
    if not model.weights.is_file():
        raise FerEdgeError(f"the bundled {name} model {model.weights} is missing; reinstall fer-edge or pass a "
                           "checkpoint/artifact file instead")
    return model


def weights_sha256(name: Optional[str] = None) -> str:
    """sha256 of a bundled model's weights, read once per process per file version: an export lookup, the check
    of the shipped calibration set and the export itself all ask for it, and each read is 12 MB."""
    weights = bundled_model(name).weights
    stat = weights.stat()
    return _sha256_once(str(weights), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _sha256_once(path: str, mtime_ns: int, size: int) -> str:   # a rewritten file has a new mtime or size
    return sha256_file(path)


def bundled_name_of(path) -> Optional[str]:
    """The bundled model's name when `path` is one of the bundled weight files, else None."""
    resolved = Path(path).resolve()
    for name, model in BUNDLED_MODELS.items():
        if model.weights == resolved:
            return name
    return None


def names_help() -> str:
    return "; ".join(f"{m.name}: {m.summary}" for m in BUNDLED_MODELS.values())
