"""Nyströmformer attention (Xiong et al., 2021, arXiv 2102.03902): softmax attention through m landmarks.

    out = softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ + mask) · V  +  conv(V · mask)      (eq. 15)

with Q and K each scaled by d^(-1/4) (so every product carries the usual 1/√d), landmarks Q̃, K̃ the means of
m segments of the sequence (the paper's "segment-means"), and pinv the paper's iterative Moore-Penrose
approximation (the iteration of Razavi et al., 2014, run 6 times). The cost is O(n·m) time and memory: no
n×n tensor is ever built on the approximate path.

Segments, padding and short inputs (what differs from transformers' implementation):

* Landmarks are means over the REAL tokens of each sequence only. A sequence with ``c`` real tokens is cut
  into ``m`` contiguous segments of ⌊c/m⌋ or ⌈c/m⌉ real tokens: real token number ``r`` (0-based, counting
  real tokens only) belongs to segment ⌊r·m/c⌋. Padding is never in a landmark, never a key of any softmax,
  and its values are zeroed before the convolution, so adding padding (left or right) leaves the outputs at
  real tokens unchanged. Any length works; it need not be a multiple of ``m``.
* A sequence with ``c ≤ m`` real tokens gets exact softmax attention (plus the convolution term): with as
  many landmarks as tokens the Nyström form is exact in theory, and here it is exact in practice too.
* The ``original`` pseudo-inverse initialisation divides by the largest column sum over the whole batch, as
  published; ``exact`` uses each matrix's own ‖A‖₁ (independent of the other batch items, faster convergence).
* As in the reference there is no dropout on attention probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from longattn_cli.attention.base import Attention, exporting, real_first_order, register, softmax_flops
from longattn_cli.attention.settings import PINV_INITS, NystromSettings  # noqa: F401


def iterative_pinv(
    a: torch.Tensor, iterations: int = 6, init: str = "original", rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Approximate Moore-Penrose inverse of a batch of row-stochastic matrices (the paper's iteration).

    Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))), from Z₀ = Aᵀ / (‖A‖₁‖A‖∞), where ‖A‖∞ = 1 for a softmax output.

    Args:
        a: (..., m, m) matrices whose rows sum to one.
        iterations: number of updates.
        init: ``original`` takes ‖A‖₁ as the largest column sum over ALL matrices in ``a`` (as published);
            ``exact`` takes each matrix's own ‖A‖₁.
        rows: (B,) bool for ``a`` of shape (B, ...): only these rows' matrices count for ``original``'s
            norm (the others are computed and discarded by the caller); None: all of them.

    Returns:
        (..., m, m) approximations of pinv(a).
    """
    col_sums = a.sum(dim=-2)  # (..., m)
    if init == "original" and rows is not None:
        # A row-stochastic matrix has a column sum of at least 1: filling with 1 leaves the maximum alone.
        norm1 = col_sums.masked_fill(~rows.view(-1, *(1,) * (col_sums.dim() - 1)), 1.0).max()
    elif init == "original":
        norm1 = col_sums.max()
    else:
        norm1 = col_sums.amax(dim=-1)[..., None, None]
    z = a.transpose(-1, -2) / norm1
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_ids(mask: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Segment of every position: real token number r of c goes to ⌊r·m/c⌋; padding to the extra bin m.

    Args:
        mask: (B, N) bool, True = real token; every row has at least ``num_segments`` real tokens.
        num_segments: m.

    Returns:
        (B, N) int64 in [0, m], every segment 0..m-1 non-empty.
    """
    rank = mask.long().cumsum(dim=1) - 1  # (B, N) index among the real tokens
    count = mask.sum(dim=1, keepdim=True)  # (B, 1)
    seg = torch.div(rank * num_segments, count, rounding_mode="floor")
    return torch.where(mask, seg, num_segments)


def segment_means(x: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of ``x`` over each segment (segment-means landmarks): (B, H, N, D) → (B, H, m, D)."""
    b, h, n, d = x.shape
    index = seg[:, None, :, None].expand(b, h, n, d)
    sums = x.new_zeros(b, h, num_segments + 1, d).scatter_add(2, index, x)[:, :, :num_segments]
    sizes = torch.zeros(b, num_segments + 1, dtype=x.dtype, device=x.device)
    sizes = sizes.scatter_add(1, seg, torch.ones_like(seg, dtype=x.dtype))[:, :num_segments]
    return sums / sizes.clamp(min=1)[:, None, :, None]  # empty segments (export's short rows) give 0


def landmarks(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, num_segments: int):
    """Q̃ and K̃ (B, H, m, D): segment means over the real tokens (``mask`` None: all tokens are real)."""
    b, h, n, d = q.shape
    if mask is None and n % num_segments == 0:  # equal segments: a reshape, as the published code does
        shape = (b, h, num_segments, n // num_segments, d)
        return q.reshape(shape).mean(dim=-2), k.reshape(shape).mean(dim=-2)
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=q.device)
    seg = segment_ids(mask, num_segments)  # (B, N)
    return segment_means(q, seg, num_segments), segment_means(k, seg, num_segments)


def _masked_softmax_attention(q, k, v, key_mask):
    """softmax(q kᵀ + mask) v for pre-scaled q, k; q: (B, H, L, D), key_mask: (B, L) bool or None."""
    scores = q @ k.transpose(-1, -2)  # (B, H, L, L), L ≤ num_landmarks
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) @ v


