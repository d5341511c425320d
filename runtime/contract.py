"""The preprocessing contract every fer-edge artifact carries: how a face crop becomes the model's input tensor
and what the outputs mean. Export writes it into the ONNX `metadata_props` (key `fer_edge.contract`) and into
the sidecar `<artifact>.json`; readers refuse an artifact whose contract is missing or inconsistent.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from fer_edge.runtime.errors import ContractError

SCHEMA_VERSION = 1
METADATA_KEY = "fer_edge.contract"

INTERPOLATIONS = ("area", "linear", "cubic", "nearest")
COLOR_ORDERS = ("GRAY", "BGR", "RGB")
PRECISIONS = ("fp32", "fp16", "int8")
# (dtype, layout) of a model input: normalised float32 NCHW, or uint8 NHWC pixels with /255, mean and std in the graph.
INPUT_FORMATS = (("float32", "NCHW"), ("uint8", "NHWC"))


@dataclass
class ModelContract:
    arch: str
    labels: List[str]
    input_size: int
    channels: int
    color_order: str
    mean: List[float]
    std: List[float]
    interpolation: str = "area"
    # Fraction of the (square) face box added on every side before cropping; 0.1 = 10% margin.
    crop_margin: float = 0.1
    crop_square: bool = True
    dtype: str = "float32"
    layout: str = "NCHW"
    precision: str = "fp32"
    input_name: str = "input"
    output_name: str = "logits"
    output_kind: str = "logits"
    source_weights_sha256: str = ""
    # INT8 only: what is not INT8, read from the quantized graph (calibration.quantize.precision_mix): float_dtype,
    # float_blocks, blocks, float_share, int8_layers, float_layers. {} for fp32/fp16, and for INT8 artifacts
    # written before fer-edge recorded it (their float parts are FP32).
    precision_mix: Dict[str, Any] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=dict)
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def validate(self) -> "ModelContract":
        """Raise ContractError naming every inconsistency found."""
        problems = []
        if self.schema_version != SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version} (this fer-edge reads {SCHEMA_VERSION})")
        if not isinstance(self.labels, list) or len(self.labels) < 2 or not all(isinstance(x, str) and x for x in self.labels):
            problems.append("labels must be a list of at least two non-empty class names")
        elif len(set(self.labels)) != len(self.labels):
            problems.append(f"labels contain duplicates: {self.labels}")
        if not isinstance(self.input_size, int) or not 8 <= self.input_size <= 1024:
            problems.append(f"input_size {self.input_size!r} must be an integer between 8 and 1024")
        if self.channels not in (1, 3):
            problems.append(f"channels {self.channels!r} must be 1 or 3")
        if self.color_order not in COLOR_ORDERS:
            problems.append(f"color_order {self.color_order!r} must be one of {COLOR_ORDERS}")
        elif (self.channels == 1) != (self.color_order == "GRAY"):
            problems.append(f"color_order {self.color_order} does not fit channels={self.channels} (1 channel means GRAY)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != self.channels:
                problems.append(f"{name} must list one value per channel ({self.channels}), got {values!r}")
        if isinstance(self.std, list) and any((not isinstance(s, (int, float))) or s <= 0 for s in self.std):
            problems.append(f"std values must be positive, got {self.std!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} must be one of {INTERPOLATIONS}")
        if not isinstance(self.crop_margin, (int, float)) or not 0.0 <= self.crop_margin <= 1.0:
            problems.append(f"crop_margin {self.crop_margin!r} must be between 0 and 1")
        if (self.dtype, self.layout) not in INPUT_FORMATS:
            problems.append(f"dtype/layout {self.dtype}/{self.layout} must be float32/NCHW or uint8/NHWC")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} must be one of {PRECISIONS}")
        if self.output_kind not in ("logits", "probabilities"):
            problems.append(f"output_kind {self.output_kind!r} must be 'logits' or 'probabilities'")
        problems += _mix_problems(self.precision, self.precision_mix)
        if problems:
            raise ContractError("invalid model contract: " + "; ".join(problems)
                                + ". Re-export the model with fer-export to write a valid contract.")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "contract") -> "ModelContract":
        if not isinstance(data, dict):
            raise ContractError(f"{source}: contract must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise ContractError(f"{source}: contract lacks {missing}. Re-export the model with fer-export.")
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            contract = cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
            raise ContractError(f"{source}: {exc}") from None
        return contract.validate()

    @classmethod
    def from_json(cls, text: str, source: str = "contract") -> "ModelContract":
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ContractError(f"{source}: contract is not valid JSON ({exc}). Re-export the model with fer-export.") from None
        return cls.from_dict(data, source)

    def with_precision(self, precision: str, mix: Optional[Dict[str, Any]] = None) -> "ModelContract":
        """This contract for another precision; `mix` is the INT8 precision_mix (dropped for any other)."""
        return dataclasses.replace(self, precision=precision, precision_mix=dict(mix or {})).validate()

    def precision_label(self) -> str:
        """The precision as a report shows it: 'fp16', 'int8+fp16', 'int8+fp16 (23/24 blocks fp16)', or for an INT8
        artifact that predates the record 'int8 (float part not recorded)'."""
        if self.precision != "int8":
            return self.precision
        mix = self.precision_mix
        if not mix:
            return "int8 (float part not recorded)"
        short = {"float16": "fp16", "float32": "fp32"}[mix["float_dtype"]]
        kept = len(mix["float_blocks"])
        return f"int8+{short}" + (f" ({kept}/{mix['blocks']} blocks {short})" if kept else "")

    def input_dims(self) -> List[int]:
        """The input's dims after the batch axis: C, S, S (float32 NCHW) or S, S, C (uint8 NHWC)."""
        c, s = self.channels, self.input_size
        return [s, s, c] if self.layout == "NHWC" else [c, s, s]

    def preprocessing_fields(self) -> Dict[str, Any]:
        """The fields that decide what tensor a face becomes; used to key caches and compare artifacts."""
        keys = ("input_size", "channels", "color_order", "mean", "std", "interpolation",
                "crop_margin", "crop_square", "dtype", "layout")
        return {k: getattr(self, k) for k in keys}


