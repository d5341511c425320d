"""Checkpoint files: the training dict (fer_edge.checkpoint.v1) and the shipped fp16 safetensors."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

CHECKPOINT_FORMAT = "fer_edge.checkpoint.v1"
REQUIRED_KEYS = ("format", "arch", "img_size", "in_chans", "labels", "mean", "std", "interpolation", "state_dict")


def to_python(obj: Any) -> Any:
    """Make obj loadable with torch.load(weights_only=True): numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_python(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_python(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(ckpt: Dict[str, Any], path) -> None:
    """Atomic torch.save (write to a temp file, then rename) so an interrupted run never leaves a torn file."""
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint lacks required keys {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(to_python(ckpt), tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> Dict[str, Any]:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


def header_from_checkpoint(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "arch": str(ckpt["arch"]), "img_size": int(ckpt["img_size"]),
            "in_chans": int(ckpt["in_chans"]), "labels": [str(x) for x in ckpt["labels"]],
            "mean": [float(x) for x in ckpt["mean"]], "std": [float(x) for x in ckpt["std"]],
            "interpolation": str(ckpt["interpolation"])}


def write_safetensors(ckpt: Dict[str, Any], out_path, training_summary: Dict[str, Any]) -> Path:
    """The deployable file: EMA weights in fp16 (integer buffers unchanged) + JSON metadata under 'fer_edge'."""
    from safetensors.torch import save_file
    tensors = {}
    for k, v in ckpt["state_dict"].items():
        v = v.detach().cpu()
        tensors[k] = (v.half() if v.is_floating_point() else v).contiguous()
    meta = header_from_checkpoint(ckpt)
    meta["training"] = to_python(training_summary)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_path), metadata={"fer_edge": json.dumps(meta, sort_keys=True)})
    return out_path


def read_safetensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("fer_edge", "{}"))
    return load_file(str(path)), meta
