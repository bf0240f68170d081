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
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from longattn_cli.attention import native
from longattn_cli.attention.base import Attention, exporting, register
from longattn_cli.attention.settings import MAX_HASH_CODE_LEN, YosoSettings  # noqa: F401
from longattn_cli.errors import UserError

# Elements of float scratch per step (tables, chunks of the n×n weights in expectation mode): 64 MiB in fp32.
_BUDGET = 1 << 24
_HASH_BLOCK = 1 << 20  # projected elements per block of tokens in hash_codes
_HEAD_BLOCK = 1 << 12  # at least this many tokens (whole heads) per index_add_ of the bucket sums


@register
class YosoAttention(Attention):
    """YOSO-E or YOSO-LSH over the real keys, with the optional depthwise convolution of transformers' YOSO.

    There are no attention probabilities to drop, so ``dropout`` is unused (transformers' YOSO applies none).
    """

    name = "yoso"
    Settings = YosoSettings
    FLOPS = (
        "E: forward 4·n²·d, backward 10·n²·d (B recomputed); LSH: forward 4·n·d·h·τ (hashing q and k) + "
        "2·n·h·d (tables), backward 8·n·h·d² + 2·n·h·d (the paper's weighted cumulation: a d×d table per "
        "bucket for ∂q and for ∂k, built and read; h = num_hash), or 10·n²·d without lsh_backward; "
        "conv: + 2·n·d·w forward, 4·n·d·w backward"
    )

    @classmethod
    def flops(cls, settings, n, d):
        s = settings
        if s.use_expectation:
            fwd, bwd = 4.0 * n * n * d, 10.0 * n * n * d
        else:
            h, tau = s.num_hash, s.hash_code_len
            fwd = 4.0 * n * d * h * tau + 2.0 * n * h * d
            bwd = 8.0 * n * h * d * d + 2.0 * n * h * d if s.lsh_backward else 10.0 * n * n * d
        if s.conv_window is not None:
            fwd, bwd = fwd + 2.0 * n * d * s.conv_window, bwd + 4.0 * n * d * s.conv_window
        return fwd, bwd

    def __init__(self, settings: YosoSettings, num_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__(settings, num_heads, head_dim, dropout)
        w = settings.conv_window
        if w is not None:
            # Same shape and key (``conv.weight``, (H, 1, w, 1)) as transformers' YosoSelfAttention.conv.
            self.conv = nn.Conv2d(
                num_heads, num_heads, (w, 1), padding=(w // 2, 0), bias=False, groups=num_heads
            )

    def export_problem(self) -> str | None:
        if self.settings.use_expectation:
            return None
        return (
            "YOSO's LSH mode cannot be exported to ONNX: it builds its bucket tables by sorting and counting "
            "each input's hash codes, which ONNX has no operators for; export the expectation it estimates "
            "instead, with --set use_expectation=true"
        )

    def forward(self, q, k, v, mask):
        s = self.settings
        b, _, n, _ = q.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=q.device)
        if exporting():
            return self._branch_free(q, k, v, mask)
        work = torch.promote_types(q.dtype, torch.float32)  # tables and sums in fp32 even for bf16 models
        # (B, 1, N, 1), 1 = real token; None when nothing is padded (packed pretraining blocks), which saves a
        # pass over q, k, v, the output and their gradients per product below.
        m = None if bool(mask.all()) else mask[:, None, :, None].to(work)
        q, k = _Unit.apply(q.to(work)), _Unit.apply(k.to(work))
        vm = _masked(v.to(work), m)  # padding never enters a sum: its values are zero
        if s.use_expectation:
            out = _Expectation.apply(q, k, vm, m, s.hash_code_len)
        else:
            with torch.no_grad():  # codes are discrete: the gradient comes from _LSHCumulation.backward
                codes_q, codes_k = hash_codes(q, k, s)
            out = _LSHCumulation.apply(q, k, vm, m, codes_q, codes_k, s.hash_code_len, s.lsh_backward)
        out = _masked(_Unit.apply(out), m).to(v.dtype)  # the paper normalises rows instead of the weights
        if s.conv_window is not None:  # (B, H, N, D): heads are the conv's channels
            out = out + self.conv(v if m is None else v * m.to(v.dtype))
        return out

    def _branch_free(self, q, k, v, mask):
        """The expectation mode of :meth:`forward` in plain operations, the same for every input (for export):
        the n×n weights in one piece, the mask always applied."""
        if not self.settings.use_expectation:
            raise UserError(self.export_problem())
        work = torch.promote_types(q.dtype, torch.float32)
        m = mask[:, None, :, None].to(work)
        q, k = (
            x.to(work) / torch.linalg.vector_norm(x.to(work), dim=-1, keepdim=True).clamp_min(1e-12)
            for x in (q, k)
        )
        out = collision_probability(q, k, self.settings.hash_code_len) @ (v.to(work) * m)
        out = (out / torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(1e-12) * m).to(v.dtype)
        if self.settings.conv_window is not None:
            out = out + self.conv(v * m.to(v.dtype))
        return out


class _Unit(torch.autograd.Function):
    """``F.normalize(x, dim=-1)``, x / max(‖x‖, ε), with the closed-form backward ∂x = (∂u - u (u·∂u)) / ‖x‖.

    Autograd's route through F.normalize (a division by the broadcast norm, then the norm's own backward) takes
    about 1.6x as long on CPU, three times per layer. Rows shorter than ε (1e-12) keep the projection term, which
    F.normalize drops there; a zero row gets ∂u / ε either way.
    """

    @staticmethod
    def forward(ctx, x):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1e-12)
        u = x / norm  # a division, as F.normalize: the same bits, so the same hash codes
        ctx.save_for_backward(u, norm)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        u, norm = ctx.saved_tensors
        # Two (·, D) temporaries instead of three: at 16,384 tokens each is 50 MB of fresh pages.
        dot = (u * grad).sum(-1, keepdim=True)
        return torch.addcmul(grad, u, dot, value=-1).div_(norm)


