"""Nyströmformer attention: two routes to one answer, the approximation itself, and the published checkpoints."""

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from longattn_cli.attention import build_attention, make_settings
from longattn_cli.attention.nystrom import iterative_pinv, segment_ids, segment_means
from longattn_cli.errors import UserError
from longattn_cli.models.checkpoints import load_model
from longattn_cli.models.tokenizer import load_tokenizer
from longattn_cli.testing import tiny_reference
from longattn_cmd.cli import main

H, D = 3, 8


def nystrom(**settings):
    att = build_attention("nystrom", settings, H, D).eval()
    if att.conv is not None:  # a conv weight far from zero, so that a conv over padding would show
        with torch.no_grad():
            att.conv.weight.normal_(0, 0.5)
    return att


def exact_attention(q, k, v, mask, conv=None):
    """softmax(q kᵀ/√d + mask) v (+ the depthwise convolution of the masked values), by a second route."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    if conv is not None:
        vm = v * mask[:, None, :, None]
        out = out + F.conv2d(vm, conv.weight, padding=(conv.weight.shape[2] // 2, 0), groups=q.shape[1])
    return out


def padded_batch(lengths, total, left=(), seed=0):
    """Sequences of the given real lengths in a (B, H, total, D) batch; padding holds large garbage.

    Returns the padded q, k, v, the mask, and each sequence's real q, k, v as (1, H, n, D).
    """
    g = torch.Generator().manual_seed(seed)
    real = [[torch.randn(1, H, n, D, generator=g) for _ in range(3)] for n in lengths]
    qkv = [100 * torch.randn(len(lengths), H, total, D, generator=g) for _ in range(3)]
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for i, n in enumerate(lengths):
        where = slice(total - n, total) if i in left else slice(0, n)
        mask[i, where] = True
        for x, r in zip(qkv, real[i], strict=True):
            x[i, :, where] = r[0]
    return (*qkv, mask, real)


def real_rows(out, mask, i):
    return out[i][:, mask[i]]  # (H, n_i, D)


# ---- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"num_landmarks": 0}, "num_landmarks=0 must be a positive integer"),
        ({"pinv_iterations": True}, "pinv_iterations=True must be a positive integer"),
        ({"conv_kernel_size": 64}, "conv_kernel_size=64 must be an odd positive integer or None"),
        ({"pinv_init": "fast"}, "pinv_init='fast' is not one of original, exact"),
    ],
)
def test_bad_settings_are_user_errors(bad, message):
    with pytest.raises(UserError, match=message):
        make_settings("nystrom", bad)


def test_defaults_and_benchmark_variant():
    s = make_settings("nystrom").to_dict()
    assert s == {"num_landmarks": 64, "pinv_iterations": 6, "conv_kernel_size": None, "pinv_init": "original"}
    att = build_attention("nystrom", {"num_landmarks": 64, "conv_kernel_size": 65}, 12, 64)
    assert att.conv.weight.shape == (12, 1, 65, 1)  # transformers' NystromformerSelfAttention.conv
    assert att.benchmark_variants() == {"nystrom": {"num_landmarks": 64, "conv_kernel_size": 65}}


# ---- two routes, one answer ----------------------------------------------------------------------------


@pytest.mark.parametrize("pinv_init", ["original", "exact"])
def test_extra_padding_never_changes_real_tokens(pinv_init):
    # Uneven lengths, none a multiple of 8; one sequence short enough (6 ≤ 8) for the exact path; left and
    # right padding; garbage in the padding; then the same batch with 29 more padding positions.
    lengths, m = [53, 37, 6, 41], 8
    att = nystrom(num_landmarks=m, conv_kernel_size=5, pinv_init=pinv_init)
    q, k, v, mask, _ = padded_batch(lengths, 53, left={1})
    q2, k2, v2, mask2, _ = padded_batch(lengths, 82, left={1, 3})
    out, out2 = att(q, k, v, mask), att(q2, k2, v2, mask2)
    for i in range(len(lengths)):
        assert_close(real_rows(out2, mask2, i), real_rows(out, mask, i), rtol=1e-5, atol=1e-5)


def test_exact_init_makes_each_sequence_independent_of_its_batch():
    # The published ("original") init divides by a maximum over the whole batch; "exact" does not, so
    # there a sequence alone, unpadded, gives what it gives inside a padded batch.
    lengths = [53, 37, 41]
    att = nystrom(num_landmarks=8, conv_kernel_size=5, pinv_init="exact")
    q, k, v, mask, real = padded_batch(lengths, 60, left={2})
    out = att(q, k, v, mask)
    for i, (qi, ki, vi) in enumerate(real):
        assert_close(real_rows(out, mask, i), att(qi, ki, vi, None)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [None, 5])
@pytest.mark.parametrize("total", [12, 40])  # all within m = 12, and padded past m (the compacted route)
def test_all_landmarks_is_exact_softmax(conv, total):
    att = nystrom(num_landmarks=12, conv_kernel_size=conv)
    q, k, v, mask, _ = padded_batch([12, 7, 1], total, left={1})
    want = exact_attention(q, k, v, mask, att.conv)
    got = att(q, k, v, mask)
    for i in range(3):
        assert_close(real_rows(got, mask, i), real_rows(want, mask, i), rtol=1e-5, atol=1e-5)


def test_mixed_batch_short_sequences_exact_long_ones_approximated():
    att = nystrom(num_landmarks=8, conv_kernel_size=3)
    q, k, v, mask, real = padded_batch([30, 8, 5], 30, left={2})
    got, want = att(q, k, v, mask), exact_attention(q, k, v, mask, att.conv)
    for i in (1, 2):  # 8 and 5 real tokens: exact
        assert_close(real_rows(got, mask, i), real_rows(want, mask, i), rtol=1e-5, atol=1e-5)
    # 30 real tokens: the approximation, the same as for the sequence alone in a batch of its own
    assert (real_rows(got, mask, 0) - real_rows(want, mask, 0)).abs().max() > 1e-3
    assert_close(real_rows(got, mask, 0), att(*real[0], None)[0], rtol=1e-5, atol=1e-5)


def test_uneven_segments_over_real_tokens():
    # 23 real tokens in 5 segments: r → ⌊5r/23⌋ gives sizes 5, 5, 4, 5, 4; padding goes to bin 5.
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :23] = True
    mask[1, 7:] = True
    seg = segment_ids(mask, 5)
    for row in seg:
        assert torch.bincount(row, minlength=6)[:5].tolist() == [5, 5, 4, 5, 4]
    assert (seg[0, 23:] == 5).all() and (seg[1, :7] == 5).all()
    # The landmarks are the means of those runs of real tokens, computed here by slicing.
    x = torch.randn(2, H, 30, D)
    got = segment_means(x, seg, 5)
    bounds = [0, 5, 10, 14, 19, 23]
    for b, start in ((0, 0), (1, 7)):
        for j in range(5):
            want = x[b, :, start + bounds[j] : start + bounds[j + 1]].mean(dim=1)
            assert_close(got[b, :, j], want, rtol=1e-6, atol=1e-6)


def test_equal_segments_are_the_published_reshape_mean():
    # When n is a multiple of m and nothing is padded, the rule reduces to transformers' reshape(...).mean.
    x = torch.randn(2, H, 48, D)
    seg = segment_ids(torch.ones(2, 48, dtype=torch.bool), 8)
    assert_close(segment_means(x, seg, 8), x.reshape(2, H, 8, 6, D).mean(dim=-2), rtol=1e-6, atol=1e-6)


def test_length_not_a_multiple_of_landmarks_matches_the_formula():
    # n = 50, m = 8: the mechanism against eq. 15 written out densely with the uneven segments.
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, H, 50, D, generator=g) for _ in range(3))
    att = nystrom(num_landmarks=8, conv_kernel_size=None)
    sizes = [7, 6, 6, 6, 7, 6, 6, 6]  # r → ⌊8r/50⌋: segment j holds r ∈ [6.25j, 6.25(j+1))
    starts = [sum(sizes[:j]) for j in range(8)]
    s = D**-0.25
    ql = torch.stack([q[:, :, a : a + n].mean(2) for a, n in zip(starts, sizes, strict=True)], 2) * s
    kl = torch.stack([k[:, :, a : a + n].mean(2) for a, n in zip(starts, sizes, strict=True)], 2) * s
    k1 = (q * s @ kl.transpose(-1, -2)).softmax(-1)
    k2 = (ql @ kl.transpose(-1, -2)).softmax(-1)
    k3 = (ql @ (k * s).transpose(-1, -2)).softmax(-1)
    want = k1 @ iterative_pinv(k2, 6, "original") @ k3 @ v
    assert_close(att(q, k, v, None), want, rtol=1e-5, atol=1e-5)


# ---- the approximation ---------------------------------------------------------------------------------


def clustered(g, n, topics=8, run=32, noise=0.3):
    """Tokens in contiguous runs around a few topic centres, as in text with paragraphs on one subject."""
    centres = 1.5 * torch.randn(H, topics, D, generator=g, dtype=torch.float64)
    which = torch.randint(0, topics, (n // run + 1,), generator=g).repeat_interleave(run)[:n]
    return (centres[:, which] + noise * torch.randn(H, n, D, generator=g, dtype=torch.float64))[None]


def low_rank(g, n, rank=4):
    """A smooth rank-4 signal along the sequence plus a little noise."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    basis = torch.stack([torch.sin((i + 1) * math.pi * t) for i in range(rank)], -1)  # (n, r)
    coef = 2 * torch.randn(rank, D, generator=g, dtype=torch.float64)
    return (basis @ coef + 0.1 * torch.randn(H, n, D, generator=g, dtype=torch.float64))[None]