def _mix_problems(precision: str, mix: Any) -> List[str]:
    if not isinstance(mix, dict):
        return [f"precision_mix must be a JSON object, got {type(mix).__name__}"]
    if not mix:
        return []
    if precision != "int8":
        return [f"precision_mix is recorded but precision is {precision!r} (it describes INT8 artifacts only)"]
    problems = []
    if mix.get("float_dtype") not in ("float16", "float32"):
        problems.append(f"precision_mix.float_dtype {mix.get('float_dtype')!r} must be 'float16' or 'float32'")
    blocks, kept = mix.get("blocks"), mix.get("float_blocks")
    if not isinstance(kept, list) or not all(isinstance(b, str) for b in kept):
        problems.append(f"precision_mix.float_blocks must be a list of block names, got {kept!r}")
    elif not isinstance(blocks, int) or isinstance(blocks, bool) or not len(kept) <= blocks:
        problems.append(f"precision_mix.blocks {blocks!r} must be an integer >= the {len(kept)} float blocks")
    return problems


def compare_contracts(a: ModelContract, b: ModelContract, what_a: str, what_b: str) -> Optional[str]:
    """Describe how two contracts disagree on preprocessing or labels, or None when they agree."""
    diffs = []
    pa, pb = a.preprocessing_fields(), b.preprocessing_fields()
    for key in pa:
        if pa[key] != pb[key]:
            diffs.append(f"{key}: {pa[key]!r} in {what_a} vs {pb[key]!r} in {what_b}")
    if list(a.labels) != list(b.labels):
        diffs.append(f"labels: {a.labels} in {what_a} vs {b.labels} in {what_b}")
    return "; ".join(diffs) or None


def shape_problems(contract: ModelContract, input_shape: Sequence, output_shape: Sequence, what: str) -> List[str]:
    """How a model's I/O shapes contradict the contract ([] when they fit); `what` is "graph" or "engine".

    Dims that are not non-negative ints (ONNX's symbolic names, TensorRT's -1) are dynamic; [] is an unknown rank.
    """
    problems = []
    want = contract.input_dims()
    static = [isinstance(d, int) and d >= 0 for d in input_shape]
    if len(input_shape) != 4 or any(s and d != w for s, d, w in zip(static[1:], input_shape[1:], want)):
        problems.append(f"the {what} input is {list(input_shape)} but the contract says "
                        f"N x {' x '.join(map(str, want))} ({contract.layout})")
    width = output_shape[-1] if len(output_shape) == 2 else None
    if output_shape and len(output_shape) != 2:
        problems.append(f"the {what} output is {list(output_shape)} but fer-edge needs N x classes "
                        f"(N x {contract.num_classes})")
    elif isinstance(width, int) and width >= 0 and width != contract.num_classes:
        problems.append(f"the {what} outputs {width} classes but the contract lists "
                        f"{contract.num_classes} labels {contract.labels}")
    return problems
