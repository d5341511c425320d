"""The face pipeline: detect -> crop -> classify -> track -> smooth, plus image and video I/O.

Built on the runtime (`fer_edge.runtime.load`); numpy, OpenCV and ONNX Runtime only.

    from fer_edge.pipeline import FerPipeline
    pipe = FerPipeline("fer-artifacts/model.onnx", threads=2)   # detector: the bundled YuNet
    for face in pipe(frame):
        print(face.track_id, face.smoothed_label, face.smoothed_score)
"""
from fer_edge.pipeline.fer_pipeline import FaceResult, FerPipeline

__all__ = ["FerPipeline", "FaceResult"]
