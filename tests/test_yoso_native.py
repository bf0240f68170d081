"""YOSO's compiled CPU backward (attention/native.py, attention/yoso_lsh.cpp): the paper's sums, the torch
route's answer, the same bits on any number of threads, and the torch route where it cannot be built."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.testing import assert_close

from longattn_cli.attention import build_attention, native
from longattn_cli.attention.settings import YosoSettings
from longattn_cli.attention.yoso import collision_gradients, cumulate, hash_codes

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="needs a C++ compiler to build the kernel"
)


def problem(b, h, n, d, tau, nh, seed, layout="contiguous", lopsided=False):
    gen = torch.Generator().manual_seed(seed)
    codes_q, codes_k = (
        torch.randint(0, 2**tau, (b, h, n, nh), generator=gen, dtype=torch.int32) for _ in "qk"
    )
    if lopsided:  # most queries in bucket 0, most keys in bucket 1: hundreds against a handful
        codes_q[torch.rand(codes_q.shape, generator=gen) < 0.8] = 0
        codes_k[torch.rand(codes_k.shape, generator=gen) < 0.8] = 1
    if layout == "contiguous":
        tensors = [torch.randn(b, h, n, d, generator=gen) for _ in range(4)]
    else:  # (B, N, H, D) seen as (B, H, N, D), as the model's projections hand them over
        tensors = [torch.randn(b, n, h, d, generator=gen).transpose(1, 2) for _ in range(4)]
    return codes_q, codes_k, *tensors


def paper_sums(codes_q, codes_k, q, k, v, g):
    """Σ_j c_ij (g_i·v_j) k_j, Σ_i c_ij (g_i·v_j) q_i and Σ_i c_ij g_i in fp64 from all n×n pairs."""
    c = (codes_q[:, :, :, None, :] == codes_k[:, :, None, :, :]).double().mean(-1)
    q, k, v, g = (x.double() for x in (q, k, v, g))
    w = c * (g @ v.transpose(-1, -2))
    return w @ k, w.transpose(-1, -2) @ q, c.transpose(-1, -2) @ g


def test_the_kernel_builds_where_a_compiler_is_present():
    """Where a compiler is present the fast route is what runs: a build that silently fell back would leave
    every other test here comparing the torch route with itself."""
    assert native.library() is not None
    assert native.usable(torch.zeros(1, 1, 4, 64))
    assert not native.usable(torch.zeros(1, 1, 4, 64, dtype=torch.float64))
    assert not native.usable(torch.zeros(1, 1, 4, 24))  # widths the vector code does not serve: torch route


@pytest.mark.parametrize(
    "d,tau,lopsided,layout",
    [
        (16, 4, False, "contiguous"),
        (32, 6, False, "heads transposed"),
        (48, 3, False, "contiguous"),  # three vectors a row
        (64, 8, False, "heads transposed"),
        (64, 2, False, "contiguous"),  # four buckets of ~75 a side: their d×d tables
        (64, 3, True, "heads transposed"),  # lopsided buckets: lanes over the larger side
        (128, 5, False, "contiguous"),
    ],
)
def test_kernel_gives_the_paper_sums(d, tau, lopsided, layout, monkeypatch):
    monkeypatch.setattr("longattn_cli.attention.yoso._DENSE_MAX", 0)
    inputs = problem(2, 3, 300, d, tau, 5, seed=d + tau, layout=layout, lopsided=lopsided)
    assert native.usable(*inputs[2:])
    for got, want in zip(collision_gradients(*inputs), paper_sums(*inputs), strict=True):
        assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d,tau", [(16, 3), (64, 8), (48, 12), (128, 2)])
def test_kernel_cumulates_each_querys_buckets(d, tau):
    """The forward's mean over hashes of each query's bucket sum equals the collision matrix times the values,
    with few buckets (one group of tables for all hashes) and with 4,096 (a hash at a time)."""
    codes_q, codes_k, v, *_ = problem(2, 3, 200, d, tau, 6, seed=d, layout="heads transposed")
    assert native.usable(v)
    c = (codes_q[:, :, :, None, :] == codes_k[:, :, None, :, :]).double().mean(-1)
    assert_close(cumulate(codes_q, codes_k, v, 2**tau).double(), c @ v.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau,hashes", [(8, 32), (3, 5), (16, 2)])
def test_kernel_packs_the_same_codes_as_the_torch_route(tau, hashes, monkeypatch):
    gen = torch.Generator().manual_seed(tau)
    q, k = (torch.nn.functional.normalize(torch.randn(2, 700, 3, 32, generator=gen), dim=-1) for _ in "qk")
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    settings = YosoSettings(hash_code_len=tau, num_hash=hashes, use_expectation=False, seed=4)
    packed = hash_codes(q, k, settings)
    monkeypatch.setenv("LONGATTN_NATIVE", "0")
    for a, b in zip(packed, hash_codes(q, k, settings), strict=True):
        assert torch.equal(a, b)


def test_kernel_and_torch_route_agree_on_a_layer(monkeypatch):
    """One YOSO layer at a length past the n×n counts (masked padding included): the same output and gradients
    with the kernel and with LONGATTN_NATIVE=0."""
    settings = {"hash_code_len": 8, "num_hash": 16, "use_expectation": False, "lsh_backward": True, "seed": 5}
    layer = build_attention("yoso", settings, 4, 64, 0.0)
    gen = torch.Generator().manual_seed(0)
    n = 1500
    q, k, v = (torch.randn(2, n, 4, 64, generator=gen).transpose(1, 2) for _ in range(3))
    grad = torch.randn(2, 4, n, 64, generator=gen)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 1200:] = False
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("LONGATTN_NATIVE", flag)
        xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out = layer(*xs, mask)
        out.backward(grad)
        results.append([out.detach()] + [x.grad for x in xs])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kernel_gives_the_same_bits_on_any_number_of_threads(monkeypatch):
    """Each head is summed by one thread in one order, so the thread count never changes a gradient."""
    monkeypatch.setattr("longattn_cli.attention.yoso._DENSE_MAX", 0)
    inputs = problem(1, 6, 400, 64, 5, 8, seed=1, layout="heads transposed")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = collision_gradients(*inputs)
        torch.set_num_threads(3)
        three = collision_gradients(*inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


def test_without_a_compiler_yoso_warns_once_and_keeps_the_torch_route(tmp_path):
    """The user's own lines in a fresh interpreter, with a compiler that fails: one warning that says what to
    install, then training goes on through the torch route with the same gradients as LONGATTN_NATIVE=0."""
    script = textwrap.dedent(
        """
        import os, warnings
        import torch
        from longattn_cli.attention import build_attention
        from longattn_cli.attention import yoso
        yoso._DENSE_MAX = 0
        layer = build_attention("yoso", {"use_expectation": False, "num_hash": 4, "seed": 1}, 2, 64, 0.0)
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 200, 64, generator=gen) for _ in range(3))
        mask = torch.ones(1, 200, dtype=torch.bool)

        def grads():
            xs = [x.clone().requires_grad_(True) for x in (q, k, v)]
            layer(*xs, mask).sum().backward()
            return [x.grad for x in xs]

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = grads(), grads()
        os.environ["LONGATTN_NATIVE"] = "0"
        for a, b in zip(first, grads()):
            assert torch.equal(a, b)
        print([str(w.message) for w in caught if "compiled CPU kernel" in str(w.message)])
        """
    )
    env = dict(os.environ, CXX="false", TORCH_EXTENSIONS_DIR=str(tmp_path), LONGATTN_NATIVE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    messages = eval(done.stdout.strip().splitlines()[-1])
    assert len(messages) == 1, messages
    assert "pip install ninja" in messages[0] and "LONGATTN_NATIVE=0" in messages[0]
