"""A Python-backend stand-in for an ``assd export --triton`` repository's ``<name>_network`` step (copied as
``1/model.py`` by tests/test_serving_repository.py): nvidia-pytriton's tritonserver has no ONNX Runtime
backend, so this model runs the repository's own ``1/model.onnx`` with assd's ONNX Runtime runner, one
batch per execution, with the step's inputs and outputs (images -> loc, conf)."""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from assd.runtime.runners import open_runner


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"]
        self.runner = open_runner(str(folder / "model.onnx"), device="cpu")
        self.name = json.loads(args["model_config"])["name"]

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(request, "images").as_numpy() for request in requests]
        loc, conf = self.runner.infer(torch.from_numpy(np.concatenate(images)))
        responses, start = [], 0
        for batch in images:
            end = start + len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("loc", loc[start:end].numpy()), pb_utils.Tensor("conf", conf[start:end].numpy())]))
            start = end
        return responses
