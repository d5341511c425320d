"""PyTorch model -> simplified, checked ONNX with the contract embedded; FP16 variant for TensorRT."""
from __future__ import annotations

import io
import warnings
from collections import Counter
from typing import Dict, List, Optional

from fer_edge.runtime.contract import METADATA_KEY, ModelContract

DEFAULT_OPSET = 17  # TensorRT 8.6 (JetPack 6.0) parses up to 17; 10.x and 11.x take it too.


# What the fit search tries when a checkpoint does not fit --arch (a tf_ variant and its plain twin have the same
# shapes). The l/xl sizes are left out: building each costs 0.6-0.8 s even on the meta device, and they are far
# too large for edge FER; the search over these ten takes ~1.5 s.
FIT_CANDIDATES = ("tf_efficientnetv2_b0", "tf_efficientnetv2_b1", "tf_efficientnetv2_b2", "tf_efficientnetv2_b3",
                  "efficientnetv2_rw_t", "tf_efficientnetv2_s", "efficientnetv2_s", "efficientnetv2_rw_s",
                  "tf_efficientnetv2_m", "efficientnetv2_m")
# BatchNorm fills in a missing counter itself, and fp16 .safetensors files leave these int64 buffers out.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def check_arch_name(arch: str) -> None:
    """Refuse an architecture name timm does not know, listing the closest names it does."""
    import difflib
    from fer_edge.export.checkpoint import CheckpointError
    from fer_edge.export.timm_compat import import_timm
    timm = import_timm()
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6) or list(FIT_CANDIDATES[:4])
    raise CheckpointError(f"--arch {arch!r} is not a timm model; did you mean one of {', '.join(close)}? "
                          "Pass the timm name of the architecture the checkpoint was trained with.")


def _shapes(state_dict) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith(_OPTIONAL_SUFFIX)}


def _shell_shapes(arch: str, num_classes: int, in_chans: int) -> Dict[str, tuple]:
    """Parameter shapes of an arch, from a model built on the meta device: no memory, no weights, 0.1-0.4 s."""
    import torch
    from fer_edge.export.timm_compat import import_timm
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return _shapes(model.state_dict())


def _fitting_archs(ckpt_shapes: Dict[str, tuple], num_classes: int, in_chans: int, skip: str) -> List[str]:
    from fer_edge.export.timm_compat import import_timm
    timm = import_timm()
    return [name for name in FIT_CANDIDATES if name != skip and timm.is_model(name)
            and _shell_shapes(name, num_classes, in_chans) == ckpt_shapes]


def _mismatch_text(arch: str, model_shapes: Dict[str, tuple], ckpt_shapes: Dict[str, tuple]) -> Optional[str]:
    """None when every tensor fits; else the counts and a few names with both shapes."""
    def dims(shape):
        return "x".join(map(str, shape)) or "scalar"
    wrong = [k for k in model_shapes if k in ckpt_shapes and model_shapes[k] != ckpt_shapes[k]]
    missing = [k for k in model_shapes if k not in ckpt_shapes]
    unexpected = [k for k in ckpt_shapes if k not in model_shapes]
    if not (wrong or missing or unexpected):
        return None
    parts = []
    if wrong:
        examples = "; ".join(f"{k}: checkpoint {dims(ckpt_shapes[k])}, {arch} {dims(model_shapes[k])}"
                             for k in wrong[:3])
        parts.append(f"{len(wrong)} of its {len(ckpt_shapes)} tensors have other shapes than in {arch} ({examples})")
    if missing:
        parts.append(f"{len(missing)} tensors of {arch} are missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors are not in {arch} (e.g. {', '.join(unexpected[:2])})")
    return ", ".join(parts)


def check_fits(arch: str, num_classes: int, in_chans: int, state_dict, model_shapes=None) -> None:
    """Refuse a state_dict whose tensors do not fit arch, naming the archs whose shapes it does fit."""
    from fer_edge.export.checkpoint import CheckpointError
    check_arch_name(arch)
    ckpt_shapes = _shapes(state_dict)
    problem = _mismatch_text(arch, model_shapes or _shell_shapes(arch, num_classes, in_chans), ckpt_shapes)
    if problem is None:
        return
    fits = _fitting_archs(ckpt_shapes, num_classes, in_chans, skip=arch)
    if fits:
        twins = " (same shapes; the tf_ variant pads like TensorFlow)" if len(fits) > 1 else ""
        fix = f"Its tensors fit {' and '.join(fits)}{twins}: export with --arch {fits[0]}, or the one it was trained with"
    else:
        fix = (f"Its tensors fit none of {', '.join(FIT_CANDIDATES)}: pass --arch with the timm architecture "
               "it was trained with, or check that this is the right file")
    raise CheckpointError(f"the checkpoint does not fit {arch}: {problem}. {fix}.")


def build_model(arch: str, num_classes: int, in_chans: int, state_dict):
    """Create the timm model and load weights strictly, with a readable error on mismatch."""
    from fer_edge.export.timm_compat import import_timm
    check_arch_name(arch)
    model = import_timm().create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    check_fits(arch, num_classes, in_chans, state_dict, model_shapes=_shapes(model.state_dict()))
    model.load_state_dict(state_dict)
    return model.eval()


def _static_same_padding(model, size: int, in_chans: int):
    """A copy of the model whose TF-style dynamic "SAME" convolutions use constant padding for this input size.

    timm's tf_* variants compute their padding from the input shape at run time; exported, that is ~400
    Shape/Gather/arithmetic nodes, and onnxslim 0.1.98's constant folding of them gives wrong pads at odd
    feature-map sizes (48 px: max |dlogit| 2.1 on the reference model). The input size is fixed by the
    contract, so we fix the pads here; onnxslim then fuses each constant Pad into its Conv exactly.
    """
    import copy
    import torch
    from timm.layers.padding import get_same_padding

    class StaticSamePadConv(torch.nn.Module):
        def __init__(self, conv, pads):
            super().__init__()
            self.pad = torch.nn.ZeroPad2d(pads)
            self.conv = conv

        def forward(self, x):
            return self.conv(self.pad(x))

    model = copy.deepcopy(model)
    sizes = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
             for name, module in model.named_modules() if type(module).__name__ == "Conv2dSame"]
    with torch.no_grad():
        model(torch.zeros(1, in_chans, size, size))
    for hook in hooks:
        hook.remove()
    for name, (height, width) in sizes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attr)
        pad_h = get_same_padding(int(height), conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pad_w = get_same_padding(int(width), conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                                conv.dilation, conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        setattr(parent, attr, StaticSamePadConv(plain, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))
    return model.eval()


def export_fp32(model, contract: ModelContract, opset: int = DEFAULT_OPSET):
    """Legacy (TorchScript) exporter + onnxslim: the dynamo exporter cannot target opset 17 (see docs)."""
    import onnx
    import onnxslim
    import torch
    model = _static_same_padding(model, contract.input_size, contract.channels)
    dummy = torch.zeros(1, contract.channels, contract.input_size, contract.input_size)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, opset_version=opset, dynamo=False,
                          input_names=[contract.input_name], output_names=[contract.output_name],
                          dynamic_axes={contract.input_name: {0: "batch"}, contract.output_name: {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    proto = onnxslim.slim(proto)  # folds BN leftovers and fuses the constant Pads into their Convs
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
