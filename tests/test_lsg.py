"""LSG attention: against a straightforward dense-mask version of the published algorithm, against softmax
when the windows cover the sequence, under padding, and through LSG checkpoints in RoBERTa format."""

import functools
import json
import math

import pytest
import torch
from torch.testing import assert_close

from longattn_cli.attention import build_attention, make_settings
from longattn_cli.errors import UserError
from longattn_cli.models.checkpoints import load_model
from longattn_cli.testing import tiny_lsg_checkpoint, tiny_reference

DETERMINISTIC = ["norm", "pooling", "bos_pooling", "stride", "block_stride", "none"]


# ---------------------------------------------------------------------------------------------------------
# Reference: the published algorithm written out plainly, one row and one head at a time. It lists the
# compressed sequence token by token, then builds for every query the explicit set of keys it may see
# (globals, the three local blocks, sparse_block_size compressed tokens on each side of them) and runs a
# masked softmax over [globals, tokens, compressed tokens]. Rows are right-padded, as the published code
# (which pads at the end and aligns blocks at position 0) expects.
# ---------------------------------------------------------------------------------------------------------


def ref_compressed(kind, q0, k, v, real, s, head):
    """One head's compressed sequence as (keys, values, real) of length L / sparsity_factor."""
    bs, sbs, f = s["block_size"], s["sparse_block_size"], s["sparsity_factor"]
    length, d = k.shape
    if f == 1:
        return k, v, real
    rows = []
    if kind == "norm":  # per chunk of min(bs, sbs): the chunk/f keys of largest norm, in increasing norm
        c = min(bs, sbs)
        for start in range(0, length, c):
            norms = [float(k[start + i].norm()) * bool(real[start + i]) for i in range(c)]
            for i in sorted(range(c), key=lambda i: norms[i])[-(c // f) :]:
                rows.append((k[start + i], v[start + i], bool(real[start + i])))
    elif kind in ("pooling", "bos_pooling"):
        for start in range(0, length, f):
            js = [j for j in range(start, start + f) if real[j]]
            if not js:
                rows.append((torch.zeros(d), torch.zeros(d), False))
                continue
            if kind == "pooling":
                w = torch.full((len(js),), 1 / len(js))
            else:  # weights: the BOS query's softmax over the group's real keys (first token after the globals)
                w = torch.softmax(torch.stack([q0 @ k[j] / math.sqrt(d) for j in js]), 0)
            rows.append(
                (
                    sum(wi * k[j] for wi, j in zip(w, js, strict=True)),
                    sum(wi * v[j] for wi, j in zip(w, js, strict=True)),
                    True,
                )
            )
    elif kind == "stride":  # every f-th token, starting at head % f
        for j in range(length // f):
            t = j * f + head % f
            rows.append((k[t], v[t], bool(real[t])))
    elif kind == "block_stride":  # in each block, block/f consecutive tokens starting at head·block/f
        step = bs // f
        for blk in range(length // bs):
            for i in range(step):
                t = blk * bs + (i + head * step) % bs
                rows.append((k[t], v[t], bool(real[t])))
    ks, vs, rs = zip(*rows, strict=True)
    return torch.stack(ks), torch.stack(vs), torch.tensor(rs)


def ref_lsg(q, k, v, mask, s):
    """q, k, v: (H, N, D) one right-padded row with the globals first; mask (N,) bool. Returns (H, N, D)."""
    g, bs, sbs, f, kind = (
        s[x]
        for x in ("num_global_tokens", "block_size", "sparse_block_size", "sparsity_factor", "sparsity_type")
    )
    h, n, d = q.shape
    mask = mask.clone()
    if s.get("mask_first_token"):
        mask[g] = False
    length = n - g
    if length <= 2 * bs:  # full attention
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v
    lp = -(-length // bs) * bs
    q, k, v = (torch.cat([x, torch.zeros(h, lp - length, d)], 1) for x in (q, k, v))
    mask = torch.cat([mask, torch.zeros(lp - length, dtype=torch.bool)])
    step = bs // f
    out = torch.zeros(h, g + lp, d)
    blocks = torch.arange(lp) // bs
    for hd in range(h):
        if kind != "none" and sbs > 0:
            ck, cv, creal = ref_compressed(kind, q[hd, g], k[hd, g:], v[hd, g:], mask[g:], s, hd)
        else:
            ck, cv, creal = torch.zeros(0, d), torch.zeros(0, d), torch.zeros(0, dtype=torch.bool)
        keys, values, real = torch.cat([k[hd], ck]), torch.cat([v[hd], cv]), torch.cat([mask, creal])
        allowed = torch.zeros(g + lp, g + lp + len(ck), dtype=torch.bool)
        allowed[:g, : g + lp] = True  # global queries: every token
        allowed[g:, :g] = True  # every query: the globals
        allowed[g:, g : g + lp] = (blocks[:, None] - blocks[None, :]).abs() <= 1  # previous, own, next block
        p, bi = torch.arange(len(ck))[None, :], blocks[:, None]  # compressed position, query's block
        left = ((bi - 1) * step - sbs <= p) & (p < (bi - 1) * step)  # the sbs just before the local window
        right = ((bi + 2) * step <= p) & (p < (bi + 2) * step + sbs)  # the sbs just after it
        allowed[g:, g + lp :] = left | right
        scores = (q[hd] @ keys.T / math.sqrt(d)).masked_fill(~(allowed & real), float("-inf"))
        out[hd] = scores.softmax(-1) @ values
    return out[:, : g + length]


def settings(**kw):
    base = dict(
        block_size=4, sparse_block_size=4, sparsity_factor=2, sparsity_type="norm", num_global_tokens=2
    )
    return make_settings("lsg", base | kw).to_dict()


def qkv(b, n, h=3, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen) for _ in range(3)]


CASES = [
    dict(),
    dict(sparse_block_size=2),  # fewer compressed tokens than a block holds
    dict(block_size=8, sparse_block_size=6, sparsity_factor=4),  # sparse window not a multiple of the step
    dict(sparsity_factor=1),  # the compressed sequence is the sequence itself
    dict(mask_first_token=True),
    dict(num_global_tokens=1, sparse_block_size=8),
]


@pytest.mark.parametrize("kind", DETERMINISTIC)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_dense_mask_reference(kind, case):
    kw = dict(CASES[case])
    if kind == "norm" and kw.get("sparse_block_size") == 6:
        kw["sparse_block_size"] = 8  # norm needs chunks that divide the block
    s = settings(sparsity_type=kind, **kw)
    att = build_attention("lsg", s, 3, 8).eval()
    g = s["num_global_tokens"]
    q, k, v = qkv(2, g + 37)
    mask = torch.ones(2, g + 37, dtype=torch.bool)
    mask[1, g + 23 :] = False  # right padding, as tokenizers pad
    with torch.no_grad():
        ours = att(q, k, v, mask)
    for row in range(2):
        want = ref_lsg(q[row], k[row], v[row], mask[row], s)
        real = mask[row]
        assert_close(ours[row][:, real], want[:, real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["norm", "pooling"])
def test_windows_covering_the_sequence_equal_softmax(kind):
    # sparsity_factor=1 makes the compressed tokens the tokens themselves; with sparse_block_size as long as
    # the input, every query sees every token exactly once (globals, local blocks, the rest as "sparse").
    g, n = 2, 45
    att = build_attention(
        "lsg", settings(sparsity_type=kind, sparsity_factor=1, sparse_block_size=64), 3, 8
    ).eval()
    soft = build_attention("softmax", {}, 3, 8).eval()
    q, k, v = qkv(2, g + n)
    mask = torch.ones(2, g + n, dtype=torch.bool)
    mask[0, g + 30 :] = False
    with torch.no_grad():
        assert_close(
            att(q, k, v, mask)[mask[:, None].expand(-1, 3, -1)],
            soft(q, k, v, mask)[mask[:, None].expand(-1, 3, -1)],
            rtol=1e-5,
            atol=1e-5,
        )


def test_short_inputs_are_full_attention():
    att = build_attention("lsg", settings(), 3, 8).eval()
    soft = build_attention("softmax", {}, 3, 8).eval()
    q, k, v = qkv(1, 2 + 8)  # two blocks of 4 plus 2 globals
    with torch.no_grad():
        assert_close(att(q, k, v, None), soft(q, k, v, None), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", DETERMINISTIC + ["lsh"])
def test_padding_never_changes_real_tokens(kind):
    g, n = 2, 29
    att = build_attention("lsg", settings(sparsity_type=kind, mask_first_token=True), 3, 8).eval()
    q, k, v = qkv(1, g + n)
    for where, before, after in [("right", 0, 14), ("left", 14, 0), ("both", 5, 9)]:
        junk = [torch.randn(1, 3, before + after, 8) * 50 for _ in range(3)]
        padded = [
            torch.cat([x[:, :, :g], j[:, :, :before], x[:, :, g:], j[:, :, before:]], 2)
            for x, j in zip((q, k, v), junk, strict=True)
        ]
        mask = torch.cat([torch.ones(g), torch.zeros(before), torch.ones(n), torch.zeros(after)]).bool()[None]
        torch.manual_seed(0)
        with torch.no_grad():
            alone = att(q, k, v, None)
            torch.manual_seed(0)
            got = att(*padded, mask)
        assert_close(got[:, :, mask[0]], alone, rtol=1e-5, atol=1e-5, msg=where)
    # Padding in the middle, and a short row (full attention alone) batched with a long one.
    mask = torch.ones(2, g + 40, dtype=torch.bool)
    mask[0, g + 5 : g + 16] = False
    mask[1, g + 7 :] = False
    q2, k2, v2 = qkv(2, g + 40, seed=1)
    with torch.no_grad():
        torch.manual_seed(0)
        both = att(q2, k2, v2, mask)
        for row in range(2):
            idx = mask[row].nonzero()[:, 0]
            torch.manual_seed(0)
            alone = att(q2[row : row + 1, :, idx], k2[row : row + 1, :, idx], v2[row : row + 1, :, idx], None)
            assert_close(both[row : row + 1, :, idx], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", DETERMINISTIC)
@pytest.mark.parametrize("chunk", [1, 3])  # bytes: one block per chunk, and chunks of several blocks
def test_long_inputs_train_in_recomputed_chunks_with_the_same_answer(kind, chunk, monkeypatch):
    """Above the window budget the blocks run in chunks whose windows are rebuilt in the backward: the same
    outputs and gradients as all blocks at once, with padding in the middle."""
    att = build_attention("lsg", settings(sparsity_type=kind), 3, 8)
    q, k, v = qkv(2, 2 + 45, seed=2)
    mask = torch.ones(2, 47, dtype=torch.bool)
    mask[1, 20:26] = False
    results = []
    for budget in (None, 0):
        if budget is not None:
            per_block = 2 * 3 * 2 * (2 + 12 + 8) * 8 * 4  # b·h·K·d·4 bytes for keys and values
            monkeypatch.setattr("longattn_cli.attention.lsg._WINDOW_BUDGET", budget)
            monkeypatch.setattr("longattn_cli.attention.lsg._CHUNK_BUDGET", chunk * per_block)
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = att(*xs, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), *(x.grad for x in xs)])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["norm", "pooling", "none"])
@pytest.mark.parametrize("chunk", [1, 3, 100])  # blocks per chunk
def test_training_keeps_the_inputs_not_the_windows(kind, chunk, monkeypatch):
    """Without dropout on CPU the blocks' attention keeps its inputs and each chunk's output and log-sum-exp,
    not the windows (about 5x the keys and values) nor the padded copies they are cut from, and calls the
    fused kernel's own backward: the same outputs and gradients as SDPA's autograd over all blocks' windows
    at once, with fewer bytes saved for the backward (at 4,096 tokens the windows are most of them)."""
    from longattn_cli.attention import lsg

    att = build_attention("lsg", settings(sparsity_type=kind), 3, 8).train()
    per_block = 2 * 3 * 2 * (2 + 12 + 8) * 8 * 4  # b·h·K·d·4 bytes for keys and values
    monkeypatch.setattr(lsg, "_CHUNK_BUDGET", chunk * per_block)
    q, k, v = qkv(2, 2 + 45, seed=4)
    mask = torch.ones(2, 47, dtype=torch.bool)
    mask[1, 30:] = False
    results, saved = [], []
    for route in ("fused chunks", "sdpa"):
        if route == "sdpa":
            monkeypatch.setattr(
                lsg._FusedChunks, "apply", lambda a, blocks, step, *xs: a._chunk(0, blocks, *xs)
            )
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        sizes = _saved_bytes(functools.partial(att, *xs, mask))
        out = sizes.pop()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), *(x.grad for x in xs)])
        saved.append(sum(sizes))
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert saved[0] < 0.8 * saved[1]


def _saved_bytes(fn) -> list:
    """Bytes of each tensor ``fn`` saves for the backward, then its output."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return [*sizes, out]


def test_training_under_cpu_autocast_runs_in_bf16():
    """Under CPU autocast the blocks go through SDPA, which casts to bf16, not the fused kernel called
    directly (which would stay in fp32)."""
    att = build_attention("lsg", settings(), 3, 8).train()
    q, k, v = (x.requires_grad_() for x in qkv(1, 2 + 45))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = att(q, k, v, None)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all()


def test_lsh_sums_keys_into_buckets_and_trains():
    att = build_attention("lsg", settings(sparsity_type="lsh", lsh_num_pre_rounds=2), 3, 8).train()
    q, k, v = (x.requires_grad_() for x in qkv(2, 2 + 50))
    out = att(q, k, v, None)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_adaptive_false_needs_block_multiples():
    att = build_attention("lsg", settings(adaptive=False), 3, 8).eval()
    q, k, v = qkv(1, 2 + 16)
    att(q, k, v, None)  # a multiple of the block size works
    q, k, v = qkv(1, 2 + 17)
    with pytest.raises(UserError, match="adaptive=false needs a length that is a multiple of block_size=4"):
        att(q, k, v, None)


@pytest.mark.parametrize(
    "values,pattern",
    [
        (dict(block_size=6, sparsity_factor=4), "block_size=6 is not divisible by sparsity_factor=4"),
        (dict(sparsity_type="dense"), "sparsity_type='dense' is not one of norm, pooling, lsh"),
        (dict(num_global_tokens=0), "num_global_tokens=0 must be between 1 and 512"),
        (
            dict(mask_first_token=True, pool_with_global=False),
            "mask_first_token=True needs pool_with_global=True",
        ),
        (dict(block_size=8, sparse_block_size=3), "must divide block_size=8"),
    ],
)
def test_bad_settings(values, pattern):
    with pytest.raises(UserError, match=pattern):
        make_settings("lsg", values)


# ---------------------------------------------------------------------------------------------------------
# LSG checkpoints in the published format: config model_type "roberta" + auto_map + LSG fields, and a 512-row
# roberta.embeddings.global_embeddings.weight. The reference encoder below runs transformers' own RoBERTa
# sub-modules on the same weights with ref_lsg as the self-attention: global embeddings get no position or
# token-type embedding and share the embedding LayerNorm; pool_with_global copies the first global token's
# output onto the first token.
# ---------------------------------------------------------------------------------------------------------


def ref_lsg_model(ref, global_table, s, ids, attention_mask):
    r = ref.roberta
    pad = ref.config.pad_token_id
    g = s["num_global_tokens"]
    positions = torch.cumsum(attention_mask, 1) * attention_mask + pad
    x = (
        r.embeddings.word_embeddings(ids)
        + r.embeddings.position_embeddings(positions)
        + r.embeddings.token_type_embeddings(torch.zeros_like(ids))
    )
    x = torch.cat([global_table[:g].expand(ids.shape[0], -1, -1), x], 1)
    x = r.embeddings.LayerNorm(x)
    mask = torch.cat([torch.ones(ids.shape[0], g), attention_mask], 1).bool()
    heads = ref.config.num_attention_heads
    for layer in r.encoder.layer:
        sa = layer.attention.self
        b, n, c = x.shape
        q, k, v = (t(x).view(b, n, heads, c // heads).transpose(1, 2) for t in (sa.query, sa.key, sa.value))
        a = (
            torch.stack([ref_lsg(q[i], k[i], v[i], mask[i], s) for i in range(b)])
            .transpose(1, 2)
            .reshape(b, n, c)
        )
        x = layer.attention.output(a, x)
        x = layer.output(layer.intermediate(x), x)
    if s["pool_with_global"]:
        x[:, g] = x[:, 0]
    return ref.lm_head(x[:, g:])


@pytest.mark.parametrize(
    "lsg",
    [
        dict(sparsity_type="norm"),
        dict(sparsity_type="bos_pooling"),
        dict(sparsity_type="pooling", num_global_tokens=3),
        dict(sparsity_type="stride", mask_first_token=True),
        dict(sparsity_type="block_stride", pool_with_global=False),
    ],
)
def test_published_lsg_checkpoint_matches_reference(lsg, tmp_path, bpe_dir):
    from transformers import AutoTokenizer

    lsg = (
        dict(
            block_size=8,
            sparse_block_size=8,
            sparsity_factor=2,
            num_global_tokens=2,
            adaptive=True,
            mask_first_token=False,
            pool_with_global=True,
        )
        | lsg
    )
    ref, table = tiny_lsg_checkpoint(tmp_path, bpe_dir, **lsg)
    ours = load_model(str(tmp_path))
    assert ours.config.attention == "lsg"
    assert ours.config.attention_settings["sparsity_type"] == lsg["sparsity_type"]
    assert ours.longattn.embeddings.global_embeddings.weight.shape[0] == lsg["num_global_tokens"]
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    texts = [
        "Attribute references are resolved by looking the name up in the class dictionary of the object, "
        * 2,
        "A short one.",
    ]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] > 2 * lsg["block_size"] + 8
    with torch.no_grad():
        mine = ours(**enc).logits
        want = ref_lsg_model(
            ref, table, make_settings("lsg", lsg).to_dict(), enc["input_ids"], enc["attention_mask"]
        )
    m = enc["attention_mask"].bool()
    assert_close(mine[m], want[m], rtol=1e-4, atol=1e-4)


def test_unknown_remote_code_is_refused(tmp_path, bpe_dir):
    tiny_reference("roberta", tmp_path, "ForMaskedLM", tokenizer_dir=bpe_dir)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForMaskedLM": "modeling_x.XForMaskedLM"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="custom model code .*modeling_x.XForMaskedLM"):
        load_model(str(tmp_path))


def test_dense_checkpoint_with_lsg_attention_points_to_convert(tmp_path, bpe_dir):
    tiny_reference("roberta", tmp_path, "ForMaskedLM", tokenizer_dir=bpe_dir)
    with pytest.raises(UserError, match="no global token embeddings.*longattn convert"):
        load_model(str(tmp_path), attention="lsg")


@pytest.mark.parametrize("kind", ["norm", "bos_pooling"])
def test_lsg_model_left_and_right_padding(kind):
    from longattn_cli.models.modeling import LongAttnConfig, LongAttnForMaskedLM

    torch.manual_seed(0)
    cfg = LongAttnConfig(
        vocab_size=90,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=80,
        attention="lsg",
        attention_settings=settings(sparsity_type=kind, mask_first_token=True, num_global_tokens=2),
    )
    model = LongAttnForMaskedLM(cfg).eval()
    ids = torch.randint(5, 90, (1, 27))
    pad = torch.full((1, 9), 1)
    ones, zeros = torch.ones(1, 27), torch.zeros(1, 9)
    with torch.no_grad():
        alone = model(ids).logits
        right = model(torch.cat([ids, pad], 1), attention_mask=torch.cat([ones, zeros], 1)).logits
        left = model(torch.cat([pad, ids], 1), attention_mask=torch.cat([zeros, ones], 1)).logits
    assert_close(right[:, :27], alone, rtol=1e-5, atol=1e-5)
    assert_close(left[:, 9:], alone, rtol=1e-5, atol=1e-5)


def test_recomputed_chunks_replay_the_forwards_dropout():
    """With attention dropout the backward rebuilds each chunk with the forward's masks: the gradients are
    those of the same chunks kept by autograd."""
    from longattn_cli.attention.lsg import _Chunked

    att = build_attention("lsg", settings(), 3, 8, dropout=0.5).train()
    q, k, v = (x[:, :, 2:] for x in qkv(1, 2 + 40, seed=4))
    kg, vg = (x[:, :, :2] for x in qkv(1, 2, seed=5)[:2])
    m = torch.ones(1, 1, 40, 1, dtype=torch.bool)
    ks, vs, ms = att._compress(q[:, :, :1], k, v, m[:, 0, :, 0])
    sparse = [att._pad_compressed(x) for x in (ks, vs, ms[..., None])]
    results = []
    for chunked in (False, True):
        xs = [x.clone().requires_grad_(True) for x in (q, k, v, kg, vg, *sparse[:2])]
        torch.manual_seed(0)
        if chunked:
            out = _Chunked.apply(att, 10, 3, *xs[:3], m, *xs[3:5], *xs[5:], sparse[2])
        else:
            parts = [
                att._chunk(i, min(10, i + 3), *xs[:3], m, *xs[3:5], *xs[5:], sparse[2])
                for i in range(0, 10, 3)
            ]
            out = torch.cat(parts, dim=2)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), *(x.grad for x in xs)])
    assert results[0][0].ne(0).any()
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Attention dropout on CPU: the blocks run through DroppedSoftmax with masks from drop_mask (torch's CPU
# SDPA has no fused kernel with dropout).
# ---------------------------------------------------------------------------------------------------------


def test_dropped_softmax_is_dropout_of_the_softmax_with_exact_gradients():
    """Against dropout written out with the same mask, hidden keys included; gradients by gradcheck."""
    from longattn_cli.attention.lsg import DroppedSoftmax, drop_mask

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, rows, 3, dtype=torch.float64, generator=gen) for rows in (4, 7, 7))
    hidden = torch.rand(5, 1, 7, generator=gen) < 0.3
    hidden[:, :, 0] = False  # every row sees a key
    torch.manual_seed(1)
    drop, scale = drop_mask((5, 4, 7), 0.3, "cpu")
    assert drop.any() and not drop.all()
    want = (q @ k.transpose(1, 2) / math.sqrt(3)).masked_fill(hidden, float("-inf")).softmax(-1)
    assert_close(DroppedSoftmax.apply(q, k, v, hidden, drop, scale), (want * ~drop * scale) @ v)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *x: DroppedSoftmax.apply(*x, hidden, drop, scale), inputs)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_masks_drop_at_the_rate_and_keep_the_expectation(p):
    from longattn_cli.attention.lsg import drop_mask

    torch.manual_seed(0)
    drop, scale = drop_mask((1000, 1001), p, "cpu")
    rate = 1 - 1 / scale  # the rate rounded to a multiple of 2^-15: the kept values' expectation is exact
    assert abs(rate - p) <= 2**-16
    assert abs(drop.double().mean().item() - rate) < 5 * math.sqrt(p * (1 - p) / drop.numel())
    # every quarter of a 64-bit draw drops at the same rate (three span 16 bits, the top one 15)
    quarters = drop.view(-1)[: 4 * (drop.numel() // 4)].view(-1, 4).double().mean(0)
    assert (quarters - rate).abs().max() < 5 * math.sqrt(p * (1 - p) / (drop.numel() / 4))
    torch.manual_seed(0)
    assert torch.equal(drop_mask((1000, 1001), p, "cpu")[0], drop)  # torch's generator: reproducible
    everything, zero = drop_mask((7,), 1.0, "cpu")
    assert everything.all() and zero == 0.0
    nothing, one = drop_mask((7,), 0.0, "cpu")
    assert not nothing.any() and one == 1.0


def test_training_with_dropout_that_drops_nothing_is_the_fused_route():
    """The CPU dropout route with a rate that rounds to zero gives the SDPA route's outputs and gradients
    (evaluation mode), with padding in the middle."""
    results = []
    for train in (True, False):
        att = build_attention("lsg", settings(), 3, 8, dropout=1e-6).train(train)
        q, k, v = (x.requires_grad_() for x in qkv(2, 2 + 45, seed=3))
        mask = torch.ones(2, 47, dtype=torch.bool)
        mask[1, 20:26] = False
        torch.manual_seed(0)  # the global queries' SDPA draws its own mask (at this rate: keeps everything)
        out = att(q, k, v, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), q.grad, k.grad, v.grad])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
