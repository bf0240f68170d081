"""LSG attention: local blocks, sparse compressed tokens and global tokens (Condevaux & Harispe, arXiv 2210.15497).

The sequence the mechanism receives starts with ``num_global_tokens`` learned global tokens (the encoder
prepends them). Global queries attend to every key. The other tokens are cut into blocks of ``block_size``
queries; each block attends to (paper fig. 1)

* the global tokens,
* its local window: the previous, its own and the next block (``3 * block_size`` keys),
* ``sparse_block_size`` compressed tokens on each side just outside that window. The compressed sequence has
  one token per ``sparsity_factor`` tokens, built by ``sparsity_type`` (paper sec. 3.2): ``norm`` keeps the
  keys of largest norm in each chunk, ``pooling`` averages, ``bos_pooling`` averages weighted by the attention of
  the first real token's (BOS) query, ``stride`` / ``block_stride`` keep every f-th token (a different offset per head),
  ``lsh`` sums keys hashed into the same bucket, ``none`` uses no compressed tokens.

Inputs of at most two blocks (plus the globals) use full attention. Cost and memory are linear in the length:
the widest tensor is ``(B, H, blocks, block_size, keys per block)``.

Where ``block_size / sparsity_factor`` is 1 the published code's right sparse window overlaps the local window
(and for other odd ratios it fails); here the windows sit just outside the local one for every setting.

Rows are right-aligned internally (real tokens first), so left padding and padding in the middle see the same
blocks as the unpadded input, and padding never changes the output at real tokens.

The blocks' attention is torch's SDPA (fused kernels), except in training with attention dropout on CPU, where
SDPA would take its math path: there :class:`DroppedSoftmax` does the same with cheaper masks (:func:`drop_mask`).
Training without dropout on CPU calls the fused kernel and its backward directly, a chunk of blocks at a time,
keeping no windows (:class:`_FusedChunks`).
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from longattn_cli.attention.base import Attention, exporting, real_first_order, register, softmax_flops
from longattn_cli.attention.settings import SPARSITY_TYPES, LSGSettings  # noqa: F401
from longattn_cli.errors import UserError

# Blocks go in chunks of about _CHUNK_BUDGET bytes of key and value windows, except in training with dropout
# (or off the CPU) on at most _WINDOW_BUDGET of them (all blocks; above it the chunks are recomputed in the
# backward): at 16,384 tokens, 12 heads of 64, the windows are 0.5 GB.
_WINDOW_BUDGET = 1 << 27
_CHUNK_BUDGET = 1 << 25


@register
class LSGAttention(Attention):
    """Local + sparse + global attention; see the module docstring."""

    name = "lsg"
    Settings = LSGSettings
    FLOPS = (
        "n - g > 2·bs: forward 4·L·K·d for the blocks (L = n - g rounded up to whole blocks, K = g + 3·bs + "
        "2·sparse_block_size keys per block) + 4·g·n·d for the global queries; backward 2× forward; "
        "shorter: full softmax 4·n²·d / 8·n²·d"
    )

    @classmethod
    def flops(cls, settings, n, d):
        s = settings
        g, bs = s.num_global_tokens, s.block_size
        if n - g <= 2 * bs:
            return softmax_flops(n, d)
        length = -(-(n - g) // bs) * bs
        keys = g + 3 * bs + (2 * s.sparse_block_size if s.uses_sparse else 0)
        fwd = 4.0 * length * keys * d + 4.0 * g * n * d
        return fwd, 2 * fwd

    def forward(self, q, k, v, mask):
        s = self.settings
        b, _, n, _ = q.shape
        g = s.num_global_tokens
        if n <= g:
            raise UserError(f"LSG needs at least {g + 1} tokens (num_global_tokens={g} included), got {n}")
        mask = torch.ones(b, n, dtype=torch.bool, device=q.device) if mask is None else mask
        if exporting():
            return self._branch_free(q, k, v, mask)
        if n - g <= 2 * s.block_size:  # the local window already covers every token
            return self._full(q, k, v, self._hide_first(mask))
        order = _right_align_order(mask[:, g:])
        if order is None:
            return self._lsg(q, k, v, self._hide_first(mask))
        # Real tokens first, in their order: blocks then start at the first real token, as without padding.
        idx = torch.cat([torch.arange(g, device=q.device).expand(b, g), order + g], dim=1)  # (B, N)
        q, k, v = (_take(x, idx) for x in (q, k, v))
        out = self._lsg(q, k, v, self._hide_first(mask.gather(1, idx)))
        return torch.empty_like(out).scatter_(2, idx[:, None, :, None].expand_as(out), out)

    def export_problem(self) -> str | None:
        if self.settings.sparsity_type != "lsh" or not self.settings.uses_sparse:
            return None
        return (
            "LSG's lsh sparsity draws new random projections on every call, so no fixed graph reproduces it; "
            "export with a deterministic one, e.g. --set sparsity_type=norm (or pooling, bos_pooling, stride, "
            "block_stride, none)"
        )

    def _branch_free(self, q, k, v, mask):
        """:meth:`forward` the same way for every input (for export): rows always reordered real tokens first,
        and inputs of two blocks or fewer through the blocks too, whose windows then cover every token: full
        attention, as :meth:`forward` computes it for them. The rows after the globals are padded to whole
        blocks first, so that every shape below is a multiple of ``blocks`` (an export traces it symbolically)."""
        problem = self.export_problem()
        if problem:
            raise UserError(problem)
        s = self.settings
        g, bs = s.num_global_tokens, s.block_size
        b, _, n, _ = q.shape
        order = real_first_order(mask[:, g:])
        idx = torch.cat([torch.arange(g, device=q.device).expand(b, g), order + g], dim=1)  # (B, N)
        q, k, v = (_take(x, idx) for x in (q, k, v))
        mask = self._hide_first(mask.gather(1, idx))
        global_out = self._full(q[:, :, :g], k, v, mask)  # (B, H, G, D)
        blocks = (n - g + bs - 1) // bs
        pad = blocks * bs - (n - g)
        qr, kr, vr = (F.pad(x[:, :, g:], (0, 0, 0, pad)) for x in (q, k, v))  # (B, H, blocks·bs, D)
        mr = F.pad(mask[:, g:], (0, pad))  # (B, blocks·bs)
        sparse = ()
        if s.uses_sparse:
            ks, vs, ms = self._compress(qr[:, :, :1], kr, vr, mr)
            sparse = tuple(self._pad_compressed(x) for x in (ks, vs, ms[..., None]))
        kg, vg = k[:, :, :g], v[:, :, :g]
        out = self._chunk_of(0, blocks, blocks * bs, qr, kr, vr, mr[:, None, :, None], kg, vg, *sparse)
        out = torch.cat([global_out, out[:, :, : n - g]], dim=2)
        return torch.empty_like(out).scatter(2, idx[:, None, :, None].expand_as(out), out)

    def _hide_first(self, mask):
        """``mask_first_token``: the first real token after the globals stops being a key (its query stays)."""
        if not self.settings.mask_first_token:
            return mask
        g = self.settings.num_global_tokens
        first = g + mask[:, g:].int().argmax(dim=1)
        mask = mask.clone()
        mask[torch.arange(mask.shape[0], device=mask.device), first] = False
        return mask

    def _full(self, q, k, v, mask):
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p)

    def _lsg(self, q, k, v, mask):
        """Block attention on right-aligned rows longer than two blocks."""
        s = self.settings
        g, bs = s.num_global_tokens, s.block_size
        b, h, n, d = q.shape
        length = n - g
        pad = -length % bs
        if pad and not s.adaptive:
            raise UserError(
                f"LSG with adaptive=false needs a length that is a multiple of block_size={bs} (got {length} tokens "
                "after the global ones); set adaptive=true or pad the input"
            )
        global_out = self._full(q[:, :, :g], k, v, mask)  # (B, H, G, D): global queries see everything
        kg, vg = k[:, :, :g], v[:, :, :g]
        blocks = (length + pad) // bs
        qr, kr, vr = q[:, :, g:], k[:, :, g:], v[:, :, g:]  # (B, H, length, D) views
        mr = mask[:, g:][:, None, :, None]  # (B, 1, length, 1)
        sparse = ()
        if s.uses_sparse:
            # bos_pooling weighs with the query of the first real token (BOS/CLS): rows are right-aligned.
            ks, vs, ms = self._compress(
                qr[:, :, :1],
                *(F.pad(x, (0, 0, 0, pad)) if pad else x for x in (kr, vr)),
                F.pad(mr[:, 0, :, 0], (0, pad)),
            )  # (B, H, L/f, D)
            sparse = tuple(self._pad_compressed(x) for x in (ks, vs, ms[..., None]))
        keys = g + 3 * bs + (2 * s.sparse_block_size if sparse else 0)
        per_block = 2 * b * h * keys * d * q.element_size()  # bytes of one block's key and value windows
        step = max(1, _CHUNK_BUDGET // per_block)
        p = self.dropout if self.training else 0.0
        if not _needs_grad(q, k, v):  # blocks in chunks: one chunk's windows alive at a time
            chunks = [
                self._chunk(i, min(blocks, i + step), qr, kr, vr, mr, kg, vg, *sparse)
                for i in range(0, blocks, step)
            ]
            out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
        elif p == 0 and q.device.type == "cpu" and _fused_cpu_kernel():
            out = _FusedChunks.apply(self, blocks, step, qr, kr, vr, mr, kg, vg, *sparse)
        elif per_block * blocks <= _WINDOW_BUDGET:
            out = self._chunk(0, blocks, qr, kr, vr, mr, kg, vg, *sparse)
        else:
            # Long inputs in training with dropout (or off the CPU): blocks in chunks whose windows are rebuilt
            # in the backward instead of kept (all blocks' windows hold ~5x the keys and values), for one more
            # forward of the blocks.
            out = _Chunked.apply(self, blocks, step, qr, kr, vr, mr, kg, vg, *sparse)
        return torch.cat([global_out, out[:, :, :length]], dim=2)

    def _sparse_span(self) -> tuple[int, int, int]:
        """(sbs, step, width) of the sparse windows in compressed slots: block i's local window is slots
        [(i-1)·step, (i+2)·step) (step = block_size / sparsity_factor); its sparse windows are the
        ``sparse_block_size`` slots just left and right of it, the two ends of one span of
        ``width = 2·sbs + 3·step``."""
        s = self.settings
        step = s.block_size // s.sparsity_factor
        return s.sparse_block_size, step, 2 * s.sparse_block_size + 3 * step

    def _pad_compressed(self, x):
        """The compressed sequence with ``sparse_block_size + step`` zero (masked) slots on each side, so that
        block i's span (:meth:`_sparse_span`) starts at slot i·step."""
        sbs, step, _ = self._sparse_span()
        return F.pad(x, (0, 0, sbs + step, sbs + step))

    def _rows(self, first, stop, length):
        """Where blocks ``first`` … ``stop - 1`` read: the query rows, the key rows (one block more on each
        side, clipped to the sequence) and the padded compressed slots of their sparse windows."""
        bs = self.settings.block_size
        _, step, width = self._sparse_span()
        keys = slice(max((first - 1) * bs, 0), min((stop + 1) * bs, length))
        return slice(first * bs, stop * bs), keys, slice(first * step, (stop - 1) * step + width)

    def _chunk(self, first, stop, q, k, v, m, kg, vg, *sparse, attend=None):
        """Blocks ``first`` … ``stop - 1``. ``q``, ``k``, ``v`` (B, H, length, D) and ``m`` (B, 1, length, 1)
        are the unpadded rows after the globals; ``sparse`` the padded compressed keys, values and mask
        (:meth:`_pad_compressed`), or nothing."""
        where = self._rows(first, stop, q.shape[2])
        q_, k_, v_, kg, vg, *sparse = _at(where, q, k, v, kg, vg, *sparse)
        return self._chunk_of(
            first, stop, q.shape[2], q_, k_, v_, m[:, :, where[1]], kg, vg, *sparse, attend=attend
        )

    def _chunk_of(self, first, stop, length, q, k, v, m, kg, vg, *sparse, attend=None):
        """:meth:`_chunk` on the rows :meth:`_rows` names; rows outside the sequence count as zeros (masked),
        as if the sequence had an empty block on each side."""
        bs = self.settings.block_size
        q = F.pad(q, (0, 0, 0, (stop - first) * bs - q.shape[2]))
        left, right = max(bs - first * bs, 0), max((stop + 1) * bs - length, 0)
        k, v, m = (F.pad(x, (0, 0, left, right)) for x in (k, v, m))
        windows = ()
        if sparse:
            sbs, step, width = self._sparse_span()
            # Each block's left and right sparse windows, the two ends of its span (B, H, blocks, sbs, ·):
            # unfolded apart, so the backward never fills the whole spans with zeros.
            span = (stop - first - 1) * step + sbs  # the slots of all blocks' left (or right) windows
            windows = tuple(
                _windows(w, sbs, step) for x in sparse for w in (x[:, :, :span], x[:, :, width - sbs :])
            )
        return (attend or self._blocks)(q, k, v, m, len(windows) // 3, kg, vg, *windows)

    def _blocks(self, q, kp, vp, mp, sparse, kg, vg, *windows):
        """Attention of the query blocks ``q`` (B, H, nb·bs, D) to their windows: ``kp``, ``vp``, ``mp`` hold
        the blocks' keys, values and mask with one block more on each side; ``windows`` the ``sparse``
        compressed key windows, as many value windows and mask windows (each (B, H, nb, sbs, ·))."""
        p = self.dropout if self.training else 0.0
        q4, k4, v4, m4 = self._block_inputs(q, kp, vp, mp, sparse, kg, vg, *windows)
        b, h, length, d = q.shape
        blocks = q4.shape[1] // h
        if p > 0 and q.device.type == "cpu":
            # torch's CPU SDPA has no fused kernel with dropout (its math path draws the mask with
            # bernoulli_, a quarter of an LSG training step): the same attention, with a cheaper mask.
            flat = [x.flatten(0, 1) for x in (q4, k4, v4)]
            drop, scale = drop_mask((b * h * blocks, q4.shape[2], k4.shape[2]), p, q.device)
            out = DroppedSoftmax.apply(*flat, ~m4.flatten(0, 1), drop, scale)
        else:
            out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=m4, dropout_p=p)
        return out.reshape(b, h, length, d)

    def _block_inputs(self, q, kp, vp, mp, sparse, kg, vg, *windows):
        """:meth:`_blocks`' inputs as SDPA takes them, blocks folded into the head axis (4-D inputs take
        torch's fused kernels; 5-D ones fall back to the math path, 3-4x slower on CPU): queries
        (B, H·nb, bs, D), every block's keys and values (B, H·nb, K, D) and key mask (B, H·nb, 1, K)."""
        b, h, length, d = q.shape
        blocks = length // self.settings.block_size
        sk, sv, sm = windows[:sparse], windows[sparse : 2 * sparse], windows[2 * sparse :]
        keys = self._per_block(kp, kg, sk)  # (B, H, nb, K, D)
        values = self._per_block(vp, vg, sv)
        masks = self._per_block(mp, torch.ones_like(mp[:, :, : kg.shape[2]]), sm)[..., 0]  # (B, 1|H, nb, K)
        k4, v4 = keys.view(b, h * blocks, -1, d), values.view(b, h * blocks, -1, d)
        m4 = masks.expand(b, h, blocks, -1).reshape(b, h * blocks, 1, -1)
        return q.reshape(b, h * blocks, -1, d), k4, v4, m4

    def _per_block(self, xp, xg, sparse):
        """What every block attends to, as one tensor (B, H, nb, K, D): globals | sparse windows (left,
        right) | previous, own and next block. ``xp`` is padded with one zero block at each end.

        One ``cat`` of views writes it (in-place slice writes would cost a full copy each in backward). Works
        for keys, values and masks (as (B, 1 or H, L, 1) bool, the zeros meaning "masked").
        """
        b, h, n, d = xp.shape
        bs = self.settings.block_size
        nb, g = n // bs - 2, xg.shape[2]
        h = max(h, *(p.shape[1] for p in sparse)) if sparse else h
        local = _windows(xp, 3 * bs, bs)  # (B, H, nb, 3·bs, D): previous, own and next block
        parts = [xg[:, :, None].expand(b, h, nb, g, d), *sparse, local]
        return torch.cat([x.expand(b, h, nb, -1, d) for x in parts], dim=3)

    def _compress(self, bos, k, v, m):
        """The compressed sequence: one token per ``sparsity_factor`` tokens (paper sec. 3.2).

        ``bos`` (B, H, 1, D) is the query of the first real token, which ``bos_pooling`` weighs with.
        """
        s = self.settings
        f = s.sparsity_factor
        if f == 1:
            return k, v, m[:, None]
        b, h, n, d = k.shape
        kind = s.sparsity_type
        if kind == "norm":
            return _norm_select(k, v, m, min(s.block_size, s.sparse_block_size), f)
        if kind == "pooling":
            w = m.view(b, 1, n // f, f, 1).to(k.dtype)  # average of the real tokens of each group
            count = w.sum(dim=3)
            ks, vs = ((x.view(b, h, n // f, f, d) * w).sum(3) / count.clamp(min=1) for x in (k, v))
            return ks, vs, (count[..., 0] > 0)
        if kind == "bos_pooling":
            # Each group is averaged with the weights the BOS query gives its keys (softmax within the group),
            # as the published code does (the query of the first token after the globals).
            scores = (bos @ k.transpose(-1, -2) / math.sqrt(d)).view(b, h, n // f, f)
            mg = m.view(b, 1, n // f, f)
            w = scores.masked_fill(~mg, torch.finfo(scores.dtype).min).softmax(dim=-1)[..., None, :]
            ks, vs = ((w @ x.view(b, h, n // f, f, d)).squeeze(3) for x in (k, v))
            return ks, vs, mg.any(dim=-1)
        if kind in ("stride", "block_stride"):
            idx = _stride_index(kind, n, h, f, s.block_size, k.device)  # (H, L/f) token per compressed slot
            ks, vs = (x.gather(2, idx[None, :, :, None].expand(b, h, -1, d)) for x in (k, v))
            return ks, vs, m[:, idx]  # (B, H, L/f)
        return _lsh_compress(k, v, m, min(s.block_size, s.sparse_block_size), f, s.lsh_num_pre_rounds)


class _Chunked(torch.autograd.Function):
    """:meth:`LSGAttention._chunk` over all blocks, ``step`` blocks at a time, keeping only its inputs: the
    backward rebuilds each chunk from its rows (same dropout, from the forward's random state) and adds
    their gradients into one buffer per input, so no chunk's windows or padded copies outlive it."""

    @staticmethod
    def forward(ctx, att, blocks, step, q, k, v, m, kg, vg, *sparse):
        ctx.att, ctx.blocks, ctx.step = att, blocks, step
        ctx.save_for_backward(q, k, v, m, kg, vg, *sparse)
        ctx.rng = torch.get_rng_state()
        chunks = [
            att._chunk(i, min(blocks, i + step), q, k, v, m, kg, vg, *sparse) for i in range(0, blocks, step)
        ]
        return torch.cat(chunks, dim=2)

    @staticmethod
    def backward(ctx, grad):
        att, blocks, step = ctx.att, ctx.blocks, ctx.step
        q, k, v, m, kg, vg, *sparse = ctx.saved_tensors
        bs = att.settings.block_size
        buffers = _gradient_buffers(q, k, v, kg, vg, sparse)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(ctx.rng)  # dropout masks as in the forward, chunk after chunk
            for i in range(0, blocks, step):
                stop = min(blocks, i + step)
                where, leaves, out = _rebuild(att, i, stop, q, k, v, m, kg, vg, sparse)
                got = torch.autograd.grad(out, leaves, grad[:, :, i * bs : stop * bs], allow_unused=True)
                _add_into(where, buffers, got)
        return _gradients(buffers, sparse)


def _needs_grad(*xs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _fused_cpu_kernel() -> bool:
    """Whether SDPA would take its fused CPU kernel, so :class:`_FusedChunks` may call it directly: the flash
    flag allows it (``sdpa_kernel(SDPBackend.MATH)`` clears it) and no CPU autocast is on (SDPA casts its
    inputs under autocast; the kernel called directly would not)."""
    return torch.backends.cuda.flash_sdp_enabled() and not torch.is_autocast_enabled("cpu")


def _bias(m4: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean key mask as the additive one SDPA hands its fused CPU kernel (-inf where False)."""
    return torch.zeros(m4.shape, dtype=dtype, device=m4.device).masked_fill_(~m4, -math.inf)


class _FusedChunks(torch.autograd.Function):
    """:meth:`LSGAttention._chunk` over all blocks without dropout on CPU, ``step`` blocks at a time, keeping
    only its inputs and each chunk's output and log-sum-exp: SDPA's autograd would keep every block's key and
    value windows (about 5x the keys and values) and the padded copies they are cut from. The backward cuts
    each chunk's windows again (copies, no arithmetic) and calls torch's fused CPU kernel's own backward, so
    no attention is recomputed; each chunk's gradients are added into one buffer per input."""

    @staticmethod
    def forward(ctx, att, blocks, step, q, k, v, m, kg, vg, *sparse):
        ctx.att, ctx.blocks, ctx.step = att, blocks, step
        outs, stats = [], []

        def attend(*inputs):
            q4, k4, v4, m4 = att._block_inputs(*inputs)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q4, k4, v4, attn_mask=_bias(m4, q4.dtype)
            )
            outs.append(out)
            stats.append(lse)
            return out.reshape(inputs[0].shape)

        chunks = [
            att._chunk(i, min(blocks, i + step), q, k, v, m, kg, vg, *sparse, attend=attend)
            for i in range(0, blocks, step)
        ]
        ctx.save_for_backward(q, k, v, m, kg, vg, *sparse, *outs, *stats)
        ctx.inputs = 6 + len(sparse)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        att, blocks, step = ctx.att, ctx.blocks, ctx.step
        saved = ctx.saved_tensors
        q, k, v, m, kg, vg, *sparse = saved[: ctx.inputs]
        chunks = len(range(0, blocks, step))
        outs, stats = saved[ctx.inputs : ctx.inputs + chunks], saved[ctx.inputs + chunks :]
        bs = att.settings.block_size
        buffers = _gradient_buffers(q, k, v, kg, vg, sparse)
        built = []

        def cut(*inputs):  # the chunk's windows, with their graph back to the leaves
            built.append(att._block_inputs(*inputs))
            return inputs[0]

        for c, i in enumerate(range(0, blocks, step)):
            stop = min(blocks, i + step)
            where, leaves, _ = _rebuild(att, i, stop, q, k, v, m, kg, vg, sparse, attend=cut)
            q4, k4, v4, m4 = built.pop()
            g4 = grad[:, :, i * bs : stop * bs].reshape(q4.shape)
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                g4, q4.detach(), k4.detach(), v4.detach(), outs[c], stats[c], 0.0, False,
                attn_mask=_bias(m4, q4.dtype),
            )  # fmt: skip
            _add_into(
                where, buffers, torch.autograd.grad([q4, k4, v4], leaves, [dq, dk, dv], allow_unused=True)
            )
        return _gradients(buffers, sparse)


def _rebuild(att, first, stop, q, k, v, m, kg, vg, sparse, attend=None):
    """Blocks ``first`` … ``stop - 1`` of a chunked function's inputs again, with a graph: from leaves detached
    from the chunk's rows (:meth:`LSGAttention._rows`). Returns (rows, leaves, the chunk's output)."""
    where = att._rows(first, stop, q.shape[2])
    _, keys, slots = where
    leaves = [x.detach().requires_grad_() for x in _at(where, q, k, v, kg, vg, *sparse[:2])]
    lq, lk, lv, lkg, lvg, *ls = leaves
    ms = (sparse[2][:, :, slots],) if sparse else ()
    with torch.enable_grad():
        out = att._chunk_of(
            first, stop, q.shape[2], lq, lk, lv, m[:, :, keys], lkg, lvg, *ls, *ms, attend=attend
        )
    return where, leaves, out


def _gradient_buffers(q, k, v, kg, vg, sparse) -> list[torch.Tensor]:
    """Zeros for the gradients of q, k, v, the globals and the compressed keys and values (not the mask)."""
    return [torch.zeros_like(x) for x in (q, k, v, kg, vg, *sparse[:2])]


def _add_into(where, buffers: list[torch.Tensor], grads) -> None:
    """Add one chunk's gradients (of its rows ``where``) into the full buffers."""
    for buf, gx in zip(_at(where, *buffers), grads, strict=True):
        if gx is not None:
            buf += gx


def _gradients(buffers: list[torch.Tensor], sparse) -> tuple:
    """A chunked function's backward result: gradients of (q, k, v, m, kg, vg, *sparse), None elsewhere."""
    gq, gk, gv, gkg, gvg, *gsparse = buffers
    return None, None, None, gq, gk, gv, None, gkg, gvg, *gsparse, *((None,) if sparse else ())


def drop_mask(shape, p: float, device) -> tuple[torch.Tensor, float]:
    """A dropout mask (True: dropped) of rate ``p`` rounded to a multiple of 2^-15, and the scale of the kept
    values, 1 / (1 - rounded rate), so that the expectation stays exact.

    Four draws come from each 64-bit integer of torch's generator (reproducible under ``torch.manual_seed``
    and ``get_rng_state``), one comparison each: about a third of ``bernoulli_``'s time on CPU. ``random_``
    draws 63 bits, so three of the 16-bit quarters are uniform on [-2^15, 2^15) and the top one on [0, 2^15).
    """
    count = math.prod(shape)
    threshold = round(p * (1 << 15))
    if threshold >= 1 << 15:
        return torch.ones(shape, dtype=torch.bool, device=device), 0.0
    words = torch.empty(-(-count // 4), dtype=torch.int64, device=device).random_()
    limits = [2 * threshold - (1 << 15)] * 4
    limits[3 if sys.byteorder == "little" else 0] = threshold
    limits = torch.tensor(limits, dtype=torch.int16, device=device)
    drop = (words.view(torch.int16).view(-1, 4) < limits).view(-1)[:count].view(shape)
    return drop, 1 / (1 - threshold / (1 << 15))


class DroppedSoftmax(torch.autograd.Function):
    """``scale · (softmax(q·kᵀ/√d) ⊙ keep) · v`` on (N, rows, D) batches: attention with dropout for a
    given ``drop`` mask (N, rows, keys) and ``scale`` of the kept probabilities (:func:`drop_mask`), keys
    where ``hidden`` (N, 1, keys) is True left out. SDPA's math path written out, with two passes fewer
    over the probabilities: the backward needs only the probabilities and the kept ones, which it keeps.
    """

    @staticmethod
    def forward(ctx, q, k, v, hidden, drop, scale):
        q = q * (1 / math.sqrt(q.shape[-1]))
        scores = torch.bmm(q, k.transpose(1, 2)).masked_fill_(hidden, torch.finfo(q.dtype).min)
        probs = scores.softmax(dim=-1)
        del scores
        kept = torch.where(drop, 0.0, probs)
        ctx.save_for_backward(q, k, v, probs, kept)
        ctx.scale = scale
        return torch.bmm(kept, v).mul_(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, probs, kept = ctx.saved_tensors  # q already divided by √d
        grad = grad * ctx.scale
        gv = torch.bmm(kept.transpose(1, 2), grad)
        # d(scores) = probs ⊙ (d probs - Σ probs ⊙ d probs), where d probs = keep ⊙ (grad · vᵀ): with
        # t = kept ⊙ (grad · vᵀ) that is t - probs · Σ t (dropped and hidden keys give 0).
        t = torch.bmm(grad, v.transpose(1, 2)).mul_(kept)
        gs = t.addcmul_(probs, t.sum(dim=-1, keepdim=True), value=-1)
        gq = torch.bmm(gs, k).mul_(1 / math.sqrt(q.shape[-1]))
        return gq, torch.bmm(gs.transpose(1, 2), q), gv, None, None, None


def _at(where, q, k, v, kg, vg, *compressed):
    """One chunk's rows (:meth:`LSGAttention._rows`) of its inputs, or of their gradient buffers."""
    rows, keys, slots = where
    return [q[:, :, rows], k[:, :, keys], v[:, :, keys], kg, vg, *(x[:, :, slots] for x in compressed)]


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D) reordered along N by idx (B, N)."""
    return x.gather(2, idx[:, None, :, None].expand_as(x))


def _right_align_order(mask: torch.Tensor) -> torch.Tensor | None:
    """None when every row is already real-then-padding; else the stable order putting real tokens first."""
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return None
    return real_first_order(mask)


def _windows(x: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """Overlapping windows along the length: (B, H, L, D) → (B, H, windows, size, D)."""
    return x.unfold(2, size, step).transpose(-1, -2)


def _norm_select(k, v, m, chunk, f):
    """Per chunk of ``chunk`` keys, the ``chunk / f`` keys of largest norm (padding counts as norm 0),
    in increasing norm as in the published code."""
    b, h, n, d = k.shape
    with torch.no_grad():
        norms = k.detach().norm(dim=-1) * m[:, None]  # (B, H, L)
        norms = norms.view(b, h, n // chunk, chunk)
        if exporting():  # ONNX has no stable sort; which slot a kept key takes never changes the attention
            order = norms.topk(chunk // f, dim=-1).indices
        else:
            order = norms.argsort(dim=-1, stable=True)[..., -(chunk // f) :]
        idx = (order + torch.arange(0, n, chunk, device=k.device)[:, None]).reshape(b, h, -1)  # (B, H, L/f)
    ks, vs = (x.gather(2, idx[..., None].expand(-1, -1, -1, d)) for x in (k, v))
    return ks, vs, m[:, None].expand(b, h, n).gather(2, idx)


def _stride_index(kind: str, n: int, h: int, f: int, block: int, device) -> torch.Tensor:
    """Token kept in each compressed slot, per head: ``stride`` takes every f-th token from offset
    ``head % f``; ``block_stride`` takes, in each block, the contiguous ``block / f`` tokens starting at
    ``head · block / f`` (mod block)."""
    heads = torch.arange(h, device=device)[:, None]
    if kind == "stride":
        return torch.arange(0, n, f, device=device)[None] + heads % f  # (H, L/f)
    step = block // f
    within = (torch.arange(step, device=device)[None] + heads * step) % block  # (H, step)
    starts = torch.arange(0, n, block, device=device)  # (L/block,)
    return (starts[None, :, None] + within[:, None, :]).reshape(h, -1)


def _lsh_compress(k, v, m, chunk, f, pre_rounds):
    """Per chunk, keys (and values) hashed to the same bucket by random projections are summed, then
    averaged; ``pre_rounds`` rounds into ``chunk`` buckets come before the final one into ``chunk / f``."""
    b, h, n, d = k.shape
    w = m.view(b, 1, n // chunk, chunk, 1).to(k.dtype)
    k, v = k.view(b, h, n // chunk, chunk, d) * w, v.view(b, h, n // chunk, chunk, d) * w
    count = w.expand(b, h, -1, -1, -1)
    for size in [chunk] * pre_rounds + [chunk // f]:
        k, v, count = _lsh_round(k, v, count, size)
    ks, vs = k / count.clamp(min=1e-8), v / count.clamp(min=1e-8)
    return ks.reshape(b, h, -1, d), vs.reshape(b, h, -1, d), (count.reshape(b, h, -1) > 0)


def _lsh_round(k, v, count, buckets):
    b, h, c, t, d = k.shape
    with torch.no_grad():  # bucket = argmax of [xR, -xR] over buckets/2 random directions R
        if buckets < 2:
            code = torch.zeros(b, h, c, t, 1, dtype=torch.long, device=k.device)
        else:
            planes = torch.randn(1, h, 1, d, buckets // 2, device=k.device, dtype=k.dtype)
            proj = (F.normalize(k, dim=-1) * (count > 0)) @ planes  # (B, H, C, T, buckets/2)
            code = torch.cat([proj, -proj], dim=-1).argmax(dim=-1, keepdim=True)  # (B, H, C, T, 1)
    zeros = k.new_zeros(b, h, c, buckets, d)
    k2 = zeros.scatter_add(3, code.expand(-1, -1, -1, -1, d), k)
    v2 = zeros.scatter_add(3, code.expand(-1, -1, -1, -1, d), v)
    count2 = count.new_zeros(b, h, c, buckets, 1).scatter_add(3, code, count)
    return k2, v2, count2
