"""YOSO: the expectation formula, LSH converging to it, the paper's gradients, padding, and checkpoint parity.

transformers' YOSO is the reference only in expectation mode and only without padding: its LSH mode needs a CUDA
kernel from the hub (on CPU it fails), and its mask is turned into all ones (``1 + mask / 10000`` cast to int),
so padding changes its outputs at real tokens. Those are compared against it; everything else is checked by
two routes to one answer.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from longattn_cli.attention import build_attention, make_settings
from longattn_cli.attention import yoso as yoso_module
from longattn_cli.attention.yoso import (
    _WIDTH,
    YosoSettings,
    _Expectation,
    _hadamard,
    _lane_widths,
    _LSHCumulation,
    _sort_keys,
    _Unit,
    collision_counts,
    collision_gradients,
    collision_probability,
    cumulate,
    hash_codes,
)
from longattn_cli.errors import UserError
from longattn_cli.models.checkpoints import load_model
from longattn_cli.testing import tiny_reference
from longattn_cmd.cli import main


def qkv(b=2, h=3, n=40, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def padding_mask(b, n, lengths):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def expectation_formula(q, k, v, mask, tau):
    """The paper's YOSO-E written out with an n×n matrix: normalise q, k; weights over real keys; normalise rows."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    p = (1 - torch.acos((q @ k.transpose(-1, -2)).clamp(-1, 1)) / math.pi) ** tau
    p = p * mask[:, None, None, :]
    return F.normalize(p @ v, dim=-1) * mask[:, None, :, None]


def yoso(**settings):
    return build_attention("yoso", settings, 3, 16).eval()


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def relative_error(approx, exact, mask):
    """Mean over real queries of ‖approx − exact‖ / ‖exact‖."""
    err = (approx - exact).norm(dim=-1) / exact.norm(dim=-1)
    return float(err[mask[:, None, :].expand_as(err)].mean())


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ({"hash_code_len": 0}, "hash_code_len=0 must be an integer from 1 to 16"),
        ({"hash_code_len": 17}, "hash_code_len=17"),
        ({"num_hash": 0}, "num_hash=0 must be an integer of at least 1"),
        ({"use_expectation": "yes"}, "use_expectation='yes' must be true or false"),
        ({"conv_window": 4}, "conv_window=4 must be null or an odd positive integer"),
        ({"seed": -1}, "seed=-1 must be null or a non-negative integer"),
    ],
)
def test_bad_settings_name_the_value(bad, pattern):
    with pytest.raises(UserError, match=pattern):
        make_settings("yoso", bad)


def test_defaults_are_transformers_yoso_config():
    from transformers import YosoConfig

    ref, ours = YosoConfig(), YosoSettings()
    from longattn_cli.models.families.yoso import YOSO_SETTINGS

    for name in YOSO_SETTINGS:  # the settings an imported YOSO checkpoint carries over
        assert getattr(ours, name) == getattr(ref, name), name


# ---------------------------------------------------------------------------------------------- expectation


def test_expectation_equals_formula_over_real_keys():
    q, k, v = qkv()
    mask = padding_mask(2, 40, [40, 27])
    assert_close(
        yoso(hash_code_len=5)(q, k, v, mask), expectation_formula(q, k, v, mask, 5), rtol=1e-5, atol=1e-6
    )


def test_no_nan_when_query_equals_key():
    q, _, v = qkv(n=8)
    q = q.repeat(1, 1, 1, 1) * 1e3  # q·k of a long vector with itself rounds above 1 after normalising
    q.requires_grad_(True)
    for settings in ({}, {"use_expectation": False, "num_hash": 4, "seed": 0}):
        out = yoso(**settings)(q, q, v, None)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
        q.grad = None


def test_expectation_value_gradient_passes_gradcheck():
    q, k, v = qkv(b=1, h=1, n=6, d=3, dtype=torch.float64)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    key_mask = padding_mask(1, 6, [4]).to(torch.float64)[:, None, :, None]
    v = v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: _Expectation.apply(q, k, v, key_mask, 3), (v,))


