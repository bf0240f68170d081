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
        return (bits @ powers).int()  # (B, H, N, num_hash); int32 halves what the backward keeps

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


# ---------------------------------------------------------------------------------------------- LSH backward
#
# ∂L/∂q_i = (τ/2) Σ_j c_ij (g_i·v_j) k_j and ∂L/∂k_j = (τ/2) Σ_i c_ij (g_i·v_j) q_i, with c_ij the fraction of
# hashes in which query i and key j share a bucket (the paper's weighted LSH cumulation), and ∂L/∂v_j = Σ_i c_ij g_i.
# Within one hash a bucket's queries and keys are a small dense attention problem: W = G Vᵀ, ∂q = W K, ∂k = Wᵀ Q.
# So each hash's buckets are laid out side by side in *lanes* (the bucket's tokens gathered into consecutive rows,
# widths rounded up to multiples of _WIDTH) and buckets of one width go through one batched matmul. A bucket too
# big for that (cost quadratic in its size) takes the paper's d×d tables instead, Σ_j v_j k_jᵀ, in slots of
# _SLOT lanes. Every sum is the same as the paper's; only the order of the arithmetic differs. Short sequences
# skip the layout: the n×n collision counts C are cheap there, and the three products are plain matmuls.

_WIDTH = 8  # lane widths of the attention route are multiples of this
_SLOT = 64  # lanes per slot in the table route


def _attends(width: torch.Tensor, d: int) -> torch.Tensor:
    """Whether a bucket of ``width`` lanes costs less as attention (3 products of width² · d) than as tables
    (4 products of d² per slot of _SLOT lanes)."""
    slots = (width + _SLOT - 1) // _SLOT
    return 6 * width * width <= 8 * d * _SLOT * slots


