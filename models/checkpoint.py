"""The checkpoint format, both sides: fer-train's writer and every reader.

Readers take any timm EfficientNetV2 checkpoint safely (.pt/.pth state_dict, a training dict, or .safetensors);
fer-train writes the training dict (CHECKPOINT_FORMAT) and ships its EMA weights as fp16 .safetensors with the same
header under the 'fer_edge' metadata key. torch is imported inside functions: this layer loads without it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from fer_edge.runtime.artifact_io import sha256_file
from fer_edge.runtime.errors import BackendUnavailableError, FerEdgeError
from fer_edge.data.labels import LABEL_SETS

CHECKPOINT_FORMAT = "fer_edge.checkpoint.v1"
# What every fer-train checkpoint holds; the header keys (all but state_dict) also head the shipped .safetensors.
REQUIRED_KEYS = ("format", "arch", "img_size", "in_chans", "labels", "mean", "std", "interpolation", "state_dict")
# Keys under which training scripts (ours, timm's train.py, Lightning, plain loops) keep the weights.
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema", "model_ema", "ema")
_PREFIXES = ("module.", "model.", "_orig_mod.")


# What reading checkpoints and building models need: the [export] extra, with the CPU build of torch pinned first
# (unpinned, pip pulls several GB of CUDA wheels).
EXPORT_STACK = ("torch", "timm", "safetensors", "onnx", "onnxslim")
EXPORT_INSTALL = "pip install torch==2.13.0 torchvision==0.28.0 && pip install 'fer-edge[export]'"


def require_export_stack(purpose: str, modules=EXPORT_STACK) -> None:
    """Refuse early, with the install command, when the packages a toolchain step needs are missing; otherwise the
    first symptom is an ImportError deep inside, or a checkpoint reported as corrupt."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                                      f"not installed (the [export] extra): {EXPORT_INSTALL}")


class CheckpointError(FerEdgeError, ValueError):
    """The checkpoint cannot be read or does not describe a model we can build."""


@dataclass
class Checkpoint:
    path: Path
    sha256: str
    state_dict: Dict[str, Any]
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        weight = self.state_dict.get("conv_stem.weight")
        if weight is None:
            raise CheckpointError(f"{self.path}: no 'conv_stem.weight' tensor; this is not a timm EfficientNet(V2) "
                                  "state_dict (keys start with: " + ", ".join(list(self.state_dict)[:3]) + ")")
        return int(weight.shape[1])

    @property
    def num_classes(self) -> int:
        weight = self.state_dict.get("classifier.weight")
        if weight is None:
            raise CheckpointError(f"{self.path}: no 'classifier.weight' tensor; cannot tell the class count")
        return int(weight.shape[0])


def _strip_prefixes(state: Dict[str, Any]) -> Dict[str, Any]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _extract_state_dict(obj: Any, path: Path) -> tuple:
    import torch
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), {}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state_dict or a dict holding one")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool, list)) or v is None}
    for key in _STATE_KEYS:
        value = obj.get(key)
        if isinstance(value, torch.nn.Module):
            return value.state_dict(), meta
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return value, meta
    raise CheckpointError(f"{path}: no state_dict found; looked for a tensor dict or one of the keys {_STATE_KEYS} "
                          f"(top-level keys: {sorted(obj)[:10]})")


def _check_readable(path: Path) -> None:
    """A plain, non-empty file we may open: the cheap checks that run before any unpickling."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; pass the .pt/.pth/.safetensors file in it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open the checkpoint ({exc.strerror}); make it readable "
                              "(chmod a+r) or copy it somewhere you can read") from None
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes), so the copy or download did not finish; "
                              "copy the checkpoint again")


def _first_line(text: str, limit: int = 160) -> str:
    """The first sentence of an error text: torch appends paragraphs of generic advice."""
    line = (text.strip().splitlines() or [""])[0]
    return line.split(". ")[0][:limit]


def _unpickling_detail(exc: BaseException) -> str:
    """The specific reason inside torch's long weights_only message (after 'WeightsUnpickler error:')."""
    text = str(exc)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    if marker:
        lines = [line.strip() for line in rest.splitlines() if line.strip()]
        return lines[0][:200] if lines else _first_line(text)
    return _first_line(text)


# torch names the class or function a real pickle needs: "Unsupported global: GLOBAL argparse.Namespace was not
# an allowed global by default". Random bytes fail earlier, e.g. "Unsupported operand 177", "invalid load key" or
# "PytorchStreamReader failed reading zip archive".
_NEEDS_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _not_a_checkpoint(path: Path, exc: BaseException) -> CheckpointError:
    reason = _unpickling_detail(exc) if isinstance(exc, pickle.UnpicklingError) else _first_line(str(exc))
    return CheckpointError(
        f"{path}: not a readable PyTorch checkpoint; the file is corrupt, truncated or not written by torch.save "
        f"({type(exc).__name__}: {reason or 'no details'}). Copy or download it again and compare its size and "
        "sha256 with the original, or pass the right file.")


