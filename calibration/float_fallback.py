"""An INT8 ONNX with MORE blocks in float, for when TensorRT cannot build the gated one (TensorRT 10.3 fails on
some Q/DQ graphs that 10.7+ builds).

The blocks go back to float in the order the accuracy gate recorded in the INT8 sidecar: most sensitive first
(`gate.sensitivity`), after those the gate already kept in float. When the gate passed with every block in INT8
it ranked nothing, and the remaining blocks go back in graph order (stem first). The derived model comes from the
INT8 artifact itself (quantize.keep_in_float: the Q/DQ in front of those blocks removed), so no calibration data
is needed; with more of the model in float its accuracy is closer to FP32's, but the gate is not re-run, and
the derived sidecar says so.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List

from fer_edge.calibration import quantize, sensitivity
from fer_edge.models.artifact_writer import embed_contract, float_fallback_name, graph_summary, write_export_artifact
from fer_edge.runtime.artifact_io import read_sidecar, sha256_file, sidecar_path
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import ContractError


def quantized_groups(qdq_onnx: bytes) -> Dict[str, List[str]]:
    """Block -> names of its nodes that still read a DequantizeLinear output (still INT8), in graph order."""
    import onnx
    graph = onnx.load_from_string(qdq_onnx).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    nodes = [(n.name, n.op_type) for n in graph.node
             if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dequantized for i in n.input)]
    return dict(sensitivity.block_groups(nodes))


class FloatFallback:
    """The order in which blocks of an INT8 artifact go back to float, and the derived artifacts."""

    def __init__(self, int8_path: Path, out_dir: Path):
        self.int8_path, self.out_dir = Path(int8_path), Path(out_dir)
        self.sidecar = read_sidecar(self.int8_path)
        if self.sidecar is None:
            raise ContractError(f"{self.int8_path}: no sidecar {sidecar_path(self.int8_path).name}, so the gate's "
                                "blocks and sensitivity order are unknown; re-export it with `fer-export --int8`")
        self.contract = ModelContract.from_dict(self.sidecar["contract"], source=str(sidecar_path(self.int8_path)))
        self.int8_bytes = self.int8_path.read_bytes()
        gate = self.sidecar.get("gate") or {}
        kept = gate.get("kept_in_higher_precision") or {}
        self.kept: List[str] = list(kept.get("blocks") or [])
        self.kept_nodes: List[str] = list(kept.get("nodes") or [])
        self.groups = quantized_groups(self.int8_bytes)
        ranked = [r["group"] for r in gate.get("sensitivity") or [] if r.get("group") in self.groups]
        self.order: List[str] = ranked + [g for g in self.groups if g not in ranked]
        self.order_source = ("the accuracy gate's sensitivity ranking, most sensitive first" if ranked else
                             "graph order (the gate passed with every block in INT8, so it ranked none)")

    def write(self, extra: int) -> Path:
        """Write <int8 stem>_float<K>.onnx (+ sidecar) with the next `extra` blocks of `order` in float."""
        import onnx
        added = self.order[:extra]
        nodes = [n for g in added for n in self.groups[g]]
        data = quantize.keep_in_float(self.int8_bytes, nodes)
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
        mix = self.contract.precision_mix    # re-read from the graph: the float share grew
        contract = self.contract.with_precision("int8", quantize.precision_mix(data, mix["float_dtype"]) if mix else None)
        path = self.out_dir / float_fallback_name(self.int8_path, len(self.kept) + len(added))
        gate = copy.deepcopy(self.sidecar.get("gate") or {})
        gate["kept_in_higher_precision"] = {"blocks": self.kept + added, "nodes": self.kept_nodes + nodes}
        quantization = ((self.sidecar.get("artifact") or {}).get("quantization")) or {}
        derived = {"from": str(self.int8_path), "from_sha256": sha256_file(self.int8_path),
                   "blocks_added_to_float": added, "order": self.order_source,
                   "why": "TensorRT could not build an engine from the INT8 ONNX the gate passed",
                   "gate_rerun": False, "note": "the gate's numbers are the source artifact's; with more blocks in "
                                                "float this model is closer to FP32, but it was not re-checked"}
        sections = {k: v for k, v in self.sidecar.items() if k not in ("contract", "artifact", "gate")}
        embed_contract(proto, contract)
        write_export_artifact(path, proto.SerializeToString(), contract,
                              artifact={"quantization": quantization, **graph_summary(proto)},
                              **{**sections, "gate": gate, "derived": derived})
        return path

    @staticmethod
    def remove(path: Path) -> None:
        """Delete a derived artifact whose engine could not be built either (it is the source of no engine)."""
        for p in (Path(path), sidecar_path(path)):
            p.unlink(missing_ok=True)