def test_expectation_query_key_gradients_are_the_papers():
    """∂B/∂(q·k) is replaced by (τ/2)·B: that is autograd of (τ/2)·stopgrad(B)·(q·k), exactly.

    It stays close to the exact derivative (cosine similarity above 0.95 here): the paper's surrogate points the
    same way while staying bounded where arccos' derivative is not.
    """
    tau = 3
    q, k, v = qkv(b=1, h=2, n=10, d=4, dtype=torch.float64)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    key_mask = padding_mask(1, 10, [7]).to(torch.float64)[:, None, :, None]
    g = torch.randn(1, 2, 10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ours = [x.clone().requires_grad_(True) for x in (q, k)]
    _Expectation.apply(*ours, v, key_mask, tau).backward(g)

    surrogate = [x.clone().requires_grad_(True) for x in (q, k)]
    b = collision_probability(q, k, tau) * key_mask.transpose(-1, -2)
    ((b * (tau / 2) * (surrogate[0] @ surrogate[1].transpose(-1, -2))) @ v).backward(g)
    exact = [x.clone().requires_grad_(True) for x in (q, k)]
    b_exact = (1 - torch.acos(exact[0] @ exact[1].transpose(-1, -2)) / math.pi) ** tau
    ((b_exact * key_mask.transpose(-1, -2)) @ v).backward(g)
    for a, s, e in zip(ours, surrogate, exact, strict=True):
        assert_close(a.grad, s.grad, rtol=1e-12, atol=1e-12)
        assert cosine(a.grad, e.grad) > 0.95


# ---------------------------------------------------------------------------------------------- LSH


def lsh_inputs(n=64, d=8, real=50, seed=1):
    q, k, v = qkv(b=1, h=2, n=n, d=d, seed=seed)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    m = padding_mask(1, n, [real]).float()[:, None, :, None]
    g = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(seed + 1)) * m
    return q, k, v * m, m, g


@pytest.mark.parametrize("fast", [False, True])
def test_lsh_output_approaches_expectation_as_hashes_grow(fast):
    """Mean relative error (over real queries) falls with num_hash, ~1/√num_hash: below 0.1 at 1024 hashes."""
    q, k, v = qkv(n=50)
    mask = padding_mask(2, 50, [50, 31])
    exact = yoso(hash_code_len=4)(q, k, v, mask)
    errors = [
        relative_error(
            yoso(hash_code_len=4, use_expectation=False, num_hash=nh, use_fast_hash=fast, seed=7)(
                q, k, v, mask
            ),
            exact,
            mask,
        )
        for nh in (4, 32, 256, 1024)
    ]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.1, errors


@pytest.mark.parametrize(("d", "tau"), [(16, 9), (8, 8), (64, 9)])
def test_fast_hash_is_as_good_as_gaussian_at_every_head_size(d, tau):
    """The fast hash's estimate keeps improving with hashes as the Gaussian one does, small heads included
    (with the rotation as wide as the head, head_dim 16 and τ 9 stalled at twice the Gaussian error)."""
    q, k, v = qkv(b=1, h=4, n=64, d=d)
    mask = padding_mask(1, 64, [64])
    exact = yoso(hash_code_len=tau)(q, k, v, mask)

    def error(fast, nh):
        s = dict(hash_code_len=tau, use_expectation=False, num_hash=nh, use_fast_hash=fast, seed=7)
        return relative_error(yoso(**s)(q, k, v, mask), exact, mask)

    fast, gauss = [error(True, nh) for nh in (256, 4096)], error(False, 4096)
    assert fast[1] < fast[0] / 3, fast  # ~1/√16 = 1/4 for an unbiased estimate
    assert fast[1] < 1.15 * gauss, (fast, gauss)


def test_lsh_backward_agrees_with_expectation_gradients():
    """Weighted-LSH gradients point where the expectation's do: cosine > 0.9 at 64 hashes, > 0.99 at 1024."""
    q, k, v, m, g = lsh_inputs()
    exact = [x.clone().requires_grad_(True) for x in (q, k, v)]
    _Expectation.apply(*exact, m, 4).backward(g)
    for nh, bound in ((64, 0.9), (1024, 0.99)):
        cq, ck = hash_codes(q, k, YosoSettings(hash_code_len=4, num_hash=nh, use_fast_hash=False, seed=3))
        ours = [x.clone().requires_grad_(True) for x in (q, k, v)]
        _LSHCumulation.apply(*ours, m, cq, ck, 4, True).backward(g)
        for a, e in zip(ours, exact, strict=True):
            assert cosine(a.grad, e.grad) > bound, (nh, cosine(a.grad, e.grad))
        for a in ours:  # padded keys and queries get no gradient
            assert not a.grad[:, :, 50:].any()