def _torch_load(path: Path, allow_pickle: bool):
    """torch.load without running code from the file unless allowed; a corrupt file never asks for --allow-pickle."""
    import torch
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError... on bad files
        if not allow_pickle:
            needs = _NEEDS_GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
            if needs is None:
                raise _not_a_checkpoint(path, exc) from None
            raise CheckpointError(
                f"{path}: this checkpoint holds a Python object ({needs.group(1)}) that only arbitrary unpickling "
                "can load, and unpickling can run code hidden in the file. Only if you trust its source, re-run "
                "with --allow-pickle; better, save a plain state_dict: "
                "torch.save(model.state_dict(), 'weights.pt').") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:  # a real pickle whose classes live in code not installed here
        raise CheckpointError(f"{path}: unpickling it needs code that is not importable here ({exc}); export on "
                              "the machine with the training code, or re-save a plain state_dict there: "
                              "torch.save(model.state_dict(), 'weights.pt')") from None
    except Exception as exc:  # opted in, and the full unpickler failed too: the file itself is broken
        raise _not_a_checkpoint(path, exc) from None


def read_safetensors(path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(tensors as stored, the 'fer_edge' metadata dict or {}) of a .safetensors file."""
    path = Path(path)
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(str(exc))}); the file is "
                              "corrupt or truncated: copy or download it again") from None
    try:
        meta = json.loads(header["fer_edge"]) if "fer_edge" in header else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its 'fer_edge' metadata is not valid JSON ({exc}); re-save the file "
                              "with fer-train ship") from None
    return state, meta


def load_checkpoint(path, allow_pickle: bool = False) -> Checkpoint:
    """Load weights without executing code: torch.load(weights_only=True) or safetensors."""
    path = Path(path)
    _check_readable(path)
    require_export_stack(f"reading the checkpoint {path.name}", ("torch", "safetensors"))
    if path.suffix.lower() == ".safetensors":
        state, meta = read_safetensors(path)
    else:
        state, meta = _extract_state_dict(_torch_load(path, allow_pickle), path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in _strip_prefixes(dict(state)).items()}
    return Checkpoint(path=path, sha256=sha256_file(path), state_dict=state, meta=meta)


def resolve_labels(ckpt: Checkpoint, labels_flag: Optional[List[str]]) -> List[str]:
    recorded = ckpt.meta.get("labels")
    n = ckpt.num_classes
    if labels_flag is not None:
        if recorded and list(recorded) != list(labels_flag):
            raise CheckpointError(f"--labels {labels_flag} contradicts the labels recorded in {ckpt.path.name}: {recorded}")
        labels = list(labels_flag)
    elif recorded:
        labels = list(recorded)
    elif n == len(LABEL_SETS["fer2013"]):
        labels = list(LABEL_SETS["fer2013"])
    elif n == len(LABEL_SETS["ferplus"]):
        labels = list(LABEL_SETS["ferplus"])
    else:
        raise CheckpointError(f"{ckpt.path.name} has {n} classes and records no labels; pass --labels a,b,c "
                              "with the class names in output order")
    if len(labels) != n:
        raise CheckpointError(f"{len(labels)} labels given ({labels}) but the classifier has {n} outputs")
    return labels


def resolve_field(ckpt: Checkpoint, key: str, flag_value, flag_name: str, default=None):
    """Checkpoint value where recorded, else the flag; refuse a flag that contradicts the checkpoint."""
    recorded = ckpt.meta.get(key)
    if recorded is not None and flag_value is not None and recorded != flag_value:
        raise CheckpointError(f"{flag_name} {flag_value} contradicts {key}={recorded!r} recorded in {ckpt.path.name}; "
                              f"drop {flag_name} or pass the right checkpoint")
    value = recorded if recorded is not None else flag_value
    if value is None:
        if default is None:
            raise CheckpointError(f"{ckpt.path.name} does not record {key}; pass {flag_name}")
        value = default
    return value


# ------------------------------------------------------------------ fer-train's side: writing and resuming
def to_python(obj: Any) -> Any:
    """Make obj loadable with torch.load(weights_only=True): numpy scalars/arrays -> Python, tuples -> lists."""
    import numpy as np
    import torch
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
    import torch
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint lacks required keys {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(to_python(ckpt), tmp)
    os.replace(tmp, path)


def load_training_state(path) -> Dict[str, Any]:
    """The whole fer-train checkpoint dict (weights, optimizer, scheduler, history ...) to resume or ship from."""
    import torch
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


def header_from_checkpoint(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The contract-relevant header of a training checkpoint: format, arch, size, channels, labels, normalisation."""
    return {"format": CHECKPOINT_FORMAT, "arch": str(ckpt["arch"]), "img_size": int(ckpt["img_size"]),
            "in_chans": int(ckpt["in_chans"]), "labels": [str(x) for x in ckpt["labels"]],
            "mean": [float(x) for x in ckpt["mean"]], "std": [float(x) for x in ckpt["std"]],
            "interpolation": str(ckpt["interpolation"])}


def read_weights(path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(state dict, header) of a fer-train .pt (its EMA weights) or a shipped .safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    ckpt = load_training_state(path)
    return ckpt["state_dict"], header_from_checkpoint(ckpt)


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
