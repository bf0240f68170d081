"""The least arithmetic of YOSO's exact LSH backward sums, per route, on random inputs:

    python scripts/lsh_backward_arithmetic.py 4096 16384 65536

Per bucket of n_q queries and n_k keys (one head, one hash) the sums take the cheaper of the in-bucket
products, 6·d·n_q·n_k, and the paper's d×d tables, 4·d²·(n_q + n_k); 12 heads × 64, τ 8, 32 hashes.
The last column is the least arithmetic of the benchmark's whole layer step in training: the roofline's own
count of the step (``algorithm_flops``: the mechanism's ``YosoAttention.flops`` in every head, hashing and the
cumulations, plus the four C×C projections) with its d×d tables replaced by the cheaper route per bucket, and
its growth from the previous length: what the step's time would grow by if both lengths ran at the same
rate.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from longattn_cli.attention import make_settings
from longattn_cli.attention.yoso import hash_codes
from longattn_cli.bench.roofline import algorithm_flops


def counts(codes: torch.Tensor, buckets: int) -> torch.Tensor:
    """Tokens per bucket, (heads · hashes, buckets), from codes (1, H, N, hashes)."""
    c = codes[0].permute(0, 2, 1).reshape(-1, codes.shape[2]).long()
    c = c + torch.arange(c.shape[0])[:, None] * buckets
    return torch.bincount(c.view(-1), minlength=c.shape[0] * buckets).view(-1, buckets).double()


def main(lengths: list[int], heads: int = 12, d: int = 64) -> None:
    s = make_settings(
        "yoso", {"use_expectation": False, "hash_code_len": 8, "num_hash": 32, "lsh_backward": True}
    )
    shape = dict(num_layers=1, hidden_size=heads * d, num_heads=heads, intermediate_size=4 * heads * d)
    yoso = dict(label="yoso-lsh", kind="ours", mechanism="yoso", settings=s.to_dict())
    last = None
    for n in lengths:
        torch.manual_seed(0)
        q, k = (F.normalize(torch.randn(1, heads, n, d), dim=-1) for _ in range(2))
        cq, ck = hash_codes(q, k, s)
        nq, nk = counts(cq, 2**s.hash_code_len), counts(ck, 2**s.hash_code_len)
        inside, tables = 6 * d * nq * nk, 4 * d * d * (nq + nk)
        cheaper = torch.minimum(inside, tables).sum().item()
        # The benchmark's count of the step; the mechanism's backward in it counts the tables route.
        counted = algorithm_flops(
            dict(scope="layer", mode="train", n=n, batch=1, shape=shape, candidate=yoso)
        )
        step = counted - tables.sum().item() + cheaper
        growth = "" if last is None else f" ({step / last:.2f}x)"
        print(
            f"n={n:,}: in-bucket {inside.sum() / 1e9:.1f} GFLOP, tables {tables.sum() / 1e9:.1f}, "
            f"cheaper per bucket {cheaper / 1e9:.1f}; layer step {step / 1e9:.1f}{growth}"
        )
        last = step


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [4096, 16384])
