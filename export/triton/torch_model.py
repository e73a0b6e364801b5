"""Triton Python-backend adapter: serves the torch model of its version folder on the GPU (CPU
when the server has none).

Copied by `echodeploy export --target gpu-torch` as `<model>/<version>/model.py`, with the
network code (`echodeploy_networks/`) and the served module's state dict (`model.pt`,
loaded with weights_only=True, strictly). It runs in the server's environment (torch,
numpy 1.x) and imports nothing from echodeploy. Tensors move in and out through DLPack:
inputs the server holds on the GPU stay there, outputs are handed over on the device.
Requests of one execute() call are concatenated into one batch; a request whose tensors
do not fit the config gets an error response of its own and the others still run.
"""

import json
import os
import sys

import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from echodeploy_networks.cardionet import CardioNet  # noqa: E402  (shipped beside this file)
from echodeploy_networks.quicknat import QuickNAT  # noqa: E402
from echodeploy_networks.r2plus1d import R2Plus1D18  # noqa: E402
from echodeploy_networks.served import ServedClipModel, ServedLvidProfile, ServedQuality  # noqa: E402

TORCH_TYPES = {"TYPE_UINT8": torch.uint8, "TYPE_FP32": torch.float32}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def served_module(parameters: dict) -> torch.nn.Module:
    """The served module the metadata describes, without weights."""
    if parameters["echodeploy.family"] == "cmr":
        return ServedClipModel(R2Plus1D18(num_classes=1), parameters["echodeploy.kind"])
    if parameters["echodeploy.kind"] == "quality":
        return ServedQuality(CardioNet(parameters["echodeploy.bn_mode"]))
    return ServedLvidProfile(QuickNAT(parameters["echodeploy.bn_mode"]))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if torch.cuda.is_available():
            device_id = int(args.get("model_instance_device_id") or 0)
            self.device = torch.device("cuda", device_id if args.get("model_instance_kind") == "GPU" else 0)
        else:
            self.device = torch.device("cpu")
        self.precision = parameters.get("torch_precision", "fp32")
        if self.precision not in ("fp32", *AUTOCAST):
            raise ValueError(f"torch_precision must be fp32, bf16 or fp16, got {self.precision!r}")
        module = served_module(parameters)
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.channels_last = self.device.type == "cuda"
        fmt = torch.channels_last_3d if parameters["echodeploy.family"] == "cmr" else torch.channels_last
        self.module = module.eval().to(self.device, memory_format=fmt if self.channels_last else torch.preserve_format)
        self.memory_format = fmt
        self.inputs = {i["name"]: (TORCH_TYPES[i["data_type"]], tuple(int(d) for d in i["dims"]))
                       for i in config["input"]}
        self.outputs = [o["name"] for o in config["output"]]
        pb_utils.Logger.log_info(f"{config['name']}: torch {torch.__version__} on {self.device}, {self.precision}")

    def _read(self, request):
        tensors = {}
        for name, (dtype, dims) in self.inputs.items():
            given = pb_utils.get_input_tensor_by_name(request, name)
            tensor = None if given is None else dlpack.from_dlpack(given.to_dlpack())
            if tensor is None or tensor.dtype != dtype or tuple(tensor.shape[1:]) != dims:
                got = "nothing" if tensor is None else f"{tensor.dtype} {tuple(tensor.shape)}"
                raise ValueError(f"input {name}: expected {dtype} (N, {', '.join(map(str, dims))}), got {got}")
            tensors[name] = tensor
        return tensors

    def execute(self, requests):
        responses = [None] * len(requests)
        good, batches = [], []
        for index, request in enumerate(requests):
            try:
                batches.append(self._read(request))
                good.append(index)
            except ValueError as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        if not good:
            return responses
        feeds = [torch.cat([b[name] for b in batches]).to(self.device, non_blocking=True) for name in self.inputs]
        if self.channels_last and feeds[0].ndim in (4, 5):
            feeds[0] = feeds[0].contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), torch.autocast(self.device.type, AUTOCAST.get(self.precision, torch.float32),
                                                    enabled=self.precision != "fp32"):
            results = self.module(*feeds)
        results = [r.float().contiguous() for r in (results if isinstance(results, tuple) else (results,))]
        offset = 0
        for index, batch in zip(good, batches):
            size = len(next(iter(batch.values())))
            tensors = [pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value[offset:offset + size].contiguous()))
                       for name, value in zip(self.outputs, results)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            offset += size
        return responses
