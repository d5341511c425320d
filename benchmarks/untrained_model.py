"""A random-weight tf_efficientnetv2_b0 and its ONNX artifact, for latency-only measurements.

Latency does not depend on the weights, and export_model's parity check refuses untrained models
(their logits are near-ties), so the latency scripts export directly. Needs the [export] extra.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Tuple

from fer_edge.data.labels import FER2013_LABELS
from fer_edge.export import onnx_export
from fer_edge.models.artifact_writer import atomic_write_bytes, embed_contract
from fer_edge.models.factory import create_model
from fer_edge.runtime.contract import ModelContract


REFERENCE_ARCH = "tf_efficientnetv2_b0"  # the bundled reference model: 1 channel, 7 classes, 48 px


def build_untrained(size: int = 48, arch: str = REFERENCE_ARCH, seed: int = 0) -> Tuple[object, ModelContract]:
    """(torch model in eval mode with random weights, its contract): 1-channel gray, FER-2013 labels."""
    import torch
    torch.manual_seed(seed)
    model = create_model(arch, len(FER2013_LABELS), in_chans=1).eval()
    contract = ModelContract(arch=arch, labels=list(FER2013_LABELS), input_size=size, channels=1, color_order="GRAY",
                             mean=[0.5], std=[0.5], source_weights_sha256="random-weights",
                             created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return model, contract.validate()


def export_untrained(model, contract: ModelContract, path: Path) -> Path:
    """FP32 ONNX through the project's exporter (legacy exporter + onnxslim) with the contract embedded."""
    proto = onnx_export.export_fp32(model, contract)
    embed_contract(proto, contract)
    return atomic_write_bytes(path, proto.SerializeToString())
