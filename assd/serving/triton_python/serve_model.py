"""``assd serve``'s model: the whole detector in one Python-backend model (copied as ``1/model.py``).

Each instance opens its own runner on the artifact named in the config's parameters and answers every
request of a batch on its own (``assd.serving.served.DetectorCallable``): a malformed request gets an
INVALID_ARG error with one line about *its* input, its batch-mates their detections. An unexpected
failure answers the batch with one line each and logs the traceback in the server's log.
"""

import json
import os
import sys
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

# assd is imported in initialize(), from the folder of the assd that started the server (the stub's
# embedded Python ignores PYTHONPATH): the served code is the server's own.
BadRequest = ServedRequest = INPUT_ENCODED = INPUT_PIXELS = OUTPUTS = None


def _parameter(config: dict, key: str) -> str:
    return config["parameters"][key]["string_value"]


class TritonPythonModel:
    def initialize(self, args):
        global BadRequest, ServedRequest, INPUT_ENCODED, INPUT_PIXELS, OUTPUTS
        config = json.loads(args["model_config"])
        root = _parameter(config, "assd_root")
        if root not in sys.path:
            sys.path.insert(0, root)
        from assd.remote.protocol import INPUT_ENCODED, INPUT_PIXELS, OUTPUTS, BadRequest, model_info
        from assd.runtime.postprocess import PostprocessConfig
        from assd.runtime.runners import open_runner
        from assd.serving.served import DetectorCallable, ServedRequest

        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", _parameter(config, "assd_max_pixels"))
        artifact, described = _parameter(config, "assd_artifact"), json.loads(_parameter(config, "assd_described"))
        runner = open_runner(artifact, device=_parameter(config, "assd_device"))
        postprocess_cfg = PostprocessConfig.from_dict(runner.postprocess)
        rows = postprocess_cfg.max_per_image(runner.cfg.num_classes)
        info = model_info(runner.cfg, postprocess_cfg, rows, artifact=artifact, backend=runner.backend,
                          precision=runner.precision, **described)
        self.callable = DetectorCallable(runner, postprocess_cfg, rows, info)
        self.logger = pb_utils.Logger

    def execute(self, requests):
        served = [self._request(request) for request in requests]
        try:
            answers = self.callable([request for request in served if not isinstance(request, BadRequest)])
        except Exception as exc:  # noqa: BLE001 - the server keeps serving; the traceback goes to its log
            self.logger.log_error(f"assd serve: a batch of {len(requests)} failed:\n{traceback.format_exc()}")
            line = f"the server failed on this batch ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(line)) for _ in requests]
        answers = iter(answers)
        return [self._response(request if isinstance(request, BadRequest) else next(answers), triton_request)
                for request, triton_request in zip(served, requests)]

    @staticmethod
    def _request(request):
        """A ServedRequest (or the BadRequest for parameters that are not JSON)."""
        data = {}
        for name in (INPUT_ENCODED, INPUT_PIXELS):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                data[name] = tensor.as_numpy()
        try:
            parameters = json.loads(request.parameters() or "{}")
        except ValueError:
            return BadRequest("request parameters are not JSON")
        return ServedRequest(data, parameters, tuple(request.requested_output_names()))

    @staticmethod
    def _response(answer, request):
        if isinstance(answer, BadRequest):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(answer), pb_utils.TritonError.INVALID_ARG))
        wanted = set(request.requested_output_names()) or set(OUTPUTS)
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in answer.items() if name in wanted]
        return pb_utils.InferenceResponse(output_tensors=tensors)