class _Lanes:
    """One group of hashes' buckets laid out in lanes (see the comment above).

    Attributes:
        rows_q, rows_k: (lanes + 1,) source row of each lane (``pad``, a zero row, where empty); the last lane
            is always empty.
        where_q, where_k: (instances,) lane of each (row, hash) instance; the empty last lane where the bucket
            has no partner (only queries or only keys), so that it reads zeros.
        classes: [(first lane, buckets, width)] of the attention route, one per width.
        tables: (first lane, bucket of each slot) of the table route, or None.
    """

    def __init__(self, bq: torch.Tensor, bk: torch.Tensor, rows: torch.Tensor, pad: int, d: int):
        dev = bq.device
        ids, inv = torch.unique(torch.cat([bq, bk]), return_inverse=True)
        iq, ik = inv[: len(bq)], inv[len(bq) :]
        cq, ck = torch.bincount(iq, minlength=len(ids)), torch.bincount(ik, minlength=len(ids))
        most = torch.maximum(cq, ck)
        live = (cq > 0) & (ck > 0)
        narrow = (most + _WIDTH - 1) // _WIDTH * _WIDTH
        attend = live & _attends(narrow, d)
        width = torch.where(attend, narrow, torch.where(live, (most + _SLOT - 1) // _SLOT * _SLOT, 0))
        # Attention buckets first, by width; then the table ones; buckets without partners take no lanes.
        key = torch.where(attend, narrow, torch.where(live, 1 << 40, 1 << 41))
        order = torch.argsort(key, stable=True)
        ordered = width[order]
        first = torch.empty_like(width)
        first[order] = torch.cumsum(ordered, 0) - ordered
        self.lanes = lanes = int(ordered.sum())
        self.where_q, self.rows_q = self._place(iq, cq, first, live, rows, lanes, pad)
        self.where_k, self.rows_k = self._place(ik, ck, first, live, rows, lanes, pad)
        na = int(attend.sum())
        widths, counts = torch.unique_consecutive(ordered[:na], return_counts=True)
        self.classes, lane = [], 0
        for w, c in zip(widths.tolist(), counts.tolist(), strict=True):
            self.classes.append((lane, c, w))
            lane += w * c
        self.tables = None
        if lane < lanes:
            slots = ordered[na : int(live.sum())] // _SLOT  # per table bucket, in lane order
            self.tables = (lane, torch.repeat_interleave(torch.arange(len(slots), device=dev), slots))

    @staticmethod
    def _place(ids, counts, first, live, rows, lanes, pad):
        order = torch.argsort(ids, stable=True)
        sid = ids[order]
        rank = torch.arange(len(ids), device=ids.device) - (torch.cumsum(counts, 0) - counts)[sid]
        lane = torch.where(live[sid], first[sid] + rank, lanes)
        where = torch.empty_like(lane)
        where[order] = lane
        source = torch.full((lanes + 1,), pad, dtype=torch.long, device=ids.device)
        source[lane] = rows[order]
        source[lanes] = pad
        return where, source


class _Scratch:
    """Reused buffers: fresh multi-megabyte tensors on every hash cost page faults, several times the copy."""

    def __init__(self, like: torch.Tensor):
        self.like, self.store = like, {}

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        size = math.prod(shape)
        x = self.store.get(name)
        if x is None or x.numel() < size:
            x = self.store[name] = self.like.new_empty(size + size // 4)
        return x[:size].view(*shape)


def collision_gradients(codes_q, codes_k, q, k, v, g, counts=None):
    """Mean over hashes of Σ_j c_ij (g_i·v_j) k_j, of Σ_i c_ij (g_i·v_j) q_i and of Σ_i c_ij g_i: three
    (B, H, N, D) tensors, c_ij = [code_i = code_j] in each hash (codes: (B, H, N, num_hash)).

    ``counts``: the (B·H, N, N) mean collisions, when the forward kept them (:func:`_dense_cheaper` lengths).
    """
    b, h, n, d = q.shape
    if counts is not None or _dense_cheaper(n):
        return _dense_collision_gradients(codes_q, codes_k, q, k, v, g, counts)
    nh = codes_q.shape[-1]
    bh = b * h
    out = {"q": q.new_zeros(bh * n, d), "kv": q.new_zeros(bh * n, 2 * d)}  # ∂k | ∂v side by side
    scratch = _Scratch(q)
    span = int(max(codes_q.max(), codes_k.max())) + 1  # bucket ids of one (row, hash) problem
    heads = min(bh, max(1, _INSTANCES // n))  # per layout: its scratch is ~3.5 KB per (row, hash) instance
    group = max(1, _INSTANCES // (heads * n))  # hashes per layout
    flat = [x.reshape(bh, n, -1) for x in (q, g, k, v, codes_q, codes_k)]
    for h0 in range(0, bh, heads):
        hh = slice(h0, min(bh, h0 + heads))
        q_, g_, k_, v_, cq, ck = (x[hh] for x in flat)
        rows = (hh.stop - hh.start) * n  # rows of this chunk of heads; row ``rows`` is zeros (empty lanes)
        source = {
            "qg": torch.cat([torch.cat([q_, g_], -1).view(rows, 2 * d), q.new_zeros(1, 2 * d)]),
            "kv": torch.cat([torch.cat([k_, v_], -1).view(rows, 2 * d), q.new_zeros(1, 2 * d)]),
        }
        part = {name: x[hh.start * n : hh.stop * n] for name, x in out.items()}
        index = torch.arange(rows, device=q.device).view(-1, n, 1)
        for f0 in range(0, nh, group):
            hs = min(nh, f0 + group) - f0
            ids = torch.arange(hh.stop - hh.start, device=q.device).view(-1, 1, 1) * hs
            problem = (ids + torch.arange(hs, device=q.device)) * span  # bucket ids of (head, hash) problems
            lanes = _Lanes(
                (cq[..., f0 : f0 + hs] + problem).reshape(-1),
                (ck[..., f0 : f0 + hs] + problem).reshape(-1),
                index.expand(-1, n, hs).reshape(-1),
                rows,
                d,
            )
            _accumulate(lanes, source, part, scratch, rows, hs, d)
    gkv = out["kv"].div_(nh).view(b, h, n, 2 * d)
    return out["q"].div_(nh).view(b, h, n, d), gkv[..., :d], gkv[..., d:]  # views: no copy of either


def _accumulate(lanes: _Lanes, source, out, scratch, rows: int, hs: int, d: int) -> None:
    """Add one layout's three sums to ``out`` ((rows, D) for ∂q, (rows, 2D) for ∂k | ∂v)."""
    size = lanes.lanes + 1
    qg = torch.index_select(source["qg"], 0, lanes.rows_q, out=scratch("qg", size, 2 * d))  # query side
    kv = torch.index_select(source["kv"], 0, lanes.rows_k, out=scratch("kv", size, 2 * d))  # key side
    qs, gs, ks, vs = qg[:, :d], qg[:, d:], kv[:, :d], kv[:, d:]
    oq, okv = scratch("oq", size, d), scratch("okv", size, 2 * d)
    ok, ov = okv[:, :d], okv[:, d:]
    oq[-1].zero_()
    okv[-1].zero_()
    for first, count, width in lanes.classes:
        part = slice(first, first + count * width)
        q_, g_, k_, v_ = (x[part].view(count, width, d) for x in (qs, gs, ks, vs))
        w = torch.bmm(g_, v_.transpose(1, 2), out=scratch("w", count, width, width))  # (buckets, W, W)
        torch.bmm(w, k_, out=oq[part].view(count, width, d))
        ok[part].view(count, width, d).copy_(torch.bmm(w.transpose(1, 2), q_))
        ov[part].view(count, width, d).copy_(g_.sum(1, keepdim=True).expand(count, width, d))
    if lanes.tables is not None:
        first, bucket = lanes.tables
        part = slice(first, lanes.lanes)
        q_, g_, k_, v_ = (x[part].view(-1, _SLOT, d) for x in (qs, gs, ks, vs))
        nt = int(bucket[-1]) + 1
        vk = q_.new_zeros(nt, d, d).index_add_(0, bucket, v_.transpose(1, 2) @ k_)  # Σ v kᵀ per bucket
        torch.bmm(g_, vk.index_select(0, bucket), out=oq[part].view(-1, _SLOT, d))
        gq = q_.new_zeros(nt, d, d).index_add_(0, bucket, g_.transpose(1, 2) @ q_)  # Σ g qᵀ per bucket
        ok[part].view(-1, _SLOT, d).copy_(v_ @ gq.index_select(0, bucket))
        gsum = q_.new_zeros(nt, d).index_add_(0, bucket, g_.sum(1))
        ov[part].view(-1, _SLOT, d).copy_(gsum.index_select(0, bucket)[:, None].expand(-1, _SLOT, d))
    for name, o, where in (("q", oq, lanes.where_q), ("kv", okv, lanes.where_k)):
        read = torch.index_select(o, 0, where, out=scratch("read" + name, rows * hs, o.shape[1]))
        out[name] += read.view(rows, hs, -1).sum(1) if hs > 1 else read


def _dense_cheaper(n: int) -> bool:
    """Whether the n×n collision counts beat the lane layout (and the forward's tables): measured on CPU at
    head_dim 64, τ 8, 32 hashes, they do up to about 1,500 tokens (at 512, 3× faster than the lanes)."""
    return n <= _DENSE_MAX


_DENSE_MAX = 1024
_INSTANCES = 1 << 15  # (row, hash) instances per lane layout


def collision_counts(codes_q: torch.Tensor, codes_k: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """C[·, i, j] = number of hashes in which query i and key j share a bucket: (P, N, M) ``dtype``, for codes
    (P, N, num_hash) and (P, M, num_hash).

    Built from the colliding pairs only, O(n · num_hash + collisions) rather than n² comparisons per hash:
    keys sorted by (row, hash, code), each query's partners a run of them, found by a bucket offset table
    (or a binary search when the codes are too wide for one).
    """
    p, n, nh = codes_q.shape
    m = codes_k.shape[1]
    dev = codes_q.device
    span = int(max(codes_q.max(), codes_k.max())) + 1
    problem = (torch.arange(p, device=dev).view(p, 1, 1) * nh + torch.arange(nh, device=dev)) * span
    keys, order = torch.sort((codes_k + problem).reshape(-1))
    queries = (codes_q + problem).reshape(-1)
    bins = p * nh * span
    if bins <= 4 * keys.numel():
        count = torch.bincount(keys, minlength=bins)
        lo, count = (torch.cumsum(count, 0) - count)[queries], count[queries]
    else:
        lo = torch.searchsorted(keys, queries)
        count = torch.searchsorted(keys, queries, right=True) - lo
    query = torch.repeat_interleave(torch.arange(len(queries), device=dev), count)
    rank = torch.arange(len(query), device=dev) - torch.repeat_interleave(
        torch.cumsum(count, 0) - count, count
    )
    key = order[lo[query] + rank]  # flat (row, j, hash) index of each colliding key
    row_i = (
        torch.arange(p * n, device=dev).repeat_interleave(nh) * m
    )  # flat (row, i, hash) → (row · N + i) · M
    col_j = torch.arange(m, device=dev).repeat_interleave(nh).repeat(p)  # flat (row, j, hash) → j
    cell = row_i[query] + col_j[key]
    out = torch.zeros(p * n * m, device=dev, dtype=dtype)
    ones = torch.ones(1, device=dev, dtype=dtype).expand(len(cell))
    return out.index_put_((cell,), ones, accumulate=True).view(p, n, m)


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
        g = grad.contiguous() * mask  # padded queries pass no gradient
        if not ctx.lsh_backward:
            gq, gk, gv = expectation_backward(q, k, v, mask, g, tau)
            return gq, gk, gv, None, None, None, None, None
        gq, gk, gv = collision_gradients(codes_q, codes_k, q, k, v, g, ctx.counts)
        ctx.counts = None
        return gq.mul_(tau / 2), gk.mul_(tau / 2), gv.mul_(mask), None, None, None, None, None