@register
class NystromAttention(Attention):
    """Nyströmformer attention over the real tokens; exact softmax for sequences of ≤ m real tokens."""

    name = "nystrom"
    Settings = NystromSettings
    FLOPS = (
        "n > m: forward 8·n·m·d (three kernels' scores, two products with them) + 4·m²·d + 8·m³·iterations "
        "(pseudo-inverse), backward 2× forward; n ≤ m: exact softmax; conv: + 2·n·d·k forward, 4·n·d·k backward"
    )

    @classmethod
    def flops(cls, settings, n, d):
        m, k = settings.num_landmarks, settings.conv_kernel_size
        if n <= m:
            fwd = softmax_flops(n, d)[0]  # exact attention; its backward is 2× as well
        else:
            fwd = 8.0 * n * m * d + 4.0 * m * m * d + 8.0 * m**3 * settings.pinv_iterations
        conv = 0.0 if k is None else 2.0 * n * d * k
        return fwd + conv, 2 * fwd + 2 * conv

    def __init__(self, settings: NystromSettings, num_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__(settings, num_heads, head_dim, dropout)
        k = settings.conv_kernel_size
        # The shape of transformers' NystromformerSelfAttention.conv, (H, 1, k, 1), so checkpoints import.
        self.conv = (
            nn.Conv2d(num_heads, num_heads, (k, 1), padding=(k // 2, 0), groups=num_heads, bias=False)
            if k is not None
            else None
        )

    def forward(self, q, k, v, mask):
        b, h, n, d = q.shape
        m = self.settings.num_landmarks
        # Q/d^¼ and K/d^¼: each of the three softmax kernels then sees the usual 1/√d (eq. 15).
        scale = d**-0.25
        q, k = q * scale, k * scale
        if mask is not None and not exporting() and bool(mask.all()):
            mask = None  # nothing is padded: skip the masking work
        if mask is not None:
            v = v * mask[:, None, :, None].to(v.dtype)  # padding values never reach an output or the conv
        if exporting():
            out = self._branch_free(q, k, v, mask)
        elif n <= m:  # every sequence is short: exact attention costs at most m×m per head
            out = _masked_softmax_attention(q, k, v, mask)
        elif mask is None:
            out = self._nystrom(q, k, v, None)
        else:
            long = mask.sum(dim=1) > m  # (B,): sequences with more real tokens than landmarks
            if bool(long.all()):
                out = self._nystrom(q, k, v, mask)
            elif not bool(long.any()):
                out = self._exact_compacted(q, k, v, mask)
            else:
                out = torch.empty_like(q)
                out[long] = self._nystrom(q[long], k[long], v[long], mask[long])
                out[~long] = self._exact_compacted(q[~long], k[~long], v[~long], mask[~long])
        if self.conv is not None:
            # Depthwise convolution over the sequence axis, one filter per head: (B, H, N, D) → (B, H, N, D).
            out = out + self.conv(v)
        return out

    def _branch_free(self, q, k, v, mask):
        """:meth:`forward`'s choice made per row without branching on the data (for export): every row goes
        both routes, and keeps the Nyström one where it has more than m real tokens."""
        if mask is None:
            mask = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
        long = mask.sum(dim=1) > self.settings.num_landmarks  # (B,)
        approx = self._nystrom(q, k, v, mask, rows=long)
        return torch.where(long[:, None, None, None], approx, self._exact_compacted(q, k, v, mask))

    def _nystrom(self, q, k, v, mask, rows=None):
        """The approximation of eq. 15 for sequences that all have more than m real tokens (or, with ``rows``
        (B,) bool, for those rows; the others' results are computed and discarded)."""
        q_land, k_land = landmarks(q, k, mask, self.settings.num_landmarks)  # (B, H, m, D), segment-means
        kernel_1 = (q @ k_land.transpose(-1, -2)).softmax(dim=-1)  # (B, H, N, m): landmarks are all real
        kernel_2 = (q_land @ k_land.transpose(-1, -2)).softmax(dim=-1)  # (B, H, m, m)
        scores_3 = q_land @ k.transpose(-1, -2)  # (B, H, m, N)
        if mask is not None:  # real keys only
            scores_3 = scores_3.masked_fill(~mask[:, None, None, :], torch.finfo(q.dtype).min)
        kernel_3 = scores_3.softmax(dim=-1)
        # The m×m inverse runs in float32 at least: the iteration is fragile in half precision, and cheap.
        work = torch.promote_types(kernel_2.dtype, torch.float32)
        z = iterative_pinv(kernel_2.to(work), self.settings.pinv_iterations, self.settings.pinv_init, rows)
        # Right to left: (m×N)(N×D), then (m×m)(m×D), then (N×m)(m×D); O(n·m·d), never n×n.
        return kernel_1 @ (z.to(q.dtype) @ (kernel_3 @ v))

    def _exact_compacted(self, q, k, v, mask):
        """Exact attention for sequences of ≤ m real tokens padded to N > m: gather the real tokens first."""
        b, h, n, d = q.shape
        m = self.settings.num_landmarks
        # The real positions first, in order: (B, min(N, m)) positions, valid where < count.
        pos = real_first_order(mask)[:, :m]
        valid = torch.arange(pos.shape[1], device=q.device)[None, :] < mask.sum(dim=1, keepdim=True)
        index = pos[:, None, :, None].expand(b, h, -1, d)
        res = _masked_softmax_attention(q.gather(2, index), k.gather(2, index), v.gather(2, index), valid)
        return torch.zeros_like(q).scatter(2, index, res)  # (B, H, N, D); positions are distinct