@pytest.mark.parametrize("make", [clustered, low_rank])
def test_error_falls_as_landmarks_grow_on_structured_inputs(make):
    g = torch.Generator().manual_seed(0)
    n = 512
    q = make(g, n)
    k = q + 0.1 * torch.randn(q.shape, generator=g, dtype=torch.float64)
    v = torch.randn(q.shape, generator=g, dtype=torch.float64)
    exact = F.scaled_dot_product_attention(q, k, v)

    def error(m):
        out = build_attention("nystrom", {"num_landmarks": m}, H, D).double()(q, k, v, None)
        return ((out - exact).norm() / exact.norm()).item()

    errors = [error(m) for m in (4, 16, 64)]
    # Measured (float64): clustered 0.84, 0.11, 0.10; low-rank 0.81, 0.43, 0.03.
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.15 < 0.5 < errors[0]
    assert error(n) < 1e-10  # as many landmarks as tokens: exact


def pinv_error_law(a, iterations, norm1):
    """‖Z_j − A⁺‖₂ predicted from the singular values of A: Z₀ = Aᵀ/c keeps every Z_j = Aᵀ·r(AAᵀ), and on
    each singular direction e = 1 − σ²·r(σ²) follows e ← e³(3 + e)/4 from e₀ = 1 − σ²/c; the error there is
    e/σ."""
    s = torch.linalg.svdvals(a)
    e = 1 - s**2 / norm1[..., None]
    for _ in range(iterations):
        e = e**3 * (3 + e) / 4
    return (e / s).amax(dim=-1)


