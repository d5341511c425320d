"""The lean fer-edge runtime: numpy, OpenCV and ONNX Runtime (TensorRT when installed). No torch, timm or onnx.

    from fer_edge import runtime
    model = runtime.load("fer-artifacts/model.onnx", threads=2)
    for face in model.predict(crops):
        print(face.label, face.score)
"""
from fer_edge.runtime.contract import ModelContract
from fer_edge.runtime.errors import (BackendUnavailableError, ContractError, DataError, FerEdgeError, InputError, IntegrityWarning,
                     ModelLoadError)
from fer_edge.runtime.model import FacePrediction, FerModel, load, softmax
from fer_edge.runtime.preprocess import crop_face, prepare_batch

__all__ = ["load", "FerModel", "FacePrediction", "ModelContract", "prepare_batch", "crop_face", "softmax",
           "FerEdgeError", "ContractError", "ModelLoadError", "BackendUnavailableError", "DataError", "InputError",
           "IntegrityWarning"]
