"""``TorchRunner``: PyTorch eager (optionally ``torch.compile``d, fp16/bf16 and channels_last on GPU)."""

from __future__ import annotations

import torch

from assd.errors import UserError
from assd.models.assd import ASSD
from assd.runtime.base import Runner
from assd.runtime.postprocess import PostprocessConfig


class TorchRunner(Runner):
    """PyTorch eager (optionally ``torch.compile``d, fp16 and channels_last on GPU)."""

    backend = "torch"

    def __init__(self, model: ASSD, artifact: str, device: torch.device, precision: str = "fp32",
                 compile: bool = False, channels_last: bool = False):
        super().__init__()
        if precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"{artifact}: the torch backend runs fp32, fp16 or bf16, not {precision}")
        if precision != "fp32" and device.type != "cuda":
            raise UserError(f"{artifact}: {precision} PyTorch inference needs a CUDA device")
        self.device, self.precision, self.artifact, self.cfg = device, precision, artifact, model.cfg
        self.postprocess = PostprocessConfig.for_model(model.cfg).to_dict()  # the model's own defaults
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = model.eval().to(device=device, dtype=self.dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.module = torch.compile(model) if compile else model
        if compile:
            self.backend = "torch-compile"

    @torch.no_grad()
    def infer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loc, conf = self.module(images)
        return loc.float(), conf.float()