def test_lsh_value_gradient_passes_gradcheck():
    """The LSH estimate is linear in the values, so its value gradient is exact: gradcheck in float64."""
    q, k, v = qkv(b=1, h=1, n=7, d=3, dtype=torch.float64)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    m = padding_mask(1, 7, [5]).to(torch.float64)[:, None, :, None]
    cq, ck = hash_codes(q, k, YosoSettings(hash_code_len=2, num_hash=3, seed=0))
    v = v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: _LSHCumulation.apply(q, k, v * m, m, cq, ck, 2, True) * m, (v,))


@pytest.mark.parametrize("n,tau,budget", [(60, 3, None), (12, 9, None), (12, 9, 1000)])
def test_cumulation_equals_explicit_collision_sums(n, tau, budget, monkeypatch):
    """Fewer buckets than tokens (dense tables), more (occupied buckets only), and a budget that splits hashes."""
    if budget:
        monkeypatch.setattr("longattn_cli.attention.yoso._BUDGET", budget)
    g = torch.Generator().manual_seed(n)
    codes_q, codes_k = (torch.randint(0, 2**tau, (2, 3, n, 5), generator=g) for _ in range(2))
    x = torch.randn(2, 3, n, 4, generator=g)
    collisions = (codes_q[:, :, :, None, :] == codes_k[:, :, None, :, :]).float().mean(-1)  # (B, H, N, N)
    assert_close(cumulate(codes_q, codes_k, x, 2**tau), collisions @ x)


ROUTES = {
    "counts": {"_DENSE_MAX": 10**9},
    "lanes": {"_DENSE_MAX": 0},  # by cost: small buckets as attention, big ones as tables
    "attention": {"_DENSE_MAX": 0, "_attends": lambda wq, wk, d: wq >= 0},
    "tables": {"_DENSE_MAX": 0, "_attends": lambda wq, wk, d: wq < 0},
    "split heads": {"_DENSE_MAX": 0, "_INSTANCES": 50},
    "split heads and hashes": {"_DENSE_MAX": 0, "_INSTANCES": 1, "_BUDGET": 100},
    "one chunk per layout": {"_DENSE_MAX": 0, "_INSTANCES": 1, "_LAYOUT_ROWS": 1},
    "one hash per chunk": {"_DENSE_MAX": 0, "_CHUNK_ROWS": 1},
    "hashes per chunk, small pieces": {"_DENSE_MAX": 0, "_INSTANCES": 1, "_CHUNK_ROWS": 10**6, "_PIECE": 8},
    "heads and hashes per chunk": {"_DENSE_MAX": 0, "_INSTANCES": 400, "_CHUNK_ROWS": 10**6},
}


