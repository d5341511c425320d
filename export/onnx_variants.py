"""Serving forms of a fer-edge ONNX, each written beside its source with its own contract and parity record:

- probabilities (`<name>_probs.onnx`): Softmax appended, contract output_kind "probabilities". Triton's
  classification extension and DeepStream's classifier parser read class scores straight from the output.
- uint8 input (`<name>_u8.onnx`): a uint8 NHWC input at the model's size with /255, mean and std inside the graph
  (contract dtype uint8, layout NHWC). A client that is not Python sends the resized pixels as they are: a 48 px
  gray face is 2.3 KB on the wire instead of 9.2 KB of float32.

Parity is measured like any export's: the source ONNX on the runtime's `prepare_batch` tensors (its contract)
against the variant on `prepare_batch` tensors of the variant's contract, on the same faces. Both run the same
network, so they must agree on every face (VARIANT_MIN_AGREEMENT); nothing is written otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

from fer_edge.data.datasets import FaceSet
from fer_edge.data.metrics import compare_outputs
from fer_edge.export.engine_build import source_contract
from fer_edge.export.exporter import ExportedArtifact
from fer_edge.export.parity import ParityReport, ort_logits
from fer_edge.models.artifact_writer import ExportError, embed_contract, graph_summary, write_export_artifact
from fer_edge.runtime.artifact_io import read_sidecar, sha256_file, sidecar_path, verify_artifact
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.model import ONNX_INTEGRITY_FIX, softmax
from fer_edge.runtime.preprocess import normalization, prepare_batch

# Same network, only the preprocessing or the softmax moved into the graph: every face must get the same class.
VARIANT_MIN_AGREEMENT = 0.999
PROBABILITIES_OUTPUT = "probabilities"


@dataclass(frozen=True)
class Variant:
    uint8_input: bool = False
    probabilities: bool = False

    @property
    def suffix(self) -> str:
        return ("_u8" if self.uint8_input else "") + ("_probs" if self.probabilities else "")

    def describe(self) -> str:
        parts = (["uint8 NHWC input, preprocessing in the graph"] if self.uint8_input else []) + \
                (["softmax appended"] if self.probabilities else [])
        return ", ".join(parts)


def requested_variants(uint8_input: bool, probabilities: bool) -> List[Variant]:
    """The forms one run writes besides the plain export: each flag alone, and both together when both are given."""
    return [Variant(u8, probs) for u8 in (False, True)[:1 + uint8_input]
            for probs in (False, True)[:1 + probabilities] if u8 or probs]


def variant_path(source: Path, variant: Variant, out_dir: Path) -> Path:
    return Path(out_dir) / f"{Path(source).stem}{variant.suffix}.onnx"


def variant_contract(contract: ModelContract, variant: Variant) -> ModelContract:
    changes = {}
    if variant.uint8_input:
        changes.update(dtype="uint8", layout="NHWC")
    if variant.probabilities:
        changes.update(output_kind="probabilities", output_name=PROBABILITIES_OUTPUT)
    return dataclasses.replace(contract, **changes).validate()


def _graph_io(proto, name: str, io: str):
    found = [v for v in getattr(proto.graph, io) if v.name == name]
    if len(getattr(proto.graph, io)) != 1 or not found:
        raise ExportError(f"the graph's {io}s are {[v.name for v in getattr(proto.graph, io)]}, but a fer-edge model "
                          f"has one {io} named {name!r} as its contract says; re-export it with fer-export")
    return found[0]


def _drop_value_info(graph, name: str) -> None:
    """A graph output or input that becomes an inner tensor must not keep a stale value_info: onnxconverter's FP16
    pass records `logits` as float16 there, which contradicts the float32 Cast that feeds the output."""
    keep = [v for v in graph.value_info if v.name != name]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def fold_preprocessing(proto, contract: ModelContract) -> None:
    """In place: the float32 NCHW input becomes uint8 NHWC followed by Cast, Transpose, Mul(scale), Add(offset),
    the same float32 constants and order of operations as the runtime's normalize_batch."""
    from onnx import TensorProto, helper, numpy_helper
    graph = proto.graph
    old_input = _graph_io(proto, contract.input_name, "input")
    if old_input.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError(f"input {contract.input_name!r} is not float32; fold the preprocessing into the plain "
                          "export (the one without _u8)")
    normalized = f"{contract.input_name}_normalized"
    for node in graph.node:
        node.input[:] = [normalized if name == contract.input_name else name for name in node.input]
    scale, offset = normalization(contract)
    shape = (1, contract.channels, 1, 1)
    graph.initializer.extend([numpy_helper.from_array(scale.reshape(shape), "fer_edge_scale"),
                              numpy_helper.from_array(offset.reshape(shape), "fer_edge_offset")])
    prefix = [
        helper.make_node("Cast", [contract.input_name], ["fer_edge_pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["fer_edge_pixels"], ["fer_edge_pixels_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["fer_edge_pixels_nchw", "fer_edge_scale"], ["fer_edge_scaled"]),
        helper.make_node("Add", ["fer_edge_scaled", "fer_edge_offset"], [normalized]),
    ]
    nodes = prefix + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    batch = old_input.type.tensor_type.shape.dim[0]
    new_input = helper.make_tensor_value_info(contract.input_name, TensorProto.UINT8,
                                              [batch.dim_param or batch.dim_value or "batch"]
                                              + [contract.input_size, contract.input_size, contract.channels])
    graph.input.remove(old_input)
    graph.input.append(new_input)
    _drop_value_info(graph, contract.input_name)


def append_softmax(proto, contract: ModelContract) -> None:
    """In place: Softmax over the class axis after the logits; the graph output becomes `probabilities`."""
    from onnx import helper
    graph = proto.graph
    logits = _graph_io(proto, contract.output_name, "output")
    graph.node.append(helper.make_node("Softmax", [contract.output_name], [PROBABILITIES_OUTPUT], axis=1))
    probs = helper.make_tensor_value_info(PROBABILITIES_OUTPUT, logits.type.tensor_type.elem_type,
                                          [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim])
    graph.output.remove(logits)
    graph.output.append(probs)
    _drop_value_info(graph, contract.output_name)


def read_source(path: Path):
    """A plain fer-edge ONNX (float32 NCHW in, logits out), checked against its sidecar: (proto, bytes, contract)."""
    import onnx
    path = Path(path)
    if not path.is_file() or path.suffix.lower() != ".onnx":
        raise ExportError(f"{path}: no such .onnx file; variants are made from an ONNX that fer-export wrote")
    sidecar = read_sidecar(path)
    verify_artifact(path, sidecar, ONNX_INTEGRITY_FIX)
    contract = source_contract(path)
    if contract.dtype != "float32" or contract.output_kind != "logits":
        raise ExportError(f"{path}: already a serving form ({contract.dtype} input, {contract.output_kind} output); "
                          "make variants from the plain export (float32 input, logits output)")
    payload = path.read_bytes()
    return onnx.load_from_string(payload), payload, contract


def variant_parity(source_bytes: bytes, source: ModelContract, variant_bytes: bytes, contract: ModelContract,
                   faces: FaceSet) -> ParityReport:
    """Source on prepare_batch(source contract) vs variant on prepare_batch(variant contract), same faces."""
    reference = ort_logits(source_bytes, prepare_batch(faces.images, source))
    candidate = ort_logits(variant_bytes, prepare_batch(faces.images, contract))
    if contract.output_kind == "probabilities":
        reference = softmax(reference)
    comparison = compare_outputs(reference, candidate)
    return ParityReport(contract.precision, faces.source, comparison, VARIANT_MIN_AGREEMENT,
                        comparison.top1_agreement >= VARIANT_MIN_AGREEMENT)


def write_variant(source_path: Path, variant: Variant, faces: FaceSet, out_dir: Path,
                  log: Callable[[str], None] = print) -> ExportedArtifact:
    """Write `<source stem><suffix>.onnx` and its sidecar in out_dir; nothing is written unless parity passes."""
    import onnx
    proto, source_bytes, source = read_source(source_path)
    contract = variant_contract(source, variant)
    if variant.uint8_input:
        fold_preprocessing(proto, source)
    if variant.probabilities:
        append_softmax(proto, source)
    onnx.checker.check_model(proto, full_check=True)
    embed_contract(proto, contract)
    payload = proto.SerializeToString()
    report = variant_parity(source_bytes, source, payload, contract, faces)
    log(f"{variant.describe()}: " + report.line().replace("logit", "output"))
    path = variant_path(source_path, variant, out_dir)
    if not report.passed:
        raise ExportError(f"{path.name}: parity with {Path(source_path).name} failed, nothing written: {report.line()}")
    compared = "probabilities (softmax of the source's logits)" if variant.probabilities else "logits"
    write_export_artifact(
        path, payload, contract, artifact=graph_summary(proto),
        parity={**report.as_dict(), "reference": f"{Path(source_path).name} on prepare_batch tensors",
                "compared": compared},
        variant={"source": Path(source_path).name, "source_sha256": sha256_file(source_path),
                 "uint8_input": variant.uint8_input, "probabilities": variant.probabilities},
        export=(read_sidecar(source_path) or {}).get("export", {}))
    return ExportedArtifact(contract.precision, path, sidecar_path(path), contract, report)
