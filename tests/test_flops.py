"""The benchmark's roofline: each mechanism's analytic FLOP count against torch's FLOP counter, on small
shapes where the mechanism is plain matrix products (SDPA through its math path, so that the counter sees
the products), and the layer's and model's counts as the benchmark adds them up."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from longattn_cli.attention import build_attention, get_mechanism, make_settings
from longattn_cli.bench.point import build, make_step
from longattn_cli.bench.roofline import algorithm_flops

LSG = {"block_size": 8, "sparse_block_size": 8, "sparsity_factor": 2}
CASES = [
    ("softmax", {"implementation": "eager"}, 40),
    ("softmax", {"implementation": "sdpa"}, 40),
    ("yoso", {"use_expectation": True}, 40),
    ("yoso", {"use_expectation": False, "num_hash": 4, "hash_code_len": 3, "lsh_backward": False}, 40),
    ("nystrom", {"num_landmarks": 8}, 64),
    ("nystrom", {"num_landmarks": 8, "pinv_iterations": 2}, 72),
    ("nystrom", {"num_landmarks": 64}, 40),  # n ≤ m: exact attention
    ("lsg", {**LSG, "sparsity_type": "none"}, 49),
    ("lsg", {**LSG, "sparsity_type": "stride"}, 49),
    ("lsg", {**LSG, "sparsity_type": "norm", "num_global_tokens": 3}, 53),  # a part block
    ("lsg", {**LSG, "sparsity_type": "norm"}, 12),  # two blocks or fewer: full attention
]


def counted(fn):
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


@pytest.mark.parametrize("name,settings,n", CASES, ids=lambda x: str(x))
def test_attention_counts_match_the_flop_counter(name, settings, n):
    h, d = 2, 8
    att = build_attention(name, settings, h, d)
    q, k, v = (torch.randn(1, h, n, d, requires_grad=True) for _ in range(3))
    out, forward = counted(lambda: att(q, k, v, None))
    _, backward = counted(lambda: out.sum().backward())
    fwd, bwd = get_mechanism(name).flops(make_settings(name, settings), n, d)
    if name == "yoso" and not settings["use_expectation"]:
        # LSH: the counter sees the hashing products (and reads the sparse table sums as dense products,
        # which they are not); the count's hashing term is checked here, the tables are n·h·d additions.
        hashing = 4 * n * d * settings["num_hash"] * settings["hash_code_len"]
        assert fwd - hashing == 2 * n * settings["num_hash"] * d
        assert forward >= h * hashing
        assert backward == h * bwd  # the expectation-formula backward: products only
        return
    assert (forward, backward) == (h * fwd, h * bwd)


@pytest.mark.parametrize(
    "name,settings", [("yoso", {"conv_window": 3}), ("nystrom", {"num_landmarks": 8, "conv_kernel_size": 3})]
)
def test_convolution_is_counted_in_the_forward(name, settings):
    h, d, n, w = 2, 8, 40, 3
    bare = {key: value for key, value in settings.items() if "conv" not in key}
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    _, with_conv = counted(lambda: build_attention(name, settings, h, d)(q, k, v, None))
    _, without = counted(lambda: build_attention(name, bare, h, d)(q, k, v, None))
    count = get_mechanism(name).flops
    extra = count(make_settings(name, settings), n, d)[0] - count(make_settings(name, bare), n, d)[0]
    assert with_conv - without == h * extra == h * 2 * n * d * w


@pytest.mark.parametrize("scope", ["layer", "model"])
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_benchmark_point_count_is_the_whole_step(scope, mode):
    """What ``longattn benchmark`` divides by the time: the mechanism in every head plus the projections
    (and at model scope the feed-forward blocks), forward or forward+backward, as torch counts the step."""
    shape = dict(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, vocab_size=50)
    cand = dict(label="softmax-eager", kind="ours", mechanism="softmax", settings={"implementation": "eager"})
    spec = dict(scope=scope, mode=mode, n=24, batch=2, shape=shape, candidate=cand, dtype="float32",
                device="cpu", dropout=0.0)  # fmt: skip
    module, run = build(spec)
    prepare, step = make_step(module, run, mode)
    prepare()
    _, flops = counted(step)
    assert flops == algorithm_flops(spec)