@pytest.mark.parametrize("init", ["original", "exact"])
def test_iterative_pinv_error_is_exactly_the_stated_bound(init):
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(6, 16, 16, generator=g, dtype=torch.float64)).softmax(-1)
    cols = a.sum(dim=-2).amax(dim=-1)  # ‖A‖₁ per matrix; ‖A‖∞ = 1 for row-stochastic A
    norm1 = cols.max().expand(6) if init == "original" else cols
    for iterations in (6, 10):  # still far from converged on some of these matrices (errors ~1e-3 to 1)
        got = torch.linalg.matrix_norm(iterative_pinv(a, iterations, init) - torch.linalg.pinv(a), ord=2)
        assert_close(got, pinv_error_law(a, iterations, norm1), rtol=1e-6, atol=1e-8)
    # and after enough iterations it is the pseudo-inverse
    assert_close(iterative_pinv(a, 30, init), torch.linalg.pinv(a), rtol=1e-8, atol=1e-8)


def test_iterative_pinv_six_iterations_on_a_well_conditioned_kernel():
    # σ_min²/‖A‖₁ ≥ 0.01 bounds the error after 6 iterations by max e/σ with e ≤ 2.1e-5 (the law above):
    # a relative error below 1e-4 against torch.linalg.pinv, in float32.
    g = torch.Generator().manual_seed(2)
    a = (4 * torch.eye(16) + torch.randn(8, 16, 16, generator=g)).softmax(-1)
    s = torch.linalg.svdvals(a)
    assert (s[:, -1] ** 2 / a.sum(-2).amax(-1) >= 0.01).all()
    want = torch.linalg.pinv(a)
    rel = torch.linalg.matrix_norm(iterative_pinv(a, 6, "exact") - want) / torch.linalg.matrix_norm(want)
    assert rel.max() < 1e-4


