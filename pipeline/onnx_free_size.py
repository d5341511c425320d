"""Declare a fixed-size detector ONNX's image size free, so one file runs at any input size, without the onnx package.

The YuNet files differ only in the shapes they declare: their reshapes use -1 and their upsamplings use scales, so
the 640x640 graph computes the 320x320 one exactly when fed a 320x320 image (tested against yunet_s_320_320.onnx).
ONNX Runtime refuses an input whose size differs from a declared fixed size, so the declared sizes are rewritten
in the serialized model: the input's height and width and the outputs' cell counts become named free sizes, and
the recorded intermediate shapes (GraphProto.value_info, only hints) are dropped. Everything else stays
byte-identical. The runtime and pipeline must not need the onnx package, hence this small protobuf walk.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

from fer_edge.runtime.errors import ModelLoadError

# Field numbers from onnx.proto (ModelProto.graph; GraphProto.input/output/value_info; ValueInfoProto.type;
# TypeProto.tensor_type; TypeProto.Tensor.shape; TensorShapeProto.dim; Dimension.dim_value/dim_param).
MODEL_GRAPH = 7
GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 11, 12, 13
VALUE_INFO_TYPE = 2
TYPE_TENSOR = 1
TENSOR_SHAPE = 2
SHAPE_DIM = 1
DIM_PARAM = 2
LENGTH_DELIMITED = 2

# Which dimensions become free: NCHW input -> height, width; (N, cells, values) outputs -> cells.
INPUT_FREE = {2: "height", 3: "width"}
OUTPUT_FREE = {1: "cells"}


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes) -> Iterator[Tuple[int, bytes, Optional[bytes]]]:
    """(field number, the field's raw bytes, payload of a length-delimited field or None) for each field."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        wire, payload = key & 7, None
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
            payload = data[pos:pos + size]
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield key >> 3, data[start:pos], payload


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


def _rewrite(data: bytes, number: int, change) -> bytes:
    """data with change(payload) applied to every length-delimited field `number` (None drops the field)."""
    out = bytearray()
    for field, raw, payload in _fields(data):
        if field == number and payload is not None:
            new = change(payload)
            if new is not None:
                out += _field(number, new)
        else:
            out += raw
    return bytes(out)


def _free_dims(value_info: bytes, free: dict) -> bytes:
    def shape(payload: bytes) -> bytes:
        out, index = bytearray(), 0
        for field, raw, _ in _fields(payload):
            if field == SHAPE_DIM:
                out += _field(SHAPE_DIM, _field(DIM_PARAM, free[index].encode())) if index in free else raw
                index += 1
            else:
                out += raw
        return bytes(out)

    def tensor(payload: bytes) -> bytes:
        return _rewrite(payload, TENSOR_SHAPE, shape)

    return _rewrite(value_info, VALUE_INFO_TYPE, lambda t: _rewrite(t, TYPE_TENSOR, tensor))


def free_image_size(model: bytes, source: str = "model") -> bytes:
    """The serialized ONNX model with its input height/width and output cell counts declared free."""
    def graph(payload: bytes) -> bytes:
        payload = _rewrite(payload, GRAPH_VALUE_INFO, lambda _: None)
        payload = _rewrite(payload, GRAPH_INPUT, lambda v: _free_dims(v, INPUT_FREE))
        return _rewrite(payload, GRAPH_OUTPUT, lambda v: _free_dims(v, OUTPUT_FREE))

    try:
        return _rewrite(model, MODEL_GRAPH, graph)
    except (ValueError, IndexError) as exc:
        raise ModelLoadError(f"{source}: not a readable ONNX file ({exc}); is the download complete?") from None
