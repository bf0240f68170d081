"""Exact softmax attention, the baseline every approximation is measured against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from longattn_cli.attention.base import Attention, exporting, register, softmax_flops
from longattn_cli.attention.settings import IMPLEMENTATIONS, SoftmaxSettings  # noqa: F401


@register
class SoftmaxAttention(Attention):
    """softmax(q kᵀ / √d + mask) v over the real keys."""

    name = "softmax"
    Settings = SoftmaxSettings
    FLOPS = "forward 4·n²·d (q kᵀ, p v); backward 8·n²·d (∂p, ∂v, ∂q, ∂k)"

    @classmethod
    def flops(cls, settings, n, d):
        return softmax_flops(n, d)

    def forward(self, q, k, v, mask):
        p = self.dropout if self.training else 0.0
        if mask is not None and not exporting() and bool(mask.all()):
            mask = None  # nothing padded: without a mask SDPA takes its fused kernel and allocates no bias
        bias = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N) bool, True = attend
        if self.settings.implementation == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, N)
        if bias is not None:
            scores = scores.masked_fill(~bias, torch.finfo(scores.dtype).min)
        probs = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
        return probs @ v