def test_no_nan_and_gradients_flow_through_every_route():
    att = nystrom(num_landmarks=4, conv_kernel_size=3)
    q, k, v, mask, _ = padded_batch([20, 3, 9], 20)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = att(q, k, v, mask)
    out[mask[:, None, :, None].expand_as(out)].sum().backward()
    for x in (q, k, v, att.conv.weight):
        assert torch.isfinite(x.grad).all()
    # padding positions got no gradient: they entered nothing
    assert (q.grad[~mask[:, None, :, None].expand_as(q)] == 0).all()
    assert (v.grad[~mask[:, None, :, None].expand_as(v)] == 0).all()


# ---- uw-madison/nystromformer checkpoints --------------------------------------------------------------

# transformers' NystromformerSelfAttention cuts the sequence into num_landmarks segments of exactly
# segment_means_seq_len // num_landmarks tokens with a reshape, so it runs only at n = segment_means_seq_len
# (any other length raises or, at a multiple, mixes batch items); padding reaches its convolution and
# its landmarks. Parity is therefore checked at that one length, without padding, batch 2 (the published
# init's maximum runs over the batch).
SEG = 16


@pytest.fixture(scope="module")
def nys_dir(tmp_path_factory, bpe_dir):
    d = tmp_path_factory.mktemp("nystromformer")
    tiny_reference(
        "nystromformer",
        d,
        tokenizer_dir=bpe_dir,
        num_landmarks=4,
        segment_means_seq_len=SEG,
        conv_kernel_size=3,
    )
    return d


def ids(n, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 900, (b, n), generator=g)


@pytest.mark.parametrize("init", ["original", "exact"])
def test_mlm_logits_match_reference_at_segment_means_seq_len(nys_dir, init):
    from transformers import NystromformerForMaskedLM

    ref = NystromformerForMaskedLM.from_pretrained(nys_dir).eval()
    if init == "exact":  # inv_coeff_init_option=True raises in transformers; its exact branch itself is right
        for layer in ref.nystromformer.encoder.layer:
            layer.attention.self.init_option = "exact"
    ours = load_model(str(nys_dir), attention_settings={"pinv_init": init})
    assert ours.config.attention == "nystrom"
    assert ours.config.attention_settings["num_landmarks"] == 4 and ours.config.position_offset == 2
    x = ids(SEG)
    with torch.no_grad():
        assert_close(ours(input_ids=x).logits, ref(input_ids=x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "head,landmarks,seg",
    [
        # num_landmarks == segment_means_seq_len: transformers computes exact softmax; so do we (n ≤ m).
        ("ForTokenClassification", 8, 8),
        ("Model", 4, SEG),
    ],
)
def test_other_heads_match_reference(tmp_path, bpe_dir, head, landmarks, seg):
    ref = tiny_reference(
        "nystromformer",
        tmp_path,
        head,
        tokenizer_dir=bpe_dir,
        num_landmarks=landmarks,
        segment_means_seq_len=seg,
        conv_kernel_size=5,
        num_labels=3,
    )
    ours = load_model(str(tmp_path))
    assert type(ours).__name__ == {"Model": "LongAttnModel"}.get(head, "LongAttnForTokenClassification")
    x = ids(seg)
    with torch.no_grad():  # [0]: logits, or the last hidden state of the bare model
        assert_close(ours(input_ids=x)[0], ref(input_ids=x)[0], rtol=1e-5, atol=1e-5)


def test_imported_model_runs_any_length_with_padding(nys_dir):
    ours = load_model(str(nys_dir))
    a, b = ids(37, b=1, seed=1), ids(23, b=1, seed=2)
    batch = torch.full((2, 37), 1)
    batch[0], batch[1, :23] = a[0], b[0]
    mask = (torch.arange(37)[None] < torch.tensor([[37], [23]])).long()
    with torch.no_grad():
        out = ours(input_ids=batch, attention_mask=mask).logits
        # the batch max of the published init couples the two; with "exact" each stands alone
        alone = load_model(str(nys_dir), attention_settings={"pinv_init": "exact"})
        out_e = alone(input_ids=batch, attention_mask=mask).logits
        assert_close(out_e[1, :23], alone(input_ids=b).logits[0], rtol=1e-5, atol=1e-5)
        assert_close(out_e[0], alone(input_ids=a).logits[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()


def test_fill_mask_on_a_nystromformer_checkpoint_at_any_length(nys_dir, capsys):
    short = "The <mask> of it."
    long = " ".join(["Attribute references are resolved in the class dictionary."] * 5) + " A <mask> here."
    n_long = len(load_tokenizer(str(nys_dir))(long)["input_ids"])
    assert n_long > SEG and n_long % 4  # longer than the reference admits, not a multiple of the landmarks
    with pytest.raises(SystemExit) as exc:
        main(["fill-mask", short, long, "--model", str(nys_dir), "-k", "3", "--json"])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    data = json.loads(out.out)
    assert [len(d["predictions"][0]) for d in data] == [3, 3]


def test_fill_mask_scores_equal_reference_pipeline_at_its_length(nys_dir):
    from transformers import AutoTokenizer, pipeline

    from longattn_cli.fill_mask import predict

    tok = AutoTokenizer.from_pretrained(nys_dir)
    words = ["class"] * 40
    while len(tok(" ".join(words) + " <mask>.")["input_ids"]) > SEG:
        words.pop()
    text = " ".join(words) + " <mask>."
    assert len(tok(text)["input_ids"]) == SEG
    ours = predict([text], str(nys_dir), top_k=5)[0]["predictions"][0]
    theirs = pipeline("fill-mask", model=str(nys_dir), device="cpu")(text, top_k=5)
    assert [p["token"] for p in ours] == [p["token"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], rel=1e-5, abs=1e-7)


def test_conv_kernel_from_config_none_or_even(tmp_path, bpe_dir):
    # transformers 5 refuses conv_kernel_size=None in a config object, older config.json files hold null.
    tiny_reference(
        "nystromformer", tmp_path, tokenizer_dir=bpe_dir, num_landmarks=4, segment_means_seq_len=16
    )
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"conv_kernel_size": None}))
    model = load_model(str(tmp_path))
    assert model.config.attention_settings["conv_kernel_size"] is None
    assert model.longattn.layers[0].attention.conv is None
    # an even kernel would make transformers' convolution one longer than the sequence
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"conv_kernel_size": 4}))
    with pytest.raises(UserError, match="conv_kernel_size=4 must be an odd"):
        load_model(str(tmp_path))


