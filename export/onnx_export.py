"""PyTorch model -> simplified, checked ONNX with the contract embedded; FP16 variant for TensorRT."""
from __future__ import annotations

import io
import warnings

from fer_edge.runtime.contract import ModelContract

DEFAULT_OPSET = 17  # TensorRT 8.6 (JetPack 6.0) parses up to 17; 10.x and 11.x take it too.


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


