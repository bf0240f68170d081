"""YOSO attention (Zeng et al., ICML 2021, arXiv 2111.09714): Bernoulli sampling through LSH, linear in n.

For unit vectors q and k, ``B(q, k) = (1 - arccos(q·k) / π)^τ`` is the probability that τ random hyperplanes
put q and k on the same side of all τ of them, i.e. in the same bucket of a τ-bit hash. YOSO replaces
``softmax(q kᵀ)`` by B and normalises the output row instead of the weights:

* **expectation mode** (YOSO-E) computes ``Σ_j B(q_i, k_j) v_j`` exactly, O(n²) time (here in row chunks, so
  O(n) memory);
* **LSH mode** draws ``num_hash`` τ-bit hashes, sums the values of the keys that fall in each of the 2^τ buckets
  (one table per hash, scatter-add), and reads each query's bucket back (gather), so that the average over
  hashes is an unbiased estimate of the same sum in O(n · num_hash · d).

Gradients follow the paper: the derivative of B with respect to q·k, unbounded near q·k = ±1, is replaced by
``(τ/2) B``, so that ``∂L/∂q_i = (τ/2) Σ_j B_ij (g_i·v_j) k_j`` (and symmetrically for k). With
``lsh_backward`` the B_ij in these sums are again LSH collisions ("weighted LSH cumulation"), which keeps
training linear; each bucket then carries a d×d table, so the backward costs O(n · num_hash · d²).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from longattn_cli.attention.base import Attention, register
from longattn_cli.attention.settings import MAX_HASH_CODE_LEN, YosoSettings  # noqa: F401

# Elements of float scratch per step (tables, chunks of the n×n weights in expectation mode): 64 MiB in fp32.
_BUDGET = 1 << 24


@register
class YosoAttention(Attention):
    """YOSO-E or YOSO-LSH over the real keys, with the optional depthwise convolution of transformers' YOSO.

    There are no attention probabilities to drop, so ``dropout`` is unused (transformers' YOSO applies none).
    """

    name = "yoso"
    Settings = YosoSettings

    def __init__(self, settings: YosoSettings, num_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__(settings, num_heads, head_dim, dropout)
        w = settings.conv_window
        if w is not None:
            # Same shape and key (``conv.weight``, (H, 1, w, 1)) as transformers' YosoSelfAttention.conv.
            self.conv = nn.Conv2d(
                num_heads, num_heads, (w, 1), padding=(w // 2, 0), bias=False, groups=num_heads
            )

    def forward(self, q, k, v, mask):
        s = self.settings
        b, _, n, _ = q.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=q.device)
        work = torch.promote_types(q.dtype, torch.float32)  # tables and sums in fp32 even for bf16 models
        m = mask[:, None, :, None].to(work)  # (B, 1, N, 1), 1 = real token
        q, k = F.normalize(q.to(work), dim=-1), F.normalize(k.to(work), dim=-1)
        vm = v.to(work) * m  # padding never enters a sum: its values are zero
        if s.use_expectation:
            out = _Expectation.apply(q, k, vm, m, s.hash_code_len)
        else:
            with torch.no_grad():  # codes are discrete: the gradient comes from _LSHCumulation.backward
                codes_q, codes_k = hash_codes(q, k, s)
            out = _LSHCumulation.apply(q, k, vm, m, codes_q, codes_k, s.hash_code_len, s.lsh_backward)
        out = (F.normalize(out, dim=-1) * m).to(v.dtype)  # the paper normalises rows instead of the weights
        if s.conv_window is not None:
            out = out + self.conv(v * m.to(v.dtype))  # (B, H, N, D): heads are the conv's channels
        return out


# ---------------------------------------------------------------------------------------------- expectation


def _scaled_collision(q: torch.Tensor, k: torch.Tensor, tau: int) -> torch.Tensor:
    """π^τ · B = (π - arccos(q·k))^τ = arccos(-q·k)^τ: (..., M, D), (..., N, D) → (..., M, N).

    Three passes over the (M, N) block after the matmul; the constant π^-τ is applied to (·, D) results
    instead. The dot product is clamped into [-1, 1]: rounding can take a unit vector's dot product with
    itself above 1, where arccos is NaN.
    """
    return (-q @ k.transpose(-1, -2)).clamp_(-1.0, 1.0).acos_().pow_(tau)


def collision_probability(q: torch.Tensor, k: torch.Tensor, tau: int) -> torch.Tensor:
    """B = (1 - arccos(q·k)/π)^τ for unit rows: (..., M, D), (..., N, D) → (..., M, N)."""
    return _scaled_collision(q, k, tau).mul_(math.pi**-tau)


def _row_chunks(shape: torch.Size):
    """Slices of query rows such that a (B, H, rows, N) block stays within the scratch budget."""
    b, h, n = shape[0], shape[1], shape[2]
    step = max(1, _BUDGET // max(1, b * h * n))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def expectation_backward(q, k, v, key_mask, grad, tau):
    """The paper's gradients of ``out = B (v ⊙ key_mask)`` for ``grad = ∂L/∂out``, in row chunks (no n×n tensor).

    ``key_mask`` is (B, 1, N, 1). ∂L/∂v = Bᵀ g exactly; for q and k, ∂B/∂(q·k) is replaced by (τ/2) B (the
    paper's bounded surrogate).
    """
    vm = v * key_mask  # masked keys: zero weight in every product below
    gq, gk, gv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for rows in _row_chunks(q.shape):
        p = _scaled_collision(q[:, :, rows], k, tau)  # (B, H, rows, N), π^τ B
        g = grad[:, :, rows]
        w = (g @ vm.transpose(-1, -2)).mul_(p)  # (B, H, rows, N)
        gq[:, :, rows] = w @ k
        gk += w.transpose(-1, -2) @ q[:, :, rows]
        gv += p.transpose(-1, -2) @ g
    scale = math.pi**-tau
    return gq.mul_(scale * tau / 2), gk.mul_(scale * tau / 2), gv.mul_(key_mask).mul_(scale)


class _Expectation(torch.autograd.Function):
    """Σ_j B(q_i, k_j) v_j over unmasked keys (key_mask: (B, 1, N, 1)), with the paper's gradient.

    Saves only q, k, v: the n×n weights are recomputed chunk by chunk in the backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, key_mask, tau):
        vm = v * key_mask
        out = torch.empty_like(v)
        for rows in _row_chunks(q.shape):
            out[:, :, rows] = _scaled_collision(q[:, :, rows], k, tau) @ vm
        ctx.save_for_backward(q, k, v, key_mask)
        ctx.tau = tau
        return out.mul_(math.pi**-tau)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, key_mask = ctx.saved_tensors
        gq, gk, gv = expectation_backward(q, k, v, key_mask, grad.contiguous(), ctx.tau)
        return gq, gk, gv, None, None


# ---------------------------------------------------------------------------------------------- hashing


def _hadamard(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform over the last dimension (a power of two), x ↦ x H."""
    n = x.shape[-1]
    h = 1
    while h < n:
        x = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)  # pairs (i, i + h) inside blocks of 2h
        a, c = x[..., 0, :], x[..., 1, :]
        x = torch.stack((a + c, a - c), dim=-2).reshape(*x.shape[:-3], n)
        h *= 2
    return x


def fast_hash_dim(d: int, tau: int) -> int:
    """The width d' the fast hash rotates in: a power of two ≥ 4·head_dim, ≥ τ and ≥ 128.

    The τ bits of one hash come from τ orthogonal directions of that rotation. When d' is close to head_dim
    those directions, restricted to the d coordinates a vector occupies, are far from independent, and the
    collision rate is biased away from (1 - θ/π)^τ: at head_dim 16 and τ 9 with d' = 16 the LSH estimate
    levels off at a relative error of 0.25 to the expectation (Gaussian hashes: 0.12 at 4,096 hashes). Zero
    padding into a wider rotation makes the restricted directions nearly independent Gaussians: with
    d' ≥ 4·head_dim and ≥ 128 the fast hash is within a few percent of the Gaussian one at every head size
    (``tests/test_yoso.py``). Only building the projection grows with d', not hashing a token.
    """
    return 1 << max(4 * d - 1, tau - 1, 127).bit_length()


def projection(settings: YosoSettings, b: int, h: int, d: int, device, generator=None) -> torch.Tensor:
    """Random directions of all hashes: (B, H, D, num_hash · τ); bit t of hash f is column f·τ + t.

    Gaussian directions, or with ``use_fast_hash`` the paper's fast hash x ↦ ((x D₁ H) D₂ H) D₃ H (random ±1
    diagonals D, Walsh–Hadamard H, x zero-padded to d' = :func:`fast_hash_dim` coordinates). That map is
    linear, so its first d rows are built once per call as a d×d' matrix and applied with one matmul, which on
    CPU beats d' log d' butterflies per token; each block of d' columns gives d' // τ hashes.
    """
    tau, nh = settings.hash_code_len, settings.num_hash
    if not settings.use_fast_hash:
        return torch.randn(b, h, d, nh * tau, generator=generator, device=device)
    dp = fast_hash_dim(d, tau)
    per_part = dp // tau
    parts = -(-nh // per_part)
    signs = torch.randint(0, 2, (3, b, h, parts, 1, dp), generator=generator, device=device).float() * 2 - 1
    hadamard = _hadamard(torch.eye(dp, device=device))
    # Rows < d of D₁H D₂H D₃H (zero padding makes the others irrelevant); x D H = (x ⊙ diag D) H.
    m = signs[0].transpose(-1, -2)[..., :d, :] * hadamard[:d]  # (B, H, parts, d, d')
    m = (m * signs[1]) @ hadamard
    m = (m * signs[2]) @ hadamard[:, : per_part * tau]  # (B, H, parts, d, per_part · τ)
    return m.permute(0, 1, 3, 2, 4).reshape(b, h, d, parts * per_part * tau)[..., : nh * tau]


def hash_codes(q: torch.Tensor, k: torch.Tensor, settings: YosoSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """τ-bit codes of queries and keys under the same ``num_hash`` hashes: two (B, H, N, num_hash) int64.

    The draws never depend on the length, so padding a batch never changes the hashes of its real tokens.
    With a ``seed`` every row of the batch gets the same hash functions, so a sequence's output does not
    depend on the batch it is in; without one each row draws its own (independent noise in training).
    """
    b, h, _, d = q.shape
    gen = None
    if settings.seed is not None:
        gen = torch.Generator(device=q.device).manual_seed(settings.seed)
        b = 1  # one draw, broadcast over the rows
    r = projection(settings, b, h, d, q.device, gen).to(q.dtype)
    tau, nh = settings.hash_code_len, settings.num_hash
    powers = 2.0 ** torch.arange(tau, device=q.device, dtype=q.dtype)  # bit t is worth 2^t (exact for τ ≤ 16)

    def code(x):
        bits = (x @ r).gt_(0).view(*x.shape[:-1], nh, tau)  # (B, H, N, num_hash, τ); gt_ keeps floats
        return (bits @ powers).long()  # (B, H, N, num_hash)

    return code(q), code(k)


# ---------------------------------------------------------------------------------------------- LSH cumulation


def _rows(codes: torch.Tensor, capacity: int, first: int, last: int) -> torch.Tensor:
    """Row of each (token, hash) in the stacked tables of hashes [first, last): (B·H·N, last - first).

    Tables are laid out (hash, B·H, capacity): one contiguous slab per hash.
    """
    b, h, n, _ = codes.shape
    bh = torch.arange(b * h, device=codes.device).view(b, h, 1, 1) * capacity
    hashes = torch.arange(last - first, device=codes.device) * (b * h * capacity)
    return (codes[..., first:last] + bh + hashes).reshape(b * h * n, last - first)


def _table_rows(
    key_rows: torch.Tensor, query_rows: torch.Tensor, dense: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Table rows for keys and queries, and the table's length.

    With more buckets than tokens (2^τ > n) most buckets are empty: the occupied ones are renumbered so that
    tables stay O(n) whatever τ, and queries whose bucket holds no key read an extra row of zeros.
    """
    if dense <= key_rows.numel():
        return key_rows, query_rows, dense
    occupied, key_rows = torch.unique(key_rows, return_inverse=True)
    found = torch.searchsorted(occupied, query_rows).clamp_(max=len(occupied) - 1)
    query_rows = torch.where(occupied[found] == query_rows, found, len(occupied))
    return key_rows, query_rows, len(occupied) + 1


def _bucket_sums(rows: torch.Tensor, values: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``table[r] = Σ values[p // k]`` over the entries p of ``rows`` (M, k) equal to r: (num_rows, E).

    One sparse (num_rows × M) @ dense (M, E) product, which runs several times faster on CPU than
    ``index_add_`` or ``scatter_add_`` with the same result.
    """
    m, per = rows.shape
    cols = torch.arange(m, device=rows.device).repeat_interleave(per)
    indices = torch.stack((rows.reshape(-1), cols))
    ones = values.new_ones(m * per)
    return torch.sparse.mm(
        torch.sparse_coo_tensor(indices, ones, (num_rows, m), check_invariants=False), values
    )


def cumulate(
    codes_q: torch.Tensor, codes_k: torch.Tensor, values: torch.Tensor, capacity: int
) -> torch.Tensor:
    """Mean over hashes of Σ_{j: code_j = code_i} values_j: (B, H, N, E) for every query i.

    One table of ``capacity`` buckets per hash (the sum of the values of the keys in each bucket), read at the
    query codes (``embedding_bag`` sums over hashes without materialising a (N, num_hash, E) tensor).
    """
    b, h, n, e = values.shape
    nh = codes_k.shape[-1]
    flat = values.reshape(b * h * n, e)
    out = values.new_zeros(b * h * n, e)
    group = max(1, _BUDGET // (b * h * min(capacity, n) * e))  # tables hold at most n occupied buckets
    for first in range(0, nh, group):
        last = min(nh, first + group)
        key_rows, query_rows, num_rows = _table_rows(
            _rows(codes_k, capacity, first, last),
            _rows(codes_q, capacity, first, last),
            (last - first) * b * h * capacity,
        )
        table = _bucket_sums(key_rows, flat, num_rows)
        out += F.embedding_bag(query_rows, table, mode="sum")
    return (out / nh).view(b, h, n, e)


def weighted_cumulate(codes_q, weight_q, codes_k, weight_k, values, capacity: int) -> torch.Tensor:
    """Mean over hashes of Σ_{j: code_j = code_i} (weight_q_i · weight_k_j) values_j, (B, H, N, E).

    Each bucket holds Σ weight_k_j ⊗ values_j (a W×E table: W rows per bucket); a query reads the W rows of its
    bucket contracted with its own weights (``embedding_bag`` with per-sample weights), in every hash. Hashes go
    in groups so that tables stay within the scratch budget.
    """
    b, h, n, e = values.shape
    w = weight_k.shape[-1]
    per_head = min(capacity, n) * w * e  # table size of one head and hash
    if b * h > 1 and b * h * per_head > _BUDGET:  # a few heads at a time: (B·H) as independent heads
        step = max(1, _BUDGET // per_head)
        parts = [x.reshape(1, b * h, n, x.shape[-1]) for x in (codes_q, weight_q, codes_k, weight_k, values)]
        outs = [
            weighted_cumulate(*(x[:, i : i + step] for x in parts), capacity) for i in range(0, b * h, step)
        ]
        return torch.cat(outs, dim=1).view(b, h, n, e)
    nh = codes_k.shape[-1]
    bh = b * h
    out = values.new_zeros(bh * n, e)
    group = max(1, _BUDGET // (bh * min(capacity, n) * w * max(e, n // capacity)))
    sub = torch.arange(w, device=values.device)
    flat = values.reshape(bh * n, e)
    fixed = {}  # per group size: what does not change from one group of hashes to the next
    for first in range(0, nh, group):
        hashes = min(nh, first + group) - first
        if hashes not in fixed:
            indices = torch.empty(2, bh * n * hashes * w, dtype=torch.long, device=values.device)
            indices[1] = torch.arange(bh * n, device=values.device).repeat_interleave(
                hashes * w
            )  # source rows
            key_weights = weight_k.reshape(bh * n, 1, w).expand(bh * n, hashes, w).reshape(-1)
            query_weights = weight_q.reshape(bh * n, 1, w).expand(bh * n, hashes, w).reshape(bh * n, -1)
            fixed[hashes] = indices, key_weights, query_weights
        indices, key_weights, query_weights = fixed[hashes]
        key_rows, query_rows, buckets = _table_rows(
            _rows(codes_k, capacity, first, first + hashes),
            _rows(codes_q, capacity, first, first + hashes),
            hashes * bh * capacity,
        )
        # Bucket r's W rows are r·W + a; key j adds weight_k[j, a] · values[j] to row a of its bucket.
        torch.add(key_rows[..., None] * w, sub, out=indices[0].view(bh * n, hashes, w))
        sparse = torch.sparse_coo_tensor(indices, key_weights, (buckets * w, bh * n), check_invariants=False)
        table = torch.sparse.mm(sparse, flat)  # (buckets · W, E)
        query_rows = (query_rows[..., None] * w + sub).view(bh * n, -1)
        out += F.embedding_bag(query_rows, table, mode="sum", per_sample_weights=query_weights)
    return (out / nh).view(b, h, n, e)


class _LSHCumulation(torch.autograd.Function):
    """LSH estimate of Σ_j B(q_i, k_j) v_j; masked keys arrive with zero values and so add nothing."""

    @staticmethod
    def forward(ctx, q, k, v, mask, codes_q, codes_k, tau, lsh_backward):
        capacity = 1 << tau
        ctx.save_for_backward(q, k, v, mask, codes_q, codes_k)
        ctx.tau, ctx.lsh_backward = tau, lsh_backward
        return cumulate(codes_q, codes_k, v, capacity)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, mask, codes_q, codes_k = ctx.saved_tensors
        tau = ctx.tau
        g = grad.contiguous() * mask  # padded queries pass no gradient
        if not ctx.lsh_backward:
            gq, gk, gv = expectation_backward(q, k, v, mask, g, tau)
            return gq, gk, gv, None, None, None, None, None
        capacity = 1 << tau
        gv = cumulate(codes_k, codes_q, g, capacity) * mask  # Σ_i c_ij g_i: the tables with roles swapped
        gq = weighted_cumulate(codes_q, g, codes_k, v, k, capacity).mul_(tau / 2)
        gk = weighted_cumulate(codes_k, v, codes_q, g, q, capacity).mul_(tau / 2)
        return gq, gk, gv, None, None, None, None, None