def _masked(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """x ⊙ m, or x itself without a mask."""
    return x if m is None else x * m


def _sort_keys(x: torch.Tensor, bound: int) -> torch.Tensor:
    """``x`` (values in [0, bound)) in the narrowest integer type that holds them: on CPU a stable sort of int16
    takes two thirds of the time of int32, which takes half of int64's."""
    if bound <= 1 << 15:
        return x.to(torch.int16)
    return x.int() if bound <= 1 << 31 else x


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

    ``key_mask`` is (B, 1, N, 1), or None (no padding). ∂L/∂v = Bᵀ g exactly; for q and k, ∂B/∂(q·k) is
    replaced by (τ/2) B (the paper's bounded surrogate).
    """
    vm = _masked(v, key_mask)  # masked keys: zero weight in every product below
    gq, gk, gv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for rows in _row_chunks(q.shape):
        p = _scaled_collision(q[:, :, rows], k, tau)  # (B, H, rows, N), π^τ B
        g = grad[:, :, rows]
        w = (g @ vm.transpose(-1, -2)).mul_(p)  # (B, H, rows, N)
        gq[:, :, rows] = w @ k
        gk += w.transpose(-1, -2) @ q[:, :, rows]
        gv += p.transpose(-1, -2) @ g
    scale = math.pi**-tau
    return gq.mul_(scale * tau / 2), gk.mul_(scale * tau / 2), _masked(gv, key_mask).mul_(scale)


class _Expectation(torch.autograd.Function):
    """Σ_j B(q_i, k_j) v_j over unmasked keys (key_mask: (B, 1, N, 1) or None), with the paper's gradient.

    Saves only q, k, v: the n×n weights are recomputed chunk by chunk in the backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, key_mask, tau):
        vm = _masked(v, key_mask)
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
    """τ-bit codes of queries and keys under the same ``num_hash`` hashes: two (B, H, N, num_hash) int32.

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

    # A few hundred tokens at a time: the (·, num_hash · τ) projections stay in cache (2.4x faster at 16,384
    # tokens than projecting the whole sequence at once, which writes and rereads megabytes per head).
    step = max(1, _HASH_BLOCK // (q.shape[0] * h * nh * tau))

    packed = native.usable(q)  # the compiled kernel packs the bits in one pass over the projections

    def code(x):
        out = torch.empty(*x.shape[:-1], nh, dtype=torch.int32, device=x.device)  # int32: half of int64
        for i in range(0, x.shape[2], step):
            projected = x[:, :, i : i + step] @ r  # (B, H, step, num_hash · τ)
            if packed:
                rows = projected.shape[2]
                native.codes(projected.view(-1, rows, nh * tau), tau, out.view(-1, x.shape[2], nh)[:, i:])
                continue
            bits = projected.gt_(0)  # gt_ keeps floats
            out[:, :, i : i + step] = bits.view(*bits.shape[:-1], nh, tau) @ powers
        return out

    return code(q), code(k)


# ---------------------------------------------------------------------------------------------- LSH cumulation


def _rows(codes: torch.Tensor, capacity: int, first: int, last: int) -> torch.Tensor:
    """Row of each (token, hash) in the stacked tables of hashes [first, last): (P·N, last - first) for codes
    (P, N, num_hash).

    Tables are laid out (hash, P, capacity): one contiguous slab per hash. One addition of a (P, 1, hashes)
    offset, in int32 where the rows fit (int32 codes plus int64 offsets is a mixed-type pass, ~10x slower).
    """
    p, n, _ = codes.shape
    k = last - first
    wide = p * k * capacity >= 1 << 31
    kind = torch.long if wide else torch.int32
    problem = torch.arange(p, device=codes.device, dtype=kind).view(p, 1, 1) * capacity
    hashes = torch.arange(k, device=codes.device, dtype=kind) * (p * capacity)
    return torch.add(codes[..., first:last].to(kind), problem + hashes).view(p * n, k)


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
    """``table[r] = Σ values[i]`` over the entries (i, f) of ``rows`` (M, k) equal to r: (num_rows, E).

    The entries sorted by row (stably: each bucket sums its tokens in order), then one ``embedding_bag`` with a
    bag per table row: on CPU about 15x faster than ``index_add_`` of the values per column f (which scatters
    element by element), and the sort costs less than the scatter it replaces.
    """
    m = rows.shape[0]
    flat = rows.t().reshape(-1)  # (k · M,) column-major: each column's run is already partly in order
    order = torch.sort(_sort_keys(flat, num_rows), stable=True)[1]
    counts = torch.bincount(flat, minlength=num_rows)
    offsets = torch.cumsum(counts, 0) - counts  # first entry of each row's bag (empty bags sum to zero)
    return F.embedding_bag(order.remainder_(m), values, offsets, mode="sum")


def cumulate(
    codes_q: torch.Tensor, codes_k: torch.Tensor, values: torch.Tensor, capacity: int
) -> torch.Tensor:
    """Mean over hashes of Σ_{j: code_j = code_i} values_j: (B, H, N, E) for every query i.

    One table of ``capacity`` buckets per hash (the sum of the values of the keys in each bucket), read at the
    query codes (``embedding_bag`` sums over hashes without materialising a (N, num_hash, E) tensor). A few
    heads at a time (at least _HEAD_BLOCK tokens): their tables and row numbers stay in cache. fp32 on the CPU
    goes through the compiled kernel (:mod:`native`), which adds each key's values into its bucket in place.
    """
    if native.usable(values):
        return native.cumulate(codes_q, codes_k, values, capacity)
    b, h, n, e = values.shape
    nh = codes_k.shape[-1]
    p = b * h
    cq, ck = codes_q.reshape(p, n, nh), codes_k.reshape(p, n, nh)
    flat = values.reshape(p, n, e)  # a view where it can be: one head's rows may be strided
    out = values.new_empty(p, n, e)
    heads = min(p, max(1, _HEAD_BLOCK // n))
    group = max(1, _BUDGET // (heads * min(capacity, n) * e))  # tables hold at most n occupied buckets
    for p0 in range(0, p, heads):
        p1 = min(p, p0 + heads)
        part = flat[p0:p1].reshape(-1, e)
        acc = out[p0:p1].view(-1, e)
        for first in range(0, nh, group):
            last = min(nh, first + group)
            key_rows, query_rows, num_rows = _table_rows(
                _rows(ck[p0:p1], capacity, first, last),
                _rows(cq[p0:p1], capacity, first, last),
                (last - first) * (p1 - p0) * capacity,
            )
            sums = F.embedding_bag(query_rows, _bucket_sums(key_rows, part, num_rows), mode="sum")
            if first == 0:  # the first group writes the output: no zero-fill pass over it
                acc.copy_(sums)
            else:
                acc.add_(sums)
    return out.div_(nh).view(b, h, n, e)


# ---------------------------------------------------------------------------------------------- LSH backward
#
# ∂L/∂q_i = (τ/2) Σ_j c_ij (g_i·v_j) k_j and ∂L/∂k_j = (τ/2) Σ_i c_ij (g_i·v_j) q_i, with c_ij the fraction of
# hashes in which query i and key j share a bucket (the paper's weighted LSH cumulation), and ∂L/∂v_j = Σ_i c_ij g_i.
# Within one hash a bucket's queries and keys are a small dense attention problem: W = G Vᵀ, ∂q = W K, ∂k = Wᵀ Q.
# So the buckets of several hashes (a *chunk*: a block of heads in up to _CHUNK_ROWS // rows hashes) are laid out
# side by side in *lanes*: a bucket's queries gathered into consecutive query lanes, its keys into key lanes, and
# the buckets of one class (query width, key width) go through batched matmuls, a piece of at most _PIECE lanes
# at a time so that the gathered inputs are still in cache when multiplied. A balanced bucket has one width on
# both sides (the larger count, rounded up to a multiple of _WIDTH: few classes); a lopsided one a width per side
# (:func:`_lane_widths`), because a model's queries and keys are not isotropic: in its layers a bucket often
# holds hundreds of queries and a handful of keys, where a square W as wide as the larger side did about 1.7x
# the products (a freshly initialised base model at 4,096 tokens: the backward's sums took 0.90 s, now 0.57 s).
# A bucket too big for that (cost: the product of its two widths) takes the paper's d×d tables instead,
# Σ_j v_j k_jᵀ and Σ_i g_i q_iᵀ, in slots of _SLOT lanes on each side. Each token's row then reads its lanes'
# results, one per hash of the chunk, summed by one embedding_bag. ∂v needs no lanes: it is the forward's
# cumulation with queries and keys swapped. Every sum is the same as the paper's; only the order of the
# arithmetic differs. Short sequences skip the layout: the n×n collision counts C are cheap there, and the three
# products are plain matmuls.

_WIDTH = 8  # attention lanes come in multiples of this (a lopsided bucket's in powers of 2)
_SLOT = 64  # lanes per slot in the table route


def _lane_widths(count: torch.Tensor) -> torch.Tensor:
    """Attention lanes for one side of a lopsided bucket of ``count`` tokens: the power of two at or above the
    count, at least _WIDTH (few classes, whatever the spread of the sizes)."""
    return torch.exp2(torch.ceil(torch.log2(count.clamp(min=1).double()))).long().clamp_(min=_WIDTH)


def _attends(wq: torch.Tensor, wk: torch.Tensor, d: int) -> torch.Tensor:
    """Whether a bucket of ``wq`` query and ``wk`` key lanes costs less as attention (3 products of wq · wk · d)
    than as tables (2 products of d² per lane on each side, in whole slots of _SLOT lanes)."""
    slots = (wq + _SLOT - 1) // _SLOT + (wk + _SLOT - 1) // _SLOT
    return 3 * wq * wk <= 2 * d * _SLOT * slots


class _Chunk:
    """One (block of heads, hash) problem's buckets laid out in lanes (see the comment above).

    Attributes:
        lanes_q, lanes_k: how many query and key lanes the chunk has.
        rows_q, rows_k: (lanes_q,) and (lanes_k,) source row of each lane: where its inputs come from (``rows``,
            a zero row, where the lane is padding).
        back_q, back_k: (rows,) lane of each row on its side: where its sums come from (the side's lane count, a
            zero lane, for a row whose bucket has no partner, only queries or only keys: it adds nothing).
        classes: [(first query lane, first key lane, buckets, query width, key width)] of the attention route.
        tables: (first query lane, bucket of each query slot, first key lane, bucket of each key slot, number
            of buckets) of the table route, or None.
    """

    __slots__ = ("lanes_q", "lanes_k", "rows_q", "rows_k", "back_q", "back_k", "classes", "tables")


def _layout(
    codes_q: torch.Tensor, codes_k: torch.Tensor, heads: int, n: int, head_dim: int, span: int, period: int
) -> list[_Chunk]:
    """Lanes of every chunk for codes (chunks, heads · n) below ``span``: chunk c's row r is token r % n of
    problem r // n (one head in one hash), and reads its inputs from source row r % ``period``.

    All chunks at once, so that the sorts and counts are a few large operations rather than a few small ones
    per chunk (on CPU a sort of 4,096 elements costs 4× per element what one of a million does). A bucket is
    (chunk, head, code); buckets are numbered chunk-major, so each chunk's buckets, and lanes, are contiguous.
    """
    chunks, rows = codes_q.shape
    buckets = _Buckets(codes_q, codes_k, heads, n, span, head_dim)
    order, kinds, wide, kind = _bucket_order(buckets, rows)
    owner = buckets.chunk[order]
    lanes_q, start_q, first_q = _chunk_lanes(buckets.width_q, buckets.chunk, order, owner, chunks)
    lanes_k, start_k, first_k = _chunk_lanes(buckets.width_k, buckets.chunk, order, owner, chunks)
    b = buckets
    rows_q, back_q = _place(b.query, b.count_q, first_q, b.live, b.chunk, lanes_q, start_q, rows, period)
    rows_k, back_k = _place(b.key, b.count_k, first_k, b.live, b.chunk, lanes_k, start_k, rows, period)
    classes = _classes(buckets, order, kind, kinds, wide, first_q, first_k, chunks)
    tables = _table_slots(buckets, order, chunks)
    out = []
    lanes_q, lanes_k, start_q, start_k = (
        lanes_q.tolist(),
        lanes_k.tolist(),
        start_q.tolist(),
        start_k.tolist(),
    )
    for c in range(chunks):
        chunk = _Chunk()
        chunk.lanes_q, chunk.lanes_k = lanes_q[c], lanes_k[c]
        chunk.rows_q = rows_q[start_q[c] : start_q[c] + chunk.lanes_q]
        chunk.rows_k = rows_k[start_k[c] : start_k[c] + chunk.lanes_k]
        chunk.back_q, chunk.back_k = back_q[c], back_k[c]
        chunk.classes = classes[c]
        chunk.tables = tables(c, chunk.lanes_q, chunk.lanes_k)
        out.append(chunk)
    return out


class _Buckets:
    """Every bucket of a batch of chunks, numbered chunk-major, and the route and lane widths of each.

    Attributes:
        query, key: (chunks · rows,) bucket of each query row and key row.
        chunk: (buckets,) the chunk each bucket belongs to.
        count_q, count_k: (buckets,) its query and key rows.
        live: buckets with rows on both sides (the others add nothing).
        attend, table: live buckets summed by in-bucket products, and by the paper's d×d tables.
        lanes_q, lanes_k: the attention route's lanes per side (square when the sides are balanced).
        width_q, width_k: lanes the bucket takes on each side, in its route (0 when it is not live).
    """

    def __init__(self, codes_q, codes_k, heads: int, n: int, span: int, head_dim: int):
        device = codes_q.device
        chunks, rows = codes_q.shape
        problem = (
            torch.arange(chunks, device=device).view(-1, 1) * heads + torch.arange(rows, device=device) // n
        )
        base = problem * span
        self.query, self.key = (codes_q + base).reshape(-1), (codes_k + base).reshape(-1)
        per_chunk = heads * span
        if (
            chunks * per_chunk > 4 * self.query.numel()
        ):  # wide codes: number the occupied buckets only (order kept)
            ids, inverse = torch.unique(torch.cat([self.query, self.key]), return_inverse=True)
            self.query, self.key = inverse[: len(self.query)], inverse[len(self.query) :]
            self.chunk = ids // per_chunk
        else:
            self.chunk = torch.arange(chunks * per_chunk, device=device) // per_chunk
        count = len(self.chunk)
        self.count_q = torch.bincount(self.query, minlength=count)
        self.count_k = torch.bincount(self.key, minlength=count)
        self.live = (self.count_q > 0) & (self.count_k > 0)
        most = torch.maximum(self.count_q, self.count_k)
        square = (most + _WIDTH - 1) // _WIDTH * _WIDTH
        balanced = most <= 2 * torch.minimum(self.count_q, self.count_k) + _WIDTH
        self.lanes_q = torch.where(balanced, square, _lane_widths(self.count_q))
        self.lanes_k = torch.where(balanced, square, _lane_widths(self.count_k))
        self.attend = self.live & _attends(self.lanes_q, self.lanes_k, head_dim)
        self.table = self.live & ~self.attend
        self.width_q = self._width(self.lanes_q, self.count_q)
        self.width_k = self._width(self.lanes_k, self.count_k)

    def _width(self, lanes: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        slots = (count + _SLOT - 1) // _SLOT * _SLOT
        return torch.where(self.attend, lanes, torch.where(self.table, slots, 0))


def _bucket_order(buckets: _Buckets, rows: int):
    """Buckets in lane order: within a chunk, attention buckets by class (query width, key width), then the
    table ones, then those without partners (no lanes). Returns the order, the number of kinds, the width
    base a class key is written in, and each bucket's kind."""
    wide = 2 * rows + _SLOT + 1  # above every width (a side's lanes are under twice its tokens, or a slot)
    kinds = wide * wide + 2
    by_class = buckets.lanes_q * wide + buckets.lanes_k
    kind = torch.where(buckets.attend, by_class, torch.where(buckets.table, wide * wide, wide * wide + 1))
    return torch.argsort(buckets.chunk * kinds + kind), kinds, wide, kind


def _chunk_lanes(width, chunk, order, owner, chunks: int):
    """Lanes of each chunk, its first global lane, and each bucket's first lane within its chunk."""
    per_chunk = torch.zeros(chunks, dtype=width.dtype, device=width.device).index_add_(0, chunk, width)
    start = torch.cumsum(per_chunk, 0) - per_chunk
    ordered, first = width[order], torch.empty_like(width)
    first[order] = torch.cumsum(ordered, 0) - ordered - start[owner]
    return per_chunk, start, first


def _classes(
    buckets: _Buckets, order, kind, kinds: int, wide: int, first_q, first_k, chunks: int
) -> list[list]:
    """Per chunk, its attention classes: runs of buckets of one (query width, key width), in lane order, as
    (first query lane, first key lane, buckets, query width, key width)."""
    attend = order[buckets.attend[order]]
    runs, counts = torch.unique_consecutive(buckets.chunk[attend] * kinds + kind[attend], return_counts=True)
    leader = attend[torch.cumsum(counts, 0) - counts]  # the first bucket of each run
    classes: list[list] = [[] for _ in range(chunks)]
    for key, count, lane_q, lane_k in zip(
        runs.tolist(), counts.tolist(), first_q[leader].tolist(), first_k[leader].tolist(), strict=True
    ):
        width_q, width_k = divmod(key % kinds, wide)
        classes[key // kinds].append((lane_q, lane_k, count, width_q, width_k))
    return classes


def _table_slots(buckets: _Buckets, order, chunks: int):
    """Per chunk, its table buckets' slots on each side (buckets numbered from 0 within the chunk), as a
    function of (chunk, its query lanes, its key lanes) giving :attr:`_Chunk.tables`."""
    in_table = order[buckets.table[order]]
    owner = buckets.chunk[in_table]
    per_chunk = torch.bincount(owner, minlength=chunks)
    local = torch.arange(len(in_table), device=owner.device) - (torch.cumsum(per_chunk, 0) - per_chunk)[owner]

    def slots(width):  # bucket of each slot, and each chunk's first slot and slot count
        count = width[in_table] // _SLOT
        total = torch.zeros(chunks, dtype=count.dtype, device=owner.device).index_add_(0, owner, count)
        return (
            torch.repeat_interleave(local, count),
            (torch.cumsum(total, 0) - total).tolist(),
            total.tolist(),
        )

    (slot_q, first_q, count_q), (slot_k, first_k, count_k) = slots(buckets.width_q), slots(buckets.width_k)
    per_chunk = per_chunk.tolist()

    def tables(c: int, lanes_q: int, lanes_k: int):
        if not per_chunk[c]:
            return None
        # Table lanes close the chunk on each side: _SLOT lanes per slot before its end.
        return (
            lanes_q - count_q[c] * _SLOT,
            slot_q[first_q[c] : first_q[c] + count_q[c]],
            lanes_k - count_k[c] * _SLOT,
            slot_k[first_k[c] : first_k[c] + count_k[c]],
            per_chunk[c],
        )

    return tables


def _place(buckets, counts, first, live, chunk, per_chunk, start, rows, period):
    """Source row of each global lane (its row % ``period``; ``period``, the zero row, for padding lanes), and
    the lane of each row within its chunk ((chunks, rows); a chunk's lane count, its zero lane, for rows
    without a lane).

    Per-bucket quantities are gathered with ``index_select`` (a few times faster than ``x[index]`` here).
    """
    sid, order = torch.sort(_sort_keys(buckets, len(counts)), stable=True)
    sid = sid.long()
    rank = torch.arange(len(buckets), device=buckets.device)  # position in bucket order
    owner = torch.index_select(chunk, 0, sid)  # chunk of each row, in bucket order
    # A row's lane within its chunk: its bucket's first lane + its rank in the bucket; the zero lane (the chunk's
    # lane count) for rows of buckets without a partner.
    lane = torch.index_select(first - (torch.cumsum(counts, 0) - counts), 0, sid) + rank
    alive = torch.index_select(live, 0, sid)
    lane = torch.where(alive, lane, torch.index_select(per_chunk, 0, owner))
    back = torch.empty_like(lane).scatter_(0, order, lane).view(-1, rows)
    total = int(per_chunk.sum())
    at = torch.where(alive, lane + torch.index_select(start, 0, owner), total)  # lane-less rows: a spare slot
    source = torch.full((total + 1,), period, dtype=torch.long, device=buckets.device)
    source.scatter_(0, at, (order - owner * rows) % period)
    return source[:total], back


_kept = threading.local()  # the backward's scratch buffers, per thread: kept from one call to the next


class _Scratch:
    """Buffers reused by every chunk of every layer and step run by this thread (per dtype and device).

    A fresh multi-megabyte tensor costs its page faults, several times the copy into it; a base layer's lane
    buffers at 4,096 tokens are about 100 MB, above the size the C allocator recycles, so a buffer freed after
    each layer came back as fresh pages in the next (a base model's step took 140,000-250,000 page faults in
    these buffers). Kept, they cost that memory once, for the life of the thread.
    """

    def __init__(self, like: torch.Tensor):
        stores = getattr(_kept, "stores", None)
        if stores is None:
            stores = _kept.stores = {}
        self.like, self.store = like, stores.setdefault((like.dtype, like.device), {})

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        size = math.prod(shape)
        x = self.store.get(name)
        if x is None or x.numel() < size:
            x = self.store[name] = self.like.new_empty(size + size // 4)
        return x[:size].view(*shape)


def _largest_divisor(total: int, most: int) -> int:
    """The largest divisor of ``total`` that is at most ``most`` (at least 1)."""
    return max(x for x in range(1, max(1, min(total, most)) + 1) if total % x == 0)


def _heads_per_chunk(bh: int, n: int) -> int:
    """The largest divisor of B·H with at most _INSTANCES rows per block (at least one head)."""
    return _largest_divisor(bh, _INSTANCES // n)


def _hashes_per_chunk(nh: int, rows: int) -> int:
    """The largest divisor of num_hash with at most _CHUNK_ROWS rows per chunk (at least one hash)."""
    return _largest_divisor(nh, _CHUNK_ROWS // rows)


def collision_gradients(codes_q, codes_k, q, k, v, g, counts=None):
    """Mean over hashes of Σ_j c_ij (g_i·v_j) k_j, of Σ_i c_ij (g_i·v_j) q_i and of Σ_i c_ij g_i: three
    (B, H, N, D) tensors, c_ij = [code_i = code_j] in each hash (codes: (B, H, N, num_hash)).

    ``counts``: the (B·H, N, N) mean collisions, when the forward kept them (:func:`_dense_cheaper` lengths).
    Longer sequences in fp32 on the CPU go through the compiled kernel (:mod:`native`), the others through the
    lanes below: the same sums, in a different order.
    """
    b, h, n, d = q.shape
    if counts is not None or _dense_cheaper(n):
        return _dense_collision_gradients(codes_q, codes_k, q, k, v, g, counts)
    span = int(max(codes_q.max(), codes_k.max())) + 1  # codes per (head, hash) problem
    if native.usable(q, k, v, g):
        return native.collision_gradients(codes_q, codes_k, q, k, v, g, span)
    nh = codes_q.shape[-1]
    heads = _heads_per_chunk(b * h, n)
    blocks, rows = b * h // heads, heads * n  # a block of heads: the rows its sources hold
    per = _hashes_per_chunk(nh, rows)  # a chunk: one block of heads in ``per`` hashes
    groups = nh // per

    def by_chunk(codes):  # (B, H, N, hashes) → (blocks · groups, per · rows): chunk = block · groups + group
        codes = codes.reshape(blocks, heads, n, groups, per).permute(0, 3, 4, 1, 2)
        return codes.reshape(blocks * groups, per * rows)

    # One block's sources at a time (chunks come block by block): rows + 1 by 2D, x | y side by side per row
    # and a zero row last, for q | g / nh (every sum below is then already a mean) and k | v.
    src_qg, src_kv = q.new_empty(rows + 1, 2 * d), q.new_empty(rows + 1, 2 * d)
    src_qg[rows], src_kv[rows] = 0, 0

    def fill(blk: int) -> None:
        for j in range(heads):
            bi, hi = divmod(blk * heads + j, h)
            at = slice(j * n, (j + 1) * n)
            src_qg[at, :d], src_qg[at, d:], src_kv[at, :d], src_kv[at, d:] = (
                q[bi, hi],
                g[bi, hi],
                k[bi, hi],
                v[bi, hi],
            )
        src_qg[:rows, d:] /= nh

    out_q, out_k = (q.new_zeros(blocks, rows, d) for _ in range(2))
    scratch = _Scratch(q)
    cq, ck = by_chunk(codes_q), by_chunk(codes_k)  # int32: the layout widens one group at a time
    total = blocks * groups
    group = max(1, _LAYOUT_ROWS // (per * rows))  # chunks laid out together: bounds the layout's index memory
    filled = -1
    for c0 in range(0, total, group):
        c1 = min(total, c0 + group)
        for c, chunk in enumerate(_layout(cq[c0:c1], ck[c0:c1], per * heads, n, d, span, rows), start=c0):
            blk = c // groups
            if blk != filled:
                fill(blk)
                filled = blk
            _accumulate(chunk, src_qg, src_kv, out_q[blk], out_k[blk], scratch, d, per)
    # Σ_i c_ij g_i is a cumulation of g with the roles of queries and keys swapped, as in the forward.
    gv = cumulate(codes_k, codes_q, g.reshape(b, h, n, d), span)
    shape = (b, h, n, d)
    return out_q.reshape(shape), out_k.reshape(shape), gv


def _accumulate(chunk: _Chunk, src_qg, src_kv, out_q, out_k, scratch, d: int, per: int) -> None:
    """Add one chunk's two sums, over its ``per`` hashes, into ``out_q`` and ``out_k`` (rows, D).

    The lanes of a class are gathered and multiplied a piece at a time (at most _PIECE lanes a side), so that
    the products read their inputs from cache.
    """
    lq, lk = chunk.lanes_q, chunk.lanes_k
    oq, ok = scratch("oq", lq + 1, d), scratch("ok", lk + 1, d)  # + a zero lane for rows without one
    oq[lq].zero_()
    ok[lk].zero_()

    def gather(src, rows, part: slice, width: int, name: str):  # (·, width, D) twice: q and g, or k and v
        x = torch.index_select(src, 0, rows[part], out=scratch(name, part.stop - part.start, 2 * d))
        return x.view(-1, width, 2 * d).split(d, dim=2)

    for lane_q, lane_k, count, wq, wk in chunk.classes:
        step = max(1, _PIECE // max(wq, wk))  # buckets per piece
        for first in range(0, count, step):
            c = min(step, count - first)
            part_q = slice(lane_q + first * wq, lane_q + (first + c) * wq)
            part_k = slice(lane_k + first * wk, lane_k + (first + c) * wk)
            q_, g_ = gather(src_qg, chunk.rows_q, part_q, wq, "qg")
            k_, v_ = gather(src_kv, chunk.rows_k, part_k, wk, "kv")
            w = torch.bmm(g_, v_.transpose(1, 2), out=scratch("w", c, wq, wk))  # (buckets, Wq, Wk)
            torch.bmm(w, k_, out=oq[part_q].view(c, wq, d))
            torch.bmm(w.transpose(1, 2), q_, out=ok[part_k].view(c, wk, d))
    if chunk.tables is not None:
        lane_q, bucket_q, lane_k, bucket_k, nt = chunk.tables
        q_, g_ = gather(src_qg, chunk.rows_q, slice(lane_q, lq), _SLOT, "qg")
        k_, v_ = gather(src_kv, chunk.rows_k, slice(lane_k, lk), _SLOT, "kv")
        vk = q_.new_zeros(nt, d, d).index_add_(0, bucket_k, v_.transpose(1, 2) @ k_)  # Σ v kᵀ per bucket
        gq = q_.new_zeros(nt, d, d).index_add_(0, bucket_q, g_.transpose(1, 2) @ q_)  # Σ g qᵀ per bucket
        torch.bmm(g_, vk.index_select(0, bucket_q), out=oq[lane_q:lq].view(-1, _SLOT, d))
        torch.bmm(v_, gq.index_select(0, bucket_k), out=ok[lane_k:lk].view(-1, _SLOT, d))
    # Each row reads its lanes' sums, one per hash of the chunk: a gather and a sum in one embedding_bag (on
    # CPU several times faster than index_add_ from the lanes).
    rows = len(out_q)
    out_q += F.embedding_bag(chunk.back_q.view(per, rows).t(), oq, mode="sum")
    out_k += F.embedding_bag(chunk.back_k.view(per, rows).t(), ok, mode="sum")


def _dense_cheaper(n: int) -> bool:
    """Whether the n×n collision counts beat the lane layout (and the forward's tables): measured on CPU at
    head_dim 64, τ 8, 32 hashes, they do up to about 1,500 tokens (at 512, 3× faster than the lanes)."""
    return n <= _DENSE_MAX


_DENSE_MAX = 1024
_INSTANCES = 1 << 12  # rows per block of heads
_CHUNK_ROWS = 1 << 17  # rows per chunk: a block of heads in several hashes (fewer, larger products)
_PIECE = 1 << 13  # lanes gathered at a time for the batched products
_LAYOUT_ROWS = 1 << 18  # rows of the chunks laid out together


def collision_counts(codes_q: torch.Tensor, codes_k: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """C[·, i, j] = number of hashes in which query i and key j share a bucket: (P, N, M) ``dtype``, for codes
    (P, N, num_hash) and (P, M, num_hash).

    Built from the colliding pairs only, O(n · num_hash + collisions) rather than n² comparisons per hash:
    keys sorted by (row, hash, code), each query's partners a run of them, found by a bucket offset table
    (or a binary search when the codes are too wide for one).
    """
    p, n, nh = codes_q.shape
    m = codes_k.shape[1]
    if p * n * m >= 1 << 31:  # cells are packed into 32 bits below
        raise ValueError(f"collision_counts of {p}×{n}×{m} cells: at most 2^31 at a time")
    dev = codes_q.device
    span = int(max(codes_q.max(), codes_k.max())) + 1
    problem = (torch.arange(p, device=dev).view(p, 1, 1) * nh + torch.arange(nh, device=dev)) * span
    bins = p * nh * span
    problem = problem.int() if bins < 1 << 31 else problem  # int32 keys sort twice as fast as int64
    keys, order = torch.sort((codes_k + problem).reshape(-1))
    keys, queries = keys.long(), (codes_q + problem).reshape(-1).long()
    if bins <= 4 * keys.numel():
        count = torch.bincount(keys, minlength=bins)
        lo, count = (torch.cumsum(count, 0) - count)[queries], count[queries]
    else:
        lo = torch.searchsorted(keys, queries)
        count = torch.searchsorted(keys, queries, right=True) - lo
    # Pair t of query r is sorted key lo[r] + t - start[r], start[r] the first pair of r: one gather of a
    # per-query word packing the query's output row (high 32 bits) and lo - start (low 32, signed) per pair.
    start = torch.cumsum(count, 0) - count
    pairs = int(count.sum())
    first = torch.zeros(pairs + 1, dtype=torch.long, device=dev)
    first.index_add_(0, start, torch.ones_like(start))  # queries without pairs mark the next one's start
    query = torch.cumsum(first[:pairs], 0) - 1  # the first query starts at 0, so first[0] ≥ 1
    row = torch.arange(p * n, device=dev).repeat_interleave(nh) * m  # flat (row, i, hash) → (row · N + i) · M
    word = torch.index_select((row << 32) + (lo - start), 0, query)
    low = ((word + (1 << 31)) & ((1 << 32) - 1)) - (1 << 31)
    col = torch.div(order % (m * nh), nh, rounding_mode="floor")  # key column j of each sorted key
    cell = ((word - low) >> 32) + torch.index_select(col, 0, torch.arange(pairs, device=dev) + low)
    out = torch.zeros(p * n * m, device=dev, dtype=dtype)
    ones = torch.ones(1, device=dev, dtype=dtype).expand(len(cell))
    return out.index_add_(0, cell, ones).view(p, n, m)


def mean_collisions(codes_q: torch.Tensor, codes_k: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """C / num_hash for (B, H, N, num_hash) codes: (B·H, N, N), the fraction of hashes each pair shares."""
    b, h, n, nh = codes_q.shape
    return collision_counts(codes_q.reshape(b * h, n, nh), codes_k.reshape(b * h, n, nh), dtype).div_(nh)


def _dense_collision_gradients(codes_q, codes_k, q, k, v, g, counts=None):
    """:func:`collision_gradients` through C / num_hash (:func:`mean_collisions`), a few heads at a time."""
    b, h, n, d = q.shape
    # Contiguous outputs whatever the inputs' strides (q arrives as a transposed view of the projections):
    # the reshapes below must be views, or the bmm's ``out=`` would fill copies and leave these unwritten.
    gq, gk, gv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    bh = b * h
    step = max(1, _BUDGET // (4 * n * n))  # C, W and the pairs behind C: about 4 budgets
    flat = [x.reshape(bh, n, x.shape[-1]) for x in (codes_q, codes_k, q, k, v, g, gq, gk, gv)]
    cq, ck, q_, k_, v_, g_, oq, ok, ov = flat
    for i in range(0, bh, step):
        s = slice(i, i + step)
        c = (
            counts[s] if counts is not None else mean_collisions(cq[s, None], ck[s, None], q.dtype)
        )  # (·, N, N)
        w = torch.bmm(g_[s], v_[s].transpose(1, 2)).mul_(c)
        torch.bmm(w, k_[s], out=oq[s])
        torch.bmm(w.transpose(1, 2), q_[s], out=ok[s])
        torch.bmm(c.transpose(1, 2), g_[s], out=ov[s])
    return gq, gk, gv


class _LSHCumulation(torch.autograd.Function):
    """LSH estimate of Σ_j B(q_i, k_j) v_j; masked keys arrive with zero values and so add nothing."""

    @staticmethod
    def forward(ctx, q, k, v, mask, codes_q, codes_k, tau, lsh_backward):
        ctx.tau, ctx.lsh_backward, ctx.counts = tau, lsh_backward, None
        ctx.save_for_backward(q, k, v, mask, codes_q, codes_k)
        b, h, n, d = v.shape
        if not _dense_cheaper(n) or b * h * n * n > 2 * _BUDGET:
            return cumulate(codes_q, codes_k, v, 1 << tau)
        c = mean_collisions(codes_q, codes_k, v.dtype)  # (B·H, N, N); the backward reuses it
        if lsh_backward:
            ctx.counts = c
        return torch.bmm(c, v.reshape(b * h, n, d)).view(b, h, n, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, mask, codes_q, codes_k = ctx.saved_tensors
        tau = ctx.tau
        # Padded queries pass no gradient. grad arrives as a transposed view of the layer's (B, N, H·D) gradient:
        # the LSH sums read it as it is (one head at a time), so only the expectation's row chunks copy it.
        g = _masked(grad if ctx.lsh_backward else grad.contiguous(), mask)
        if not ctx.lsh_backward:
            gq, gk, gv = expectation_backward(q, k, v, mask, g, tau)
            return gq, gk, gv, None, None, None, None, None
        gq, gk, gv = collision_gradients(codes_q, codes_k, q, k, v, g, ctx.counts)
        ctx.counts = None
        return gq.mul_(tau / 2), gk.mul_(tau / 2), _masked(gv, mask), None, None, None, None, None
