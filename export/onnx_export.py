"""PyTorch model -> simplified, checked ONNX with the contract embedded; FP16 variant for TensorRT."""
from __future__ import annotations

import io
import warnings
from collections import Counter
from typing import Dict

from fer_edge.runtime.contract import METADATA_KEY, ModelContract

DEFAULT_OPSET = 17  # TensorRT 8.6 (JetPack 6.0) parses up to 17; 10.x and 11.x take it too.


def build_model(arch: str, num_classes: int, in_chans: int, state_dict):
    """Create the timm model and load weights strictly, with a readable error on mismatch."""
    from fer_edge.export.checkpoint import CheckpointError
    from fer_edge.export.timm_compat import import_timm
    timm = import_timm()
    if not timm.is_model(arch):
        close = [m for m in timm.list_models("*efficientnetv2*")][:12]
        raise CheckpointError(f"--arch {arch!r} is not a timm model; EfficientNetV2 names include {close}")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"the checkpoint does not fit {arch}: {len(result.missing_keys)} missing tensors "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}). "
            "Is --arch the architecture it was trained with?")
    return model.eval()


def export_fp32(model, contract: ModelContract, opset: int = DEFAULT_OPSET):
    """Legacy (TorchScript) exporter + onnxslim: the dynamo exporter cannot target opset 17 (see docs)."""
    import onnx
    import onnxslim
    import torch
    dummy = torch.zeros(1, contract.channels, contract.input_size, contract.input_size)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, opset_version=opset, dynamo=False,
                          input_names=[contract.input_name], output_names=[contract.output_name],
                          dynamic_axes={contract.input_name: {0: "batch"}, contract.output_name: {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    # timm's tf_* "SAME" padding exports as ~400 shape-arithmetic nodes; onnxslim folds them away.
    proto = onnxslim.slim(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def convert_fp16(proto_fp32):
    """Explicit-precision FP16 graph (FP32 I/O, Casts at the edges) for strongly typed TensorRT builds."""
    import onnx
    from onnxconverter_common import float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = float16.convert_float_to_float16(proto_fp32, keep_io_types=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def embed_contract(proto, contract: ModelContract) -> None:
    """Write the contract into metadata_props, replacing any earlier one."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    proto.producer_name = "fer-edge"


def graph_summary(proto) -> Dict[str, object]:
    ops = Counter(node.op_type for node in proto.graph.node)
    return {"opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "nodes": sum(ops.values()), "op_counts": dict(sorted(ops.items()))}
