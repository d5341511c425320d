"""Checkpoint -> FP32 (and FP16) ONNX with contract, parity check and atomic writes. The Python API of fer-export."""
from __future__ import annotations

import datetime as _dt
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

import fer_edge
from fer_edge.benchmarks.datasets import FaceSet, default_fer2013_publictest, load_faces
from fer_edge.runtime.artifact_io import remove_stale_temp_files, sidecar_path, write_artifact
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import DataError, FerEdgeError
from fer_edge.runtime.labels import LABEL_SETS

from . import onnx_export, parity
from .checkpoint import REFERENCE_MODEL, Checkpoint, CheckpointError, load_checkpoint, resolve_field, resolve_labels

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class ExportError(FerEdgeError, RuntimeError):
    """The export cannot write where asked, or its result failed a check (parity); nothing was written."""


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


@dataclass
class ExportInputs:
    """Everything an export reads, each checked in seconds before any model is built or anything written."""
    out: Path
    checkpoint: Checkpoint
    contract: ModelContract
    parity_faces: FaceSet


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


def read_checkpoint(checkpoint: Optional[str], allow_pickle: bool = False) -> Checkpoint:
    """The given checkpoint, or the bundled reference model when none is given."""
    if checkpoint is None:
        if not REFERENCE_MODEL.exists():
            raise CheckpointError(f"the bundled reference model is missing ({REFERENCE_MODEL}); reinstall fer-edge "
                                  "or pass --checkpoint PATH")
        checkpoint = REFERENCE_MODEL
    return load_checkpoint(checkpoint, allow_pickle=allow_pickle)


def model_contract(ckpt: Checkpoint, arch: Optional[str] = None, img_size: Optional[int] = None,
                   labels: Optional[List[str]] = None, mean: Optional[List[float]] = None,
                   std: Optional[List[float]] = None, interpolation: Optional[str] = None,
                   crop_margin: Optional[float] = None) -> ModelContract:
    """The contract the artifacts will carry; refuses an arch whose tensor shapes the checkpoint does not fit."""
    in_chans = ckpt.in_chans
    arch = resolve_field(ckpt, "arch", arch, "--arch")
    onnx_export.check_fits(arch, ckpt.num_classes, in_chans, ckpt.state_dict)
    size = int(resolve_field(ckpt, "img_size", img_size, "--img-size"))
    default_mean, default_std = ([0.5], [0.5]) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    contract = ModelContract(
        arch=arch, labels=resolve_labels(ckpt, labels), input_size=size, channels=in_chans,
        color_order="GRAY" if in_chans == 1 else "RGB",
        mean=[float(v) for v in resolve_field(ckpt, "mean", mean, "--mean", default_mean)],
        std=[float(v) for v in resolve_field(ckpt, "std", std, "--std", default_std)],
        interpolation=resolve_field(ckpt, "interpolation", interpolation, "--interpolation", "area"),
        crop_margin=float(resolve_field(ckpt, "crop_margin", crop_margin, "--crop-margin", 0.1)),
        source_weights_sha256=ckpt.sha256, versions=_versions(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return contract.validate()


def prepare_model(checkpoint: Optional[str] = None, arch: Optional[str] = None, img_size: Optional[int] = None,
                  labels: Optional[List[str]] = None, mean: Optional[List[float]] = None,
                  std: Optional[List[float]] = None, interpolation: Optional[str] = None,
                  crop_margin: Optional[float] = None, allow_pickle: bool = False) -> PreparedModel:
    ckpt = read_checkpoint(checkpoint, allow_pickle)
    contract = model_contract(ckpt, arch, img_size, labels, mean, std, interpolation, crop_margin)
    return PreparedModel(ckpt, _build(ckpt, contract), contract)


def _build(ckpt: Checkpoint, contract: ModelContract):
    return onnx_export.build_model(contract.arch, ckpt.num_classes, contract.channels, ckpt.state_dict)


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
    """Check and read every input of an export: output folder, checkpoint, arch fit, contract, parity faces."""
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


def write_export_artifact(path: Path, payload: bytes, contract: ModelContract, **sidecar) -> Path:
    """write_artifact for an ONNX artifact, with a disk that filled up (or vanished) since the up-front check
    reported as one line instead of a traceback."""
    try:
        return write_artifact(path, payload, contract, "onnx", **sidecar)
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); free some space or pass another --out, "
                          "then run the export again") from None


def export_checked(inputs: ExportInputs, fp16: bool = False, opset: int = onnx_export.DEFAULT_OPSET,
                   log: Callable[[str], None] = print,
                   command: Optional[List[str]] = None) -> Dict[str, ExportedArtifact]:
    """The long part of export_model, on inputs check_export_inputs has read."""
    remove_stale_temp_files(inputs.out)  # temp files of an earlier run that was killed
    contract, ckpt = inputs.contract, inputs.checkpoint
    log(f"model: {contract.arch}, {contract.channels}x{contract.input_size}x{contract.input_size}, "
        f"{contract.num_classes} classes {contract.labels}, weights sha256 {contract.source_weights_sha256[:12]}...")
    model = _build(ckpt, contract)
    proto32 = onnx_export.export_fp32(model, contract, opset=opset)
    protos = {"fp32": proto32}
    if fp16:
        protos["fp16"] = onnx_export.convert_fp16(proto32)

    faces = inputs.parity_faces
    tensors = parity.parity_tensors(faces, contract)
    reference = parity.torch_logits(model, tensors)
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

    written = {}
    for precision, payload in payloads.items():
        path = inputs.out / artifact_name(contract, precision)
        artifact_contract = contract.with_precision(precision)
        write_export_artifact(path, payload, artifact_contract, artifact=onnx_export.graph_summary(protos[precision]),
                              parity=reports[precision].as_dict(),
                              export={"checkpoint": str(ckpt.path), "command": command or [],
                                      "checkpoint_meta": {k: v for k, v in ckpt.meta.items() if k != "config"}})
        written[precision] = ExportedArtifact(precision, path, sidecar_path(path), artifact_contract, reports[precision])
    return written
