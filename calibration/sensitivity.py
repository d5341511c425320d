"""Which blocks of the network lose the most when quantized: measured, not assumed.

Nodes are grouped by timm block (stem, blocks.N.M, head, classifier) from their ONNX names. For each
group a model with *only that group* quantized is compared with FP32 on a validation subset; the mean
squared logit error ranks the groups (agreement alone is too coarse when one block barely flips a label).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from fer_edge.data.metrics import Comparison, compare_outputs

_BLOCK = re.compile(r"^/blocks/blocks\.\d+/blocks\.\d+\.\d+")


def group_name(node_name: str) -> str:
    """'/blocks/blocks.3/blocks.3.1/conv_pw/Conv' -> 'blocks.3.1'; '/conv_stem/Conv' -> 'conv_stem'."""
    match = _BLOCK.match(node_name)
    if match:
        return match.group(0).rsplit("/", 1)[1]
    parts = [p for p in node_name.split("/") if p]
    return parts[0] if len(parts) > 1 else (parts[0] if parts else node_name)


def block_groups(nodes: Sequence[Tuple[str, str]]) -> "OrderedDict[str, List[str]]":
    groups: "OrderedDict[str, List[str]]" = OrderedDict()
    for name, _op in nodes:
        groups.setdefault(group_name(name), []).append(name)
    return groups


@dataclass
class GroupSensitivity:
    """One block quantized alone, compared with FP32 (reference = FP32 logits, candidate = this model's)."""
    group: str
    nodes: int
    comparison: Comparison

    @property
    def logit_mse(self) -> float:
        """The ranking key: mean squared logit error against FP32."""
        return self.comparison.mean_squared_diff

    def as_dict(self) -> Dict[str, object]:
        return {"group": self.group, "nodes": self.nodes, "agreement": round(self.comparison.top1_agreement, 5),
                "logit_mse": float(f"{self.logit_mse:.6g}")}


def rank_groups(groups: "OrderedDict[str, List[str]]", quantize_excluding: Callable[[List[str]], bytes],
                logits_of: Callable[[bytes], np.ndarray], reference: np.ndarray,
                progress: Callable[[str], None] = lambda _g: None) -> List[GroupSensitivity]:
    """Most sensitive group first (largest logit MSE; lower agreement breaks ties)."""
    all_nodes = [n for names in groups.values() for n in names]
    results = []
    for group, names in groups.items():
        progress(group)
        keep = set(names)
        logits = logits_of(quantize_excluding([n for n in all_nodes if n not in keep]))
        results.append(GroupSensitivity(group, len(names), compare_outputs(reference, logits)))
    return sorted(results, key=lambda r: (-r.logit_mse, r.comparison.top1_agreement))
