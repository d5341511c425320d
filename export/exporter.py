"""Checkpoint -> FP32 (and FP16) ONNX with contract, parity check and atomic writes. The Python API of fer-export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from fer_edge.data.datasets import FaceSet, default_fer2013_publictest, load_faces
from fer_edge.export import onnx_export, parity
from fer_edge.models.artifact_writer import (ExportError, artifact_name, check_output_folder, embed_contract,
                                             graph_summary, remove_stale_temp_files, write_export_artifact)
from fer_edge.models.checkpoint import Checkpoint, require_export_stack
from fer_edge.models.factory import build_from_checkpoint, model_contract, read_checkpoint
from fer_edge.runtime.artifact_io import sidecar_path
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import DataError


@dataclass
class ExportedArtifact:
    precision: str
    path: Path
    sidecar: Path
    contract: ModelContract
    parity: parity.ParityReport


@dataclass
class ExportInputs:
    """Everything an export reads, each checked in seconds before any model is built or anything written."""
    out: Path
    checkpoint: Checkpoint
    contract: ModelContract
    parity_faces: FaceSet


def parity_faces(parity_data: Optional[str], split: Optional[str], count: Optional[int], log) -> FaceSet:
    if count is not None and count < 1:
        raise DataError(f"--parity-count {count}: must be 1 or more (or omit it to check on every image)")
    path = parity_data or default_fer2013_publictest()
    if path is None:
        # No real faces on this machine: say so loudly and check on random crops rather than skip the check.
        log("WARNING: no face images for the parity check (no --parity-data, and ../shared/data/fer2013 is absent); "
            "checking on 512 random images instead. Pass --parity-data PATH for a check on real faces.")
        rng = np.random.default_rng(0)
        return FaceSet(rng.integers(0, 256, (512, 48, 48), dtype=np.uint8), None, [], "random uint8 images")
    try:
        faces = load_faces(path, split=split)
    except DataError as exc:  # name the flag: the reader's message names only the path
        raise DataError(f"--parity-data {exc}. It takes a fer2013.csv, an .npz (x, y) or a folder of face "
                        "images; omit it to use FER-2013 PublicTest from ../shared") from None
    if count is not None and count < len(faces):
        faces = faces.subset(np.random.default_rng(0).choice(len(faces), count, replace=False))
    return faces


def check_export_inputs(checkpoint: Optional[str] = None, arch: Optional[str] = None,
                        img_size: Optional[int] = None, labels: Optional[List[str]] = None,
                        out_dir: str = "fer-artifacts", parity_data: Optional[str] = None,
                        parity_split: Optional[str] = None, parity_count: Optional[int] = None,
                        log: Callable[[str], None] = print, allow_pickle: bool = False,
                        **contract_options) -> ExportInputs:
    """Check and read every input of an export: packages, output folder, checkpoint, arch fit, contract, parity faces."""
    require_export_stack("fer-export")
    out = check_output_folder(out_dir)
    ckpt = read_checkpoint(checkpoint, allow_pickle)
    contract = model_contract(ckpt, arch, img_size, labels, **contract_options)
    faces = parity_faces(parity_data, parity_split, parity_count, log)
    return ExportInputs(out, ckpt, contract, faces)


def export_model(checkpoint: Optional[str] = None, arch: Optional[str] = None, img_size: Optional[int] = None,
                 labels: Optional[List[str]] = None, fp16: bool = False, out_dir: str = "fer-artifacts",
                 parity_data: Optional[str] = None, parity_split: Optional[str] = None,
                 parity_count: Optional[int] = None, opset: int = onnx_export.DEFAULT_OPSET,
                 log: Callable[[str], None] = print, command: Optional[List[str]] = None,
                 **model_options) -> Dict[str, ExportedArtifact]:
    """Export FP32 (and FP16) ONNX. Every input is checked before the export starts; nothing is written unless
    the parity check passes."""
    inputs = check_export_inputs(checkpoint, arch, img_size, labels, out_dir, parity_data, parity_split,
                                 parity_count, log, **model_options)
    return export_checked(inputs, fp16=fp16, opset=opset, log=log, command=command)


def export_checked(inputs: ExportInputs, fp16: bool = False, opset: int = onnx_export.DEFAULT_OPSET,
                   log: Callable[[str], None] = print,
                   command: Optional[List[str]] = None) -> Dict[str, ExportedArtifact]:
    """The long part of export_model, on inputs check_export_inputs has read."""
    remove_stale_temp_files(inputs.out)  # temp files of an earlier run that was killed
    contract, ckpt = inputs.contract, inputs.checkpoint
    log(f"model: {contract.arch}, {contract.channels}x{contract.input_size}x{contract.input_size}, "
        f"{contract.num_classes} classes {contract.labels}, weights sha256 {contract.source_weights_sha256[:12]}...")
    model = build_from_checkpoint(ckpt, contract)
    proto32 = onnx_export.export_fp32(model, contract, opset=opset)
    protos = {"fp32": proto32}
    if fp16:
        protos["fp16"] = onnx_export.convert_fp16(proto32)

    faces = inputs.parity_faces
    tensors = parity.parity_tensors(faces, contract)
    reference = parity.torch_logits(model, tensors)
    payloads, reports = {}, {}
    for precision, proto in protos.items():
        embed_contract(proto, contract.with_precision(precision))
        payloads[precision] = proto.SerializeToString()
        reports[precision] = parity.compare_logits(reference, parity.ort_logits(payloads[precision], tensors),
                                                   precision, faces.source)
        log(reports[precision].line())
    failed = [r for r in reports.values() if not r.passed]
    if failed:
        raise ExportError("parity check failed, nothing written: " + "; ".join(r.line() for r in failed))

    written = {}
    for precision, payload in payloads.items():
        path = inputs.out / artifact_name(contract, precision)
        artifact_contract = contract.with_precision(precision)
        write_export_artifact(path, payload, artifact_contract, artifact=graph_summary(protos[precision]),
                              parity=reports[precision].as_dict(),
                              export={"checkpoint": str(ckpt.path), "command": command or [],
                                      "checkpoint_meta": {k: v for k, v in ckpt.meta.items() if k != "config"}})
        written[precision] = ExportedArtifact(precision, path, sidecar_path(path), artifact_contract, reports[precision])
    return written