@pytest.mark.skipif(
    importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed here"
)
def test_sentencepiece_tokenizer_without_the_package_is_a_one_line_error(tmp_path):
    # The layout of ALBERT-tokenized checkpoints that ship only spiece.model (no tokenizer.json).
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nystromformer"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "AlbertTokenizer"}))
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(
        UserError, match=r"SentencePiece model \(spiece.model\).*pip install 'longattn\[sentencepiece\]'"
    ):
        load_tokenizer(str(tmp_path))


def albert_tokenizer(out_dir):
    """A tiny ALBERT-style SentencePiece tokenizer (spiece.model only, no tokenizer.json)."""
    import sentencepiece as spm

    from longattn_cli.testing import python_docs_text

    out_dir.mkdir(parents=True)
    text = out_dir / "text.txt"
    text.write_text("\n".join(python_docs_text()[:2000]))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out_dir / "spiece"), vocab_size=600, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>", bos_piece="[CLS]",
        eos_piece="[SEP]", user_defined_symbols=["[MASK]"], minloglevel=2,
    )  # fmt: skip
    for f in ("text.txt", "spiece.vocab"):
        (out_dir / f).unlink()
    mask = {"content": "[MASK]", "lstrip": True, "rstrip": False, "normalized": False, "__type": "AddedToken"}
    config = {"tokenizer_class": "AlbertTokenizer", "do_lower_case": True, "mask_token": mask}
    config |= {"bos_token": "[CLS]", "eos_token": "[SEP]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config | {"unk_token": "<unk>", "pad_token": "<pad>"})
    )
    return out_dir


@pytest.mark.skipif(
    not (importlib.util.find_spec("sentencepiece") and importlib.util.find_spec("google")),
    reason="needs the sentencepiece extra (sentencepiece, protobuf)",
)
def test_albert_sentencepiece_checkpoint_fills_masks(tmp_path):
    from longattn_cli.fill_mask import predict

    tok_dir = albert_tokenizer(tmp_path / "tok")
    tiny_reference(
        "nystromformer", tmp_path / "model", tokenizer_dir=tok_dir, num_landmarks=4, segment_means_seq_len=16,
        conv_kernel_size=3,
    )  # fmt: skip
    assert not (tmp_path / "model" / "tokenizer.json").exists()
    tok = load_tokenizer(str(tmp_path / "model"))
    assert type(tok).__name__ == "AlbertTokenizer" and tok.mask_token == "[MASK]"
    text = "The [MASK] of a class is looked up in its dictionary, then in the dictionaries of its bases."
    assert len(tok(text)["input_ids"]) > 16
    out = predict([text], str(tmp_path / "model"), top_k=2)
    assert len(out[0]["predictions"][0]) == 2
