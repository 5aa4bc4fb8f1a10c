"""Training's memory estimate, checked before the model is built (``assd.models.limits`` does inference's).

Training keeps what backpropagation needs: every layer's output of the batch (not only the largest, as
inference), the attention score matrices and their softmax, and per parameter its gradient and the
optimizer's state (SGD: one momentum buffer; AdamW: two moments). ``assd513`` with ``--batch-size 256``
ended in an allocator traceback (or the OOM killer) before this check.
"""

from __future__ import annotations

import torch

from assd.models.config import ModelConfig
from assd.models.limits import MemoryEstimate, check_memory, estimate_memory

OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}  # buffers per parameter


def saved_activations_per_image(cfg: ModelConfig) -> int:
    """Elements of every leaf-module output for one image: what autograd keeps for the backward pass
    (a forward pass on the meta device: no memory, no compute)."""
    from assd.models.assd import ASSD

    total = 0

    def note(module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):  # in place: no new tensor
            total += output.numel()

    with torch.device("meta"):
        model = ASSD(cfg).eval()  # output shapes as in training (eval: BatchNorm accepts one 1x1 image)
        images = torch.empty(1, 3, cfg.input_size, cfg.input_size)
    for module in model.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(note)
    model(images)
    return total


def check_training_memory(cfg: ModelConfig, batch: int, optimizer: str, device: torch.device | str,
                          what: str) -> MemoryEstimate:
    """Refuse (``UserError``, one line) a training step that cannot fit ``device``'s available memory."""
    inference = estimate_memory(cfg, batch)
    copies = 2 + OPTIMIZER_STATES.get(optimizer, 2)  # weights, gradients, optimizer state
    estimate = MemoryEstimate(batch=batch, weights=inference.weights * copies,
                              activations=batch * saved_activations_per_image(cfg) * 4,
                              attention=inference.attention)
    return check_memory(cfg, batch, device, what=what, estimate=estimate, hint="use a smaller --batch-size")
