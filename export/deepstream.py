"""A DeepStream `nvinfer` secondary-classifier config for a fer-edge probabilities ONNX: the Python API of
`fer-export --deepstream DIR`.

nvinfer crops each object a detector found, scales it to the network size, and normalises it as
y = net-scale-factor * (x - offsets[c]); the contract's x/255, mean and std become those two keys. What
nvinfer cannot express exactly is returned as warnings (and written at the top of the config): one scale for all
channels, no `area` resize kernel, no crop margin and no squaring of the detector's boxes. The accuracy cost of the
bilinear resize is measured by benchmarks/deepstream_resize.py (results under benchmarks/results/).

Files written in the output folder: the ONNX and its sidecar, `labels.txt` in DeepStream's classifier format (one
line per output layer, labels separated by ';'), and `config_infer_fer.txt` (`[property]` keys).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import numpy as np

from fer_edge.export.engine_build import source_contract
from fer_edge.models.artifact_writer import ExportError, atomic_write_bytes
from fer_edge.runtime.artifact_io import read_sidecar, sidecar_path, verify_artifact
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.model import ONNX_INTEGRITY_FIX

CONFIG_NAME = "config_infer_fer.txt"
LABELS_NAME = "labels.txt"
COLOR_FORMATS = {"RGB": 0, "BGR": 1, "GRAY": 2}                 # model-color-format
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}               # network-mode
# scaling-filter (NvBufSurfTransform_Inter): 0 nearest, 1 bilinear, 2 GPU cubic. nvinfer's default is
# NvBufSurfTransformInter_Default (nearest on the GPU), so the key is always written.
SCALING_FILTERS = {"nearest": 0, "linear": 1, "cubic": 2, "area": 1}
RESIZE_RESULTS = "benchmarks/results/deepstream_resize_fer2013.md"


@dataclass
class DeepStreamOptions:
    gie_id: int = 2                         # gie-unique-id of this classifier
    operate_on_gie_id: int = 1              # the face detector's gie-unique-id
    operate_on_class_ids: Sequence[int] = (0,)   # the detector's face class(es)
    threshold: float = 0.0                  # classifier-threshold: attach a label when its probability exceeds it
    reinfer_interval: int = 10              # secondary-reinfer-interval, frames between re-classifications of a track
    min_face: int = 0                       # input-object-min-width/height in pixels (0: half the model input)
    batch_size: int = 16
    gpu_id: int = 0

    def validate(self) -> "DeepStreamOptions":
        problems = []
        if self.gie_id < 1 or self.operate_on_gie_id < 1 or self.gie_id == self.operate_on_gie_id:
            problems.append(f"gie ids {self.gie_id} (classifier) and {self.operate_on_gie_id} (detector) must be "
                            "positive and different (--ds-gie-id, --ds-detector-id)")
        if not self.operate_on_class_ids or any(c < 0 for c in self.operate_on_class_ids):
            problems.append(f"face class ids {list(self.operate_on_class_ids)} (--ds-face-classes) must be 0 or more")
        if not 0.0 <= self.threshold < 1.0:
            problems.append(f"threshold {self.threshold} (--ds-threshold) must be in [0, 1)")
        if self.reinfer_interval < 0 or self.min_face < 0 or self.batch_size < 1 or self.gpu_id < 0:
            problems.append("reinfer interval, minimum face size and GPU id must be 0 or more, batch size 1 or more")
        if problems:
            raise ExportError("DeepStream options: " + "; ".join(problems))
        return self


def nvinfer_normalization(contract: ModelContract) -> Tuple[float, List[float], List[str]]:
    """(net-scale-factor, offsets, warnings) for y = net-scale-factor * (x - offsets[c]).

    (x/255 - mean_c) / std_c = (x - 255 mean_c) / (255 std_c): offsets_c = 255 mean_c exactly, and one
    net-scale-factor for all channels, exact when every std is the same; otherwise the mean of the per-channel
    scales, with a warning. Computed in float64: the config is text that nvinfer parses as float."""
    scale = 1.0 / (255.0 * np.asarray(contract.std, dtype=np.float64))
    offsets = [255.0 * float(m) for m in contract.mean]
    factor = float(scale.mean())
    warnings = []
    if not np.allclose(scale, factor, rtol=1e-6, atol=0.0):
        errors = ", ".join(f"{c} {100 * (factor / s - 1):+.1f}%" for c, s in zip(contract.color_order, scale))
        warnings.append(f"std {contract.std} differs across channels but nvinfer has one net-scale-factor: "
                        f"{factor:.6g} scales the channels' normalised values by {errors}")
    return factor, offsets, warnings


def contract_warnings(contract: ModelContract) -> List[str]:
    """Every contract field nvinfer cannot reproduce exactly, besides the normalisation."""
    warnings = []
    if contract.interpolation == "area":
        warnings.append(f"the contract resizes with OpenCV's 'area' kernel; nvinfer has none, so this config uses "
                        f"bilinear (scaling-filter=1). Measured effect on FER-2013: {RESIZE_RESULTS}")
    elif contract.interpolation == "cubic":
        warnings.append("the contract resizes with OpenCV's cubic kernel; nvinfer's GPU cubic (scaling-filter=2) "
                        "is a different implementation")
    if contract.crop_margin > 0:
        warnings.append(f"the contract crops {contract.crop_margin:.0%} of the face box on every side beyond the box; "
                        "nvinfer crops exactly the detector's box, so expand the boxes by that margin (in the "
                        "detector's parser or an nvdspreprocess step), or faces are cropped tighter than in training")
    if contract.crop_square:
        warnings.append("the contract squares each face box around its centre before cropping; nvinfer stretches "
                        "the box to the network size (maintain-aspect-ratio=0), so make the detector's boxes square")
    return warnings


def deepstream_config(contract: ModelContract, onnx_name: str, options: DeepStreamOptions) -> Tuple[str, List[str]]:
    """The config text (warnings as comments on top) and the warnings."""
    if contract.output_kind != "probabilities":
        raise ExportError(f"{onnx_name}: outputs {contract.output_kind}; nvinfer's classifier parser reads "
                          "probabilities. Use the softmax export (<name>_probs.onnx: fer-export --probabilities)")
    if contract.dtype != "float32":
        raise ExportError(f"{onnx_name}: has a {contract.dtype} input; nvinfer feeds normalised float planar tensors. "
                          "Use the float-input export (without --uint8-input)")
    bad = [label for label in contract.labels if ";" in label or "\n" in label]
    if bad:
        raise ExportError(f"labels {bad} contain ';' or a line break, which DeepStream's label file uses as separators")
    options = options.validate()
    factor, offsets, warnings = nvinfer_normalization(contract)
    warnings += contract_warnings(contract)
    size = contract.input_size
    min_face = options.min_face or max(1, size // 2)
    properties = [
        ("gpu-id", options.gpu_id), ("onnx-file", onnx_name), ("labelfile-path", LABELS_NAME),
        ("network-type", 1), ("process-mode", 2), ("network-mode", NETWORK_MODES[contract.precision]),
        ("batch-size", options.batch_size),
        ("infer-dims", ";".join(str(d) for d in contract.input_dims())),
        ("model-color-format", COLOR_FORMATS[contract.color_order]),
        ("net-scale-factor", f"{factor:.10g}"), ("offsets", ";".join(f"{o:.10g}" for o in offsets)),
        ("maintain-aspect-ratio", 0), ("scaling-filter", SCALING_FILTERS[contract.interpolation]),
        ("output-blob-names", contract.output_name), ("classifier-threshold", f"{options.threshold:g}"),
        ("classifier-type", "fer_expression"),
        ("gie-unique-id", options.gie_id), ("operate-on-gie-id", options.operate_on_gie_id),
        ("operate-on-class-ids", ";".join(str(c) for c in options.operate_on_class_ids)),
        ("secondary-reinfer-interval", options.reinfer_interval),
        ("input-object-min-width", min_face), ("input-object-min-height", min_face),
    ]
    header = [f"# nvinfer secondary classifier: fer-edge facial expressions ({', '.join(contract.labels)}) on the "
              f"faces of detector gie {options.operate_on_gie_id}.",
              f"# Written by fer-export from {onnx_name} ({contract.precision}, {contract.color_order} "
              f"{size}x{size}). nvinfer builds its TensorRT engine on first run.",
              "# Where nvinfer differs from the fer-edge contract:"]
    header += [f"# WARNING: {w}" for w in warnings] or ["#   nowhere"]
    text = "\n".join(header + ["[property]"] + [f"{k}={v}" for k, v in properties]) + "\n"
    return text, warnings


def write_deepstream_config(onnx_path: Path, out_dir: Path, options: DeepStreamOptions = DeepStreamOptions(),
                            log: Callable[[str], None] = print) -> Path:
    """Copy the probabilities ONNX (and sidecar) into out_dir and write labels.txt and the config; returns the
    config's path. Each warning is also logged."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file() or onnx_path.suffix.lower() != ".onnx":
        raise ExportError(f"{onnx_path}: no such .onnx file; DeepStream's config takes a fer-edge probabilities ONNX")
    sidecar = read_sidecar(onnx_path)
    verify_artifact(onnx_path, sidecar, ONNX_INTEGRITY_FIX)
    contract = source_contract(onnx_path)
    text, warnings = deepstream_config(contract, onnx_path.name, options)
    for warning in warnings:
        log(f"WARNING (DeepStream): {warning}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if onnx_path.resolve() != (out_dir / onnx_path.name).resolve():
            # Model first, config last: the config never points at a file that is not there yet.
            atomic_write_bytes(out_dir / onnx_path.name, onnx_path.read_bytes())
            if sidecar is not None:
                atomic_write_bytes(sidecar_path(out_dir / onnx_path.name), sidecar_path(onnx_path).read_bytes())
        atomic_write_bytes(out_dir / LABELS_NAME, (";".join(contract.labels) + "\n").encode())
        return atomic_write_bytes(out_dir / CONFIG_NAME, text.encode())
    except OSError as exc:
        raise ExportError(f"cannot write in {out_dir} ({exc.strerror or exc}); pass another --deepstream folder") from None
