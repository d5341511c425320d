"""Triton Python-backend model that runs `1/model.onnx` (beside this file) with ONNX Runtime.

A template: `write_model_repository(..., platform="python")` copies it to `<model>/1/model.py`. It runs inside
Triton's Python backend stub, so it imports only numpy, onnxruntime and triton_python_backend_utils (never
fer_edge): the server's Python environment needs nothing else. Use it where Triton has no ONNX Runtime backend
(the `nvidia-pytriton` wheel ships the Python backend only); on the NGC container prefer
`platform: "onnxruntime_onnx"`, which needs no Python at all.

Dynamic batching hands `execute` several requests at once: their inputs are concatenated into one batch, run
as one ONNX Runtime call, and the outputs are split back in request order.
Optional config parameter `intra_op_thread_count` sets ONNX Runtime's threads per model instance.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if len(config["input"]) != 1 or len(config["output"]) != 1:
            raise pb_utils.TritonModelException(
                f"{config['name']}: fer-edge models have one input and one output; config.pbtxt lists "
                f"{len(config['input'])} and {len(config['output'])}. Regenerate it with fer-export --triton.")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise pb_utils.TritonModelException(
                f"{config['name']}: ONNX Runtime cannot load {path} ({type(exc).__name__}: {exc}). "
                "Regenerate the repository with fer-export --triton.") from None
        # The graph's own names: the config may rename the tensors it exposes.
        self.graph_input = self.session.get_inputs()[0].name
        self.graph_output = self.session.get_outputs()[0].name

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            outputs = self.session.run([self.graph_output], {self.graph_input: batch})[0]
        except Exception as exc:    # every request of the batch gets the error; the model stays up
            error = pb_utils.TritonError(f"ONNX Runtime failed on a batch of {sum(len(a) for a in arrays)}: "
                                         f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        ends = np.cumsum([len(a) for a in arrays])[:-1]
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(self.output_name, np.ascontiguousarray(part, dtype=self.output_dtype))])
                for part in np.split(outputs, ends)]

    def finalize(self):
        self.session = None
