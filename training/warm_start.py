"""Warm start: begin a new run (fresh optimizer and schedule) from another run's weights.

Used for a second training cycle on the same labels, and to move a FER-2013 backbone to FER+ (8 classes),
where the classifier does not fit and starts fresh. Unlike --resume, nothing of the old run's recipe is kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple


def source_weights(path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(EMA state dict, header) of a fer-train .pt or a shipped .safetensors."""
    from fer_edge.models.checkpoint import read_weights
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_from: {path} does not exist; give a fer-train best.pt/last.pt or a shipped "
                                ".safetensors")
    return read_weights(path)


def warm_start(model, path, arch: str, labels: List[str], in_chans: int = 1) -> Dict[str, Any]:
    """Copy the source's weights into `model`; the classifier only when the labels are the same, in order.

    Returns what was done, for the run log: {'source', 'copied', 'fresh': [names kept at their init]}.
    """
    import torch
    state, meta = source_weights(path)
    if meta.get("arch") and meta["arch"] != arch:
        raise ValueError(f"init_from: {path} is a {meta['arch']} model, this run trains {arch}; "
                         "warm starts need the same architecture")
    if meta.get("in_chans") is not None and int(meta["in_chans"]) != in_chans:
        raise ValueError(f"init_from: {path} has {meta['in_chans']} input channels, this run {in_chans}")
    same_labels = [str(x) for x in meta.get("labels", [])] == list(labels)
    head = {name for name, _ in model.get_classifier().named_parameters(prefix=_classifier_prefix(model))}
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and k not in head)
    if missing:
        raise ValueError(f"init_from: {path} lacks {len(missing)} of this model's tensors (first: {missing[0]}); "
                         "it is not a checkpoint of this architecture")
    copied, fresh = 0, []
    with torch.no_grad():
        for name, tensor in own.items():
            if name in head and not same_labels:
                fresh.append(name)
                continue
            src = state[name]
            if tuple(src.shape) != tuple(tensor.shape):
                raise ValueError(f"init_from: {name} is {tuple(src.shape)} in {path}, {tuple(tensor.shape)} here")
            tensor.copy_(src.to(tensor.dtype))
            copied += 1
    return {"source": str(path), "copied": copied, "fresh": fresh,
            "source_labels": [str(x) for x in meta.get("labels", [])]}


def _classifier_prefix(model) -> str:
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name
    raise ValueError("model has no named classifier module")
