"""``OnnxRuntimeRunner``: an assd ONNX file (any precision) on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import torch

from assd.errors import UserError, short_reason
from assd.runtime.base import Runner
from assd.runtime.metadata import read_metadata


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on CPU, or with the CUDA / TensorRT execution providers when asked and available."""

    backend = "onnxruntime"

    def __init__(self, path: str, device: torch.device, provider: str | None = None, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        metadata = read_metadata(path)
        if metadata.outputs != "raw":
            raise UserError(f"{path}: exported --with-postprocess; runners need the raw (loc, conf) "
                            "outputs: export without --with-postprocess for bench/eval-engine")
        self.artifact, self.cfg, self.precision = str(path), metadata.model_config, metadata.precision
        self.postprocess, self.max_batch = metadata.postprocess, metadata.fixed_batch
        providers = self._providers(ort, device, provider)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - any failure here means "unreadable": reported as one line
            raise UserError(f"{path}: ONNX Runtime cannot load it ({short_reason(exc)})") from None
        self.device = torch.device("cuda") if providers[0] != "CPUExecutionProvider" else torch.device("cpu")
        self.providers = self.session.get_providers()
        if providers[0] == "TensorrtExecutionProvider":
            self.backend = "onnxruntime-trt"
        elif providers[0] == "CUDAExecutionProvider":
            self.backend = "onnxruntime-cuda"

    @staticmethod
    def _providers(ort, device: torch.device, provider: str | None) -> list[str]:
        if provider in (None, "auto"):
            provider = "cuda" if device.type == "cuda" else "cpu"
        names = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}
        if provider not in names:
            raise UserError(f"unknown ONNX Runtime provider '{provider}': use cpu, cuda or tensorrt")
        if provider != "cpu" and not torch.cuda.is_available():
            raise UserError(f"ONNX Runtime provider '{provider}' needs a CUDA GPU; none is available: use cpu")
        if names[provider] not in ort.get_available_providers():
            raise UserError(f"this onnxruntime build has no {names[provider]}: install onnxruntime-gpu")
        return [names[provider], "CPUExecutionProvider"] if provider != "cpu" else ["CPUExecutionProvider"]

    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_batch(images.shape[0])
        feed = {"images": np.ascontiguousarray(images.detach().float().cpu().numpy())}
        loc, conf = self.session.run(["loc", "conf"], feed)
        return torch.from_numpy(loc).to(self.device), torch.from_numpy(conf).to(self.device)
