"""Checkpoint -> FP32 (and FP16) ONNX with contract, parity check and atomic writes. The Python API of fer-export."""
from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

import fer_edge
from fer_edge.benchmarks.datasets import FaceSet, default_fer2013_publictest, load_faces
from fer_edge.runtime.artifact_io import atomic_write_bytes, atomic_write_json, sha256_file, sidecar_path
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import FerEdgeError
from fer_edge.runtime.labels import LABEL_SETS

from . import onnx_export, parity
from .checkpoint import REFERENCE_MODEL, Checkpoint, load_checkpoint, resolve_field, resolve_labels

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class ExportError(FerEdgeError, RuntimeError):
    """Export finished but failed a check (parity); nothing was written."""


@dataclass
class ExportedArtifact:
    precision: str
    path: Path
    sidecar: Path
    contract: ModelContract
    parity: parity.ParityReport


@dataclass
class PreparedModel:
    """A checkpoint turned into an eval-mode torch model and the contract its artifacts will carry."""
    checkpoint: Checkpoint
    model: object
    contract: ModelContract


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import onnxslim
    import torch
    timm = sys.modules.get("timm")
    return {"fer_edge": fer_edge.__version__, "torch": torch.__version__, "timm": getattr(timm, "__version__", "?"),
            "onnx": onnx.__version__, "onnxslim": onnxslim.__version__, "onnxruntime": onnxruntime.__version__}


def label_set_name(labels: List[str]) -> str:
    for name, known in LABEL_SETS.items():
        if list(known) == list(labels):
            return name
    return f"{len(labels)}cls"


def artifact_name(contract: ModelContract, precision: str, suffix: str = ".onnx") -> str:
    return f"{contract.arch}_{contract.input_size}px_{label_set_name(contract.labels)}_{precision}{suffix}"


def prepare_model(checkpoint: Optional[str] = None, arch: Optional[str] = None, img_size: Optional[int] = None,
                  labels: Optional[List[str]] = None, mean: Optional[List[float]] = None,
                  std: Optional[List[float]] = None, interpolation: Optional[str] = None,
                  crop_margin: Optional[float] = None, allow_pickle: bool = False) -> PreparedModel:
    if checkpoint is None:
        if not REFERENCE_MODEL.exists():
            raise FerEdgeError(f"the bundled reference model is missing ({REFERENCE_MODEL}); reinstall fer-edge "
                               "or pass --checkpoint PATH")
        checkpoint = REFERENCE_MODEL
    ckpt = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    in_chans = ckpt.in_chans
    arch = resolve_field(ckpt, "arch", arch, "--arch")
    size = int(resolve_field(ckpt, "img_size", img_size, "--img-size"))
    default_mean, default_std = ([0.5], [0.5]) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    model = onnx_export.build_model(arch, ckpt.num_classes, in_chans, ckpt.state_dict)
    contract = ModelContract(
        arch=arch, labels=resolve_labels(ckpt, labels), input_size=size, channels=in_chans,
        color_order="GRAY" if in_chans == 1 else "RGB",
        mean=[float(v) for v in resolve_field(ckpt, "mean", mean, "--mean", default_mean)],
        std=[float(v) for v in resolve_field(ckpt, "std", std, "--std", default_std)],
        interpolation=resolve_field(ckpt, "interpolation", interpolation, "--interpolation", "area"),
        crop_margin=float(resolve_field(ckpt, "crop_margin", crop_margin, "--crop-margin", 0.1)),
        source_weights_sha256=ckpt.sha256, versions=_versions(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return PreparedModel(ckpt, model, contract.validate())


def parity_faces(parity_data: Optional[str], split: Optional[str], count: Optional[int], log) -> FaceSet:
    path = parity_data or default_fer2013_publictest()
    if path is None:
        # No real faces on this machine: say so loudly and check on random crops rather than skip the check.
        log("WARNING: no face images for the parity check (no --parity-data, and ../shared/data/fer2013 is absent); "
            "checking on 512 random images instead. Pass --parity-data PATH for a check on real faces.")
        rng = np.random.default_rng(0)
        return FaceSet(rng.integers(0, 256, (512, 48, 48), dtype=np.uint8), None, [], "random uint8 images")
    faces = load_faces(path, split=split)
    if count is not None and count < len(faces):
        faces = faces.subset(np.random.default_rng(0).choice(len(faces), count, replace=False))
    return faces


def export_model(checkpoint: Optional[str] = None, arch: Optional[str] = None, img_size: Optional[int] = None,
                 labels: Optional[List[str]] = None, fp16: bool = False, out_dir: str = "fer-artifacts",
                 parity_data: Optional[str] = None, parity_split: Optional[str] = None,
                 parity_count: Optional[int] = None, opset: int = onnx_export.DEFAULT_OPSET,
                 log: Callable[[str], None] = print, command: Optional[List[str]] = None,
                 **model_options) -> Dict[str, ExportedArtifact]:
    """Export FP32 (and FP16) ONNX. Every check runs before anything is written."""
    prepared = prepare_model(checkpoint, arch, img_size, labels, **model_options)
    contract = prepared.contract
    log(f"model: {contract.arch}, {contract.channels}x{contract.input_size}x{contract.input_size}, "
        f"{contract.num_classes} classes {contract.labels}, weights sha256 {contract.source_weights_sha256[:12]}...")
    proto32 = onnx_export.export_fp32(prepared.model, contract, opset=opset)
    protos = {"fp32": proto32}
    if fp16:
        protos["fp16"] = onnx_export.convert_fp16(proto32)

    faces = parity_faces(parity_data, parity_split, parity_count, log)
    tensors = parity.parity_tensors(faces, contract)
    reference = parity.torch_logits(prepared.model, tensors)
    payloads, reports = {}, {}
    for precision, proto in protos.items():
        onnx_export.embed_contract(proto, contract.with_precision(precision))
        payloads[precision] = proto.SerializeToString()
        reports[precision] = parity.compare_logits(reference, parity.ort_logits(payloads[precision], tensors),
                                                   precision, faces.source)
        log(reports[precision].line())
    failed = [r for r in reports.values() if not r.passed]
    if failed:
        raise ExportError("parity check failed, nothing written: " + "; ".join(r.line() for r in failed))

    out = Path(out_dir)
    written = {}
    for precision, payload in payloads.items():
        path = out / artifact_name(contract, precision)
        atomic_write_bytes(path, payload)
        artifact_contract = contract.with_precision(precision)
        atomic_write_json(sidecar_path(path), {
            "contract": artifact_contract.to_dict(),
            "artifact": {"kind": "onnx", "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                         **onnx_export.graph_summary(protos[precision])},
            "parity": reports[precision].as_dict(),
            "export": {"checkpoint": str(prepared.checkpoint.path), "command": command or [],
                       "checkpoint_meta": {k: v for k, v in prepared.checkpoint.meta.items() if k != "config"}},
        })
        written[precision] = ExportedArtifact(precision, path, sidecar_path(path), artifact_contract, reports[precision])
    return written
