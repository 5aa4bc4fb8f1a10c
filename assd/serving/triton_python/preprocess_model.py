"""``<name>_preprocess``: encoded image bytes -> the network's normalized input and each image's size.

The decoding and ``assd.runtime.preprocess`` are the code ``assd eval`` runs, so the ensemble feeds the
network exactly what a direct runner gets. A request whose bytes are not an image gets its own error
response; the other requests of the batch are served.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from assd.models.config import ModelConfig
from assd.remote.protocol import INPUT_ENCODED, BadRequest, request_images
from assd.runtime.preprocess import preprocess
from assd.serving.repository_set import check_repository_set


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        check_repository_set(args["model_repository"], parameters)  # one export --triton run, else not loaded
        self.cfg = ModelConfig.from_json(parameters["assd_model_config"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, INPUT_ENCODED).as_numpy()
            try:
                images = request_images({INPUT_ENCODED: encoded})
            except BadRequest as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            batch = preprocess(images, self.cfg).numpy()  # [n, 3, S, S] float32
            sizes = np.array([image.shape[:2] for image in images], dtype=np.int32)  # [n, 2] (height, width)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("images", batch), pb_utils.Tensor("image_size", sizes)]))
        return responses
