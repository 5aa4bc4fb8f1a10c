"""``<name>_postprocess``: the network's ``loc``/``conf`` -> padded detections in original-image pixels.

All requests of a batch go through one ``assd.runtime.postprocess.detect`` call (decode + batched NMS,
the code ``assd eval`` runs) with the thresholds stored in the artifact.
"""

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from assd.models.assd import priors_for
from assd.models.config import ModelConfig
from assd.remote.protocol import OUTPUTS, detect_in_pixels, pack_detections
from assd.runtime.postprocess import PostprocessConfig
from assd.serving.repository_set import check_repository_set


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        check_repository_set(args["model_repository"], parameters)  # one export --triton run, else not loaded
        self.cfg = ModelConfig.from_json(parameters["assd_model_config"]["string_value"])
        self.postprocess_cfg = PostprocessConfig.from_dict(json.loads(parameters["assd_postprocess"]["string_value"]))
        self.priors = priors_for(self.cfg)
        self.rows = self.postprocess_cfg.max_per_image(self.cfg.num_classes)  # as the config's output dims

    def execute(self, requests):
        def inputs(name):
            return [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]

        locs, confs, sizes = inputs("loc"), inputs("conf"), inputs("image_size")
        loc = torch.from_numpy(np.concatenate(locs)).float()
        conf = torch.from_numpy(np.concatenate(confs)).float()
        image_sizes = [tuple(size) for size in np.concatenate(sizes).tolist()]
        with torch.inference_mode():
            detections = detect_in_pixels(loc, conf, image_sizes, self.cfg, [self.postprocess_cfg] * len(loc),
                                          self.priors)
        responses, start = [], 0
        for request_loc in locs:
            packed = pack_detections(detections[start:start + len(request_loc)], self.rows)
            start += len(request_loc)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, packed[name]) for name in OUTPUTS]))
        return responses
