"""Triton Python-backend adapter: serves `model.onnx` from its version folder on ONNX Runtime (CPU).

Copied by `echodeploy export --target cpu` as `<model>/<version>/model.py`. It runs in the
server's own environment (numpy 1.x, onnxruntime) and imports nothing from echodeploy.
Requests of one execute() call are stacked into one batch; a request whose tensors do
not fit the config gets an error response of its own and the others still run.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = {
            i["name"]: (pb_utils.triton_string_to_numpy(i["data_type"]), tuple(int(d) for d in i["dims"]))
            for i in config["input"]
        }
        self.outputs = [o["name"] for o in config["output"]]

    def _read(self, request):
        arrays = {}
        for name, (dtype, dims) in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            array = None if tensor is None else tensor.as_numpy()
            if array is None or array.dtype != dtype or array.shape[1:] != dims:
                got = "nothing" if array is None else f"{array.dtype} {array.shape}"
                raise ValueError(f"input {name}: expected {np.dtype(dtype).name} (N, {', '.join(map(str, dims))}), got {got}")
            arrays[name] = array
        return arrays

    def execute(self, requests):
        responses = [None] * len(requests)
        good, batches = [], []
        for index, request in enumerate(requests):
            try:
                batches.append(self._read(request))
                good.append(index)
            except ValueError as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if good:
            feeds = {name: np.concatenate([b[name] for b in batches]) for name in self.inputs}
            results = self.session.run(self.outputs, feeds)
            offset = 0
            for index, batch in zip(good, batches):
                size = len(next(iter(batch.values())))
                tensors = [pb_utils.Tensor(name, value[offset:offset + size])
                           for name, value in zip(self.outputs, results)]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                offset += size
        return responses
