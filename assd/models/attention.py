"""The ASSD attention unit, equations (1) and (2) of the paper.

For one prediction map x in R^{C x N} (N = H*W positions):

    q = W_q^T x,  k = W_k^T x   (1x1 convs, C -> C/8, no bias)
    v = W_v^T x                 (1x1 conv,  C -> C,   no bias)
    a = q^T k                   (N x N scores, *no* 1/sqrt(d) scaling)
    ā = softmax(a) over j       (each row i is the attention map of query position i)
    x' = x + (ā v^T)^T          (residual; every position is a weighted sum of all values)

It is written with explicit matmul / softmax / matmul so that the exported ONNX graph shows one
MatMul -> Softmax -> MatMul chain per map, which TensorRT fuses and which the FP16 / INT8 graph
passes can keep in FP32.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionUnit(nn.Module):
    """Self-attention over all positions of one feature map (paper section 3.1).

    Args:
        channels: C, the channels of the map; q and k have C // 8 channels.

    Shapes: ``forward(x)``: x ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        reduced = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.key = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, bias=False)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """ā: ``[B, N, N]``, row i = softmax over key positions j of q_i . k_j (eq. 1)."""
        query = self.query(x).flatten(2)  # [B, C', N]
        key = self.key(x).flatten(2)  # [B, C', N]
        scores = torch.matmul(query.transpose(1, 2), key)  # [B, N, N]
        return torch.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        weights = self.attention_weights(x)  # [B, N, N]
        value = self.value(x).flatten(2)  # [B, C, N]
        attended = torch.matmul(weights, value.transpose(1, 2))  # ā v^T: [B, N, C]
        return x + attended.transpose(1, 2).reshape(batch, channels, height, width)