def assert_paper_sums(codes_q, codes_k, q, k, v, g):
    """collision_gradients gives Σ_j c_ij (g_i·v_j) k_j, Σ_i c_ij (g_i·v_j) q_i and Σ_i c_ij g_i exactly, with
    c_ij the fraction of hashes where i and j collide (computed here from all n×n pairs)."""
    c = (codes_q[:, :, :, None, :] == codes_k[:, :, None, :, :]).double().mean(-1)  # (B, H, N, N)
    w = c * (g @ v.transpose(-1, -2))
    gq, gk, gv = collision_gradients(codes_q, codes_k, q, k, v, g)
    assert_close(gq, w @ k)
    assert_close(gk, w.transpose(-1, -2) @ q)
    assert_close(gv, c.transpose(-1, -2) @ g)


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("n,tau,d", [(60, 3, 4), (12, 9, 4), (200, 4, 8), (70, 2, 16)])
@pytest.mark.parametrize("layout", ["contiguous", "heads transposed"])
def test_lsh_backward_sums_equal_explicit_collision_sums(route, n, tau, d, layout, monkeypatch):
    """Every route of the LSH backward computes the paper's sums exactly: Σ_j c_ij (g_i·v_j) k_j,
    Σ_i c_ij (g_i·v_j) q_i and Σ_i c_ij g_i, with c_ij the fraction of hashes where i and j collide.

    Also for (B, N, H, D) tensors seen as (B, H, N, D), the layout the model's projections hand over: the
    n×n route once left its outputs unwritten there (bmm into reshaped copies), so training blew up."""
    for name, value in ROUTES[route].items():
        monkeypatch.setattr(f"longattn_cli.attention.yoso.{name}", value)
    gen = torch.Generator().manual_seed(n + d)
    codes_q, codes_k = (
        torch.randint(0, 2**tau, (2, 3, n, 5), generator=gen, dtype=torch.int32) for _ in range(2)
    )
    if layout == "contiguous":
        q, k, v, g = (torch.randn(2, 3, n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    else:
        q, k, v, g = (
            torch.randn(2, n, 3, d, generator=gen, dtype=torch.float64).transpose(1, 2) for _ in range(4)
        )
    assert_paper_sums(codes_q, codes_k, q, k, v, g)


def test_lsh_backward_keeps_its_buffers_and_its_sums_across_calls(monkeypatch):
    """The lane buffers live from one call to the next (fresh pages cost more than the products): a call after
    a larger one and a call after a smaller one still give the paper's sums, in the same memory."""
    monkeypatch.setattr("longattn_cli.attention.yoso._DENSE_MAX", 0)
    gen = torch.Generator().manual_seed(3)

    def problem(n):
        codes = [torch.randint(0, 16, (1, 2, n, 6), generator=gen, dtype=torch.int32) for _ in range(2)]
        return *codes, *(torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float64) for _ in range(4))

    big, small = problem(300), problem(40)
    assert_paper_sums(*big)
    store = yoso_module._kept.stores[(torch.float64, torch.device("cpu"))]
    kept = {name: x.data_ptr() for name, x in store.items()}
    assert {"oq", "ok", "qg", "kv", "w"} <= set(kept)
    assert_paper_sums(*small)
    assert_paper_sums(*big)
    assert {name: x.data_ptr() for name, x in store.items()} == kept


@pytest.mark.parametrize("route", ["lanes", "attention", "tables", "hashes per chunk, small pieces"])
def test_lsh_backward_sums_are_exact_for_lopsided_buckets(route, monkeypatch):
    """A model's queries and keys are not isotropic: most queries may share one bucket and most keys another.
    Such buckets get a width per side (and balanced ones one width): the sums stay the paper's."""
    for name, value in ROUTES[route].items():
        monkeypatch.setattr(f"longattn_cli.attention.yoso.{name}", value)
    gen = torch.Generator().manual_seed(7)
    n, d, nh = 300, 8, 4
    codes_q, codes_k = (
        torch.randint(0, 8, (1, 2, n, nh), generator=gen, dtype=torch.int32) for _ in range(2)
    )
    codes_q[torch.rand(codes_q.shape, generator=gen) < 0.8] = 0  # ~240 queries and ~8 keys in bucket 0
    codes_k[torch.rand(codes_k.shape, generator=gen) < 0.8] = 1  # and the other way round in bucket 1
    q, k, v, g = (torch.randn(1, 2, n, d, generator=gen, dtype=torch.float64) for _ in range(4))
    assert_paper_sums(codes_q, codes_k, q, k, v, g)


def test_lane_widths_are_powers_of_two_at_or_above_the_count():
    counts = torch.arange(1, 2000)
    widths = _lane_widths(counts)
    assert (widths >= counts).all() and (widths >= _WIDTH).all()
    assert ((widths & (widths - 1)) == 0).all()
    assert (widths[counts > _WIDTH] < 2 * counts[counts > _WIDTH]).all()


def test_lsh_forward_and_backward_agree_on_both_routes(monkeypatch):
    """Short inputs take the n×n counts (kept from the forward for the backward), long ones the tables and
    lanes: one answer either way, forward and gradients."""
    q, k, v, m, g = lsh_inputs()
    cq, ck = hash_codes(q, k, YosoSettings(hash_code_len=4, num_hash=8, seed=3))
    results = []
    for limit in (0, 10**9):
        monkeypatch.setattr("longattn_cli.attention.yoso._DENSE_MAX", limit)
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = _LSHCumulation.apply(*xs, m, cq, ck, 4, True)
        out.backward(g)
        results.append([out.detach()] + [x.grad for x in xs])
    for a, b in zip(*results, strict=True):
        assert_close(a, b)


def test_collision_counts_count_every_hash():
    gen = torch.Generator().manual_seed(0)
    codes_q, codes_k = (
        torch.randint(0, 4, (3, 9, 6), generator=gen),
        torch.randint(0, 4, (3, 11, 6), generator=gen),
    )
    expected = (codes_q[:, :, None, :] == codes_k[:, None, :, :]).sum(-1).float()
    assert torch.equal(collision_counts(codes_q, codes_k), expected)


def test_unit_rows_are_f_normalize_with_its_gradient():
    # Two routes, one answer: our closed-form backward against autograd through F.normalize, on a transposed
    # view (as the heads arrive from the projections) and with a zero row (F.normalize's ε branch).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 5, generator=gen, dtype=torch.float64).transpose(1, 2)
    x[0, 1, 2] = 0
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ours, ref = (x.detach().clone().requires_grad_() for _ in range(2))
    u = _Unit.apply(ours)
    assert torch.equal(u, F.normalize(ref, dim=-1))  # bit for bit: the hash codes of q and k do not change
    u.backward(grad)
    F.normalize(ref, dim=-1).backward(grad)
    assert_close(ours.grad, ref.grad)
    assert torch.autograd.gradcheck(
        _Unit.apply, (torch.randn(4, 6, dtype=torch.float64, requires_grad=True),)
    )


@pytest.mark.parametrize("bound", [2, 1 << 15, (1 << 15) + 1, 1 << 31, (1 << 31) + 1])
def test_sort_keys_keep_the_order(bound):
    x = torch.tensor([bound - 1, 0, bound // 2, bound - 1, 1]).clamp_(max=bound - 1)
    keys = _sort_keys(x, bound)
    assert torch.equal(keys.long(), x)
    assert torch.equal(torch.sort(keys, stable=True)[1], torch.sort(x, stable=True)[1])


def test_lsh_without_lsh_backward_uses_expectation_gradients():
    q, k, v, m, g = lsh_inputs()
    exact = [x.clone().requires_grad_(True) for x in (q, k, v)]
    _Expectation.apply(*exact, m, 4).backward(g)
    cq, ck = hash_codes(q, k, YosoSettings(hash_code_len=4, num_hash=8, seed=3))
    ours = [x.clone().requires_grad_(True) for x in (q, k, v)]
    _LSHCumulation.apply(*ours, m, cq, ck, 4, False).backward(g)
    for a, e in zip(ours, exact, strict=True):
        assert_close(a.grad, e.grad)


def test_hash_codes_bits_are_projection_signs():
    q, k, _ = qkv()
    s = YosoSettings(hash_code_len=5, num_hash=6, use_fast_hash=False, seed=11)
    cq, ck = hash_codes(q, k, s)
    r = torch.randn(
        1, 3, 16, 30, generator=torch.Generator().manual_seed(11)
    )  # seeded: one draw for all rows
    for x, codes in ((q, cq), (k, ck)):
        bits = (x @ r > 0).view(2, 3, 40, 6, 5).long()
        assert torch.equal(codes, (bits * 2 ** torch.arange(5)).sum(-1))
    assert not torch.equal(
        cq, ck
    )  # queries are hashed as queries (transformers' non-fast path returns key codes twice)


def test_fast_hash_is_hadamard_rotation():
    sylvester = torch.ones(1, 1)
    for _ in range(4):
        sylvester = torch.cat([torch.cat([sylvester, sylvester], 1), torch.cat([sylvester, -sylvester], 1)])
    assert torch.equal(_hadamard(torch.eye(16)), sylvester)
    q, k, _ = qkv(d=12)  # padded to 16; τ = 5 gives 3 hashes per 16 columns
    cq, ck = hash_codes(q, k, YosoSettings(hash_code_len=5, num_hash=7, seed=0))
    assert cq.shape == (2, 3, 40, 7) and int(cq.max()) < 32 and int(cq.min()) >= 0


@pytest.mark.parametrize("fast", [True, False])
def test_seed_gives_a_sequence_one_answer_whatever_batch_it_is_in(fast):
    """Reproducible inference: a sequence alone, as row 0 or as row 1 of a batch, gets the same output."""
    q, k, v = qkv(b=2, n=30)
    att = yoso(use_expectation=False, num_hash=8, use_fast_hash=fast, seed=3)
    alone = att(q[:1], k[:1], v[:1], None)
    for rows in ([0, 1], [1, 0]):  # the same sequence next to another one, first and second
        both = att(q[rows], k[rows], v[rows], None)
        assert_close(both[rows.index(0)], alone[0])
    mask = padding_mask(2, 30, [30, 17])  # a padded neighbour changes nothing either
    assert_close(att(q, k, v, mask)[0], alone[0])


def test_seed_fixes_the_hashes():
    q, k, v = qkv()
    a = yoso(use_expectation=False, num_hash=8, seed=1)
    assert torch.equal(a(q, k, v, None), a(q, k, v, None))
    assert not torch.equal(a(q, k, v, None), yoso(use_expectation=False, num_hash=8, seed=2)(q, k, v, None))
    free = yoso(use_expectation=False, num_hash=8)
    torch.manual_seed(0)
    first = free(q, k, v, None)
    torch.manual_seed(0)
    assert torch.equal(first, free(q, k, v, None))  # unseeded draws follow torch's global generator


@pytest.mark.parametrize("settings", [{}, {"use_expectation": False, "num_hash": 16, "seed": 4}])
def test_padding_leaves_real_tokens_unchanged(settings):
    q, k, v = qkv(b=2, n=30)
    att = yoso(hash_code_len=6, conv_window=3, **settings)
    short = att(q, k, v, padding_mask(2, 30, [30, 18]))
    pad = [torch.cat([x, torch.randn(2, 3, 9, 16) * 50], dim=2) for x in (q, k, v)]
    long = att(*pad, padding_mask(2, 39, [30, 18]))
    mask = padding_mask(2, 30, [30, 18])[:, None, :, None]
    assert_close(long[:, :, :30] * mask, short * mask, rtol=0, atol=1e-6)


def test_no_n_by_n_allocation_in_lsh_forward_and_backward():
    n = 4096
    q, k, v = [x.requires_grad_(True) for x in qkv(b=1, h=1, n=n, d=8)]
    att = build_attention(
        "yoso", {"use_expectation": False, "num_hash": 2, "hash_code_len": 6, "seed": 0}, 1, 8
    )
    with torch.profiler.profile(profile_memory=True) as prof:
        att(q, k, v, None).sum().backward()
    # Single allocations, by the operators that make them: an enclosing call's figure is its net allocation,
    # which includes the scratch the backward keeps for the next call.
    largest = max(e.cpu_memory_usage for e in prof.events() if not e.cpu_children)
    # An n×n fp32 matrix would be 64 MiB; the largest buffers are O(n · num_hash · d) (sparse indices, 1 MiB).
    assert 0 < largest <= 2**20, largest


def test_bfloat16_inputs_keep_their_dtype():
    q, k, v = qkv(dtype=torch.bfloat16)
    for settings in ({}, {"use_expectation": False, "num_hash": 4, "seed": 0}):
        out = yoso(**settings)(q, k, v, None)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def yoso_dir(tmp_path_factory, bpe_dir):
    d = tmp_path_factory.mktemp("yoso")
    tiny_reference("yoso", d, tokenizer_dir=bpe_dir, conv_window=3)
    return d


@pytest.mark.parametrize("conv_window", [None, 3])
def test_expectation_mode_matches_transformers_without_padding(conv_window, tmp_path):
    ref = tiny_reference("yoso", tmp_path, vocab_size=120, conv_window=conv_window)
    ours = load_model(str(tmp_path))
    assert ours.config.attention == "yoso" and ours.config.attention_settings["conv_window"] == conv_window
    ids = torch.randint(3, 120, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(ours(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["Model", "ForTokenClassification"])
def test_other_heads_match_transformers(head, tmp_path):
    ref = tiny_reference("yoso", tmp_path, head, vocab_size=120, num_labels=3)
    ours = load_model(str(tmp_path))
    ids = torch.randint(3, 120, (2, 19), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        theirs, mine = ref(input_ids=ids), ours(input_ids=ids)
    if head == "Model":
        assert_close(mine.last_hidden_state, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)
    else:
        assert_close(mine.logits, theirs.logits, rtol=1e-5, atol=1e-5)


def test_expectation_mode_gradients_match_transformers(tmp_path):
    """transformers' YosoCumulation backward is the paper's gradient too: parameter gradients agree."""
    ref = tiny_reference("yoso", tmp_path, vocab_size=120, conv_window=3)
    ours = load_model(str(tmp_path))
    ids = torch.randint(3, 120, (2, 21), generator=torch.Generator().manual_seed(4))
    ours(input_ids=ids, labels=ids).loss.backward()
    ref(input_ids=ids, labels=ids).loss.backward()
    mine = dict(ours.named_parameters())
    for theirs, name in (
        ("yoso.encoder.layer.0.attention.self.query.weight", "longattn.layers.0.query.weight"),
        ("yoso.encoder.layer.1.attention.self.key.weight", "longattn.layers.1.key.weight"),
        ("yoso.encoder.layer.0.attention.self.conv.weight", "longattn.layers.0.attention.conv.weight"),
    ):
        assert_close(mine[name].grad, dict(ref.named_parameters())[theirs].grad, rtol=1e-4, atol=1e-6)


def test_training_step_in_lsh_mode(yoso_dir):
    model = load_model(
        str(yoso_dir), attention_settings={"use_expectation": False, "num_hash": 8, "hash_code_len": 4}
    )
    model.train()
    ids = torch.randint(5, 500, (2, 20), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, 14:] = 0
    model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    grad = model.longattn.layers[0].query.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_padding_changes_transformers_outputs_but_not_ours(tmp_path):
    ref = tiny_reference("yoso", tmp_path, vocab_size=120)
    ours = load_model(str(tmp_path))
    ids = torch.randint(3, 120, (1, 20), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([ids, torch.full((1, 6), 1)], dim=1)
    mask = torch.cat([torch.ones(1, 20), torch.zeros(1, 6)], dim=1).long()
    with torch.no_grad():
        theirs_alone, theirs_padded = (
            ref(input_ids=ids).logits,
            ref(input_ids=padded, attention_mask=mask).logits,
        )
        mine_alone, mine_padded = (
            ours(input_ids=ids).logits,
            ours(input_ids=padded, attention_mask=mask).logits,
        )
    assert (theirs_padded[:, :20] - theirs_alone).abs().max() > 1e-3  # the reference ignores the mask
    assert_close(mine_padded[:, :20], mine_alone, rtol=0, atol=1e-6)


def test_lsh_mode_padding_with_the_same_seed(yoso_dir):
    ours = load_model(str(yoso_dir), attention_settings={"use_expectation": False, "num_hash": 16, "seed": 0})
    ids = torch.randint(5, 500, (2, 24), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 15:] = 0
    extra = torch.cat([ids, torch.full((2, 7), 1)], dim=1)
    extra_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = ours(input_ids=extra, attention_mask=extra_mask).logits[:, :24]
    real = mask.bool()
    assert_close(b[real], a[real], rtol=0, atol=1e-5)


def test_settings_override_at_load(yoso_dir):
    e = load_model(str(yoso_dir))
    lsh = load_model(str(yoso_dir), attention_settings={"use_expectation": False, "num_hash": 8, "seed": 0})
    assert lsh.config.attention_settings["use_expectation"] is False
    assert lsh.config.attention_settings["hash_code_len"] == 9  # the checkpoint's other settings stay
    ids = torch.randint(5, 500, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = e(input_ids=ids).logits, lsh(input_ids=ids).logits
    assert torch.isfinite(b).all() and not torch.equal(a, b)


def test_fill_mask_cli_in_lsh_mode(yoso_dir, capsys):
    argv = ["fill-mask", "Paris is the <mask> of France.", "--model", str(yoso_dir), "-k", "2", "--json"]
    argv += ["--set", "use_expectation=false", "--set", "num_hash=8", "--set", "seed=0"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    assert len(json.loads(out.out)[0]["predictions"][0]) == 2


def test_fill_mask_cli_rejects_bad_yoso_setting(yoso_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fill-mask", "A <mask>.", "--model", str(yoso_dir), "--set", "num_hash=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "num_hash=0" in err[0]


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_in_expectation_and_lsh_converges():
    q, k, v = qkv(n=50)
    mask = padding_mask(2, 50, [50, 31])
    cpu = yoso(hash_code_len=4)(q, k, v, mask)
    att = yoso(hash_code_len=4).cuda()
    gpu = att(q.cuda(), k.cuda(), v.cuda(), mask.cuda())
    assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    lsh = yoso(hash_code_len=4, use_expectation=False, num_hash=1024, use_fast_hash=False, seed=0).cuda()
    out = lsh(q.cuda(), k.cuda(), v.cuda(), mask.cuda())
    assert torch.equal(out, lsh(q.cuda(), k.cuda(), v.cuda(), mask.cuda()))
    assert relative_error(out.cpu(), cpu, mask) < 0.1
