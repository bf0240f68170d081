"""transformers' implementations measured beside ours (``--reference``): which model stands for which mechanism,
where it cannot run, and the arithmetic of the three foreign long-sequence models (Longformer, BigBird,
ModernBERT) by which the roofline rates them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Reference:
    """transformers' implementation of a mechanism, measured next to ours with ``--reference``.

    Attributes:
        label: row label in the results.
        family: transformers class prefix (``{family}Config``, ``{family}Model``).
        config: (our settings of the paired mechanism, length) → extra config fields. Our settings whose names
            the reference's config also has are passed through first, so τ, hashes, landmarks... match.
        unavailable: (settings, length, device) → why it cannot run there, or None.
    """

    label: str
    family: str
    config: Callable[[dict[str, Any], int], dict[str, Any]] = lambda settings, n: {}
    unavailable: Callable[[dict[str, Any], int, str], str | None] = lambda settings, n, device: None
    # False: the reference keeps its own defaults even where one of our settings has the same name.
    passthrough: bool = True
    note: Callable[[int], str | None] = lambda n: None  # what the reference does at length n, for the table
    layer: str = "encoder.layer.0.attention"  # its separable attention module (layer scope)
    # Its own attention FLOP count (n, head width d, scope) → (forward, backward) per head and layer, where
    # the paired mechanism's count does not describe it; None: the paired mechanism's.
    flops: Callable[[int, int, str], tuple[float, float]] | None = None


def _yoso_lsh_unavailable(settings, n, device):
    if device != "cuda":
        return "transformers' YOSO LSH mode runs only with a CUDA kernel fetched from the hub"
    try:
        from transformers.models.yoso import modeling_yoso

        modeling_yoso.load_cuda_kernels()
    except Exception as exc:  # noqa: BLE001 - any failure to fetch or load the kernel means "not here"
        return f"transformers' YOSO LSH kernel cannot be loaded ({type(exc).__name__})"
    return None


def _nystrom_unavailable(settings, n, device):
    m = settings.get("num_landmarks", 64)
    if n % m:  # its segment means reshape n into (m, n / m)
        return f"transformers' Nyströmformer needs the length to be a multiple of num_landmarks={m}"
    return None


# Mechanism name → the implementations users would otherwise run. The SDPA baseline (ours ÷ SDPA) is the
# first of SDPA_BASELINES measured in the same run.
REFERENCES: dict[str, list[Reference]] = {
    "softmax": [Reference("hf-roberta-sdpa", "Roberta", lambda s, n: {"attn_implementation": "sdpa"})],
    "yoso": [
        Reference("hf-yoso-e", "Yoso", lambda s, n: {"use_expectation": True}),
        Reference("hf-yoso-lsh", "Yoso", lambda s, n: {"use_expectation": False}, _yoso_lsh_unavailable),
    ],
    # Its input length must equal segment_means_seq_len, so that is set to each measured length; where
    # num_landmarks equals the length it computes exact softmax attention instead. Its pseudo-inverse starts
    # as published (inv_coeff_init_option=True raises there).
    "nystrom": [
        Reference(
            "hf-nystrom",
            "Nystromformer",
            lambda s, n: {"segment_means_seq_len": n, "inv_coeff_init_option": False},
            _nystrom_unavailable,
        )
    ],
}
# The long-document encoders users pick instead of LSG, with their own window and block defaults: Longformer's
# window of 512 (256 keys each side) with the first token global, BigBird's blocks of 64 with 3 random blocks
# (block_sparse; at most 704 tokens it runs full attention, and says so), ModernBERT's 128-token local
# attention with every third layer global. Longformer and BigBird pad inputs to their window or block
# themselves; that padding is part of their time.
_BIGBIRD_FULL_UNTIL = (5 + 2 * 3) * 64  # transformers' BigBirdModel: block_sparse needs more tokens than this


def _window(n: int, w: int) -> int:
    return -(-n // w) * w


def _attention_flops(keys: float, n: int, d: int) -> tuple[float, float]:
    """Scores and weighted sum for ``keys`` keys per query on average: 4·n·keys·d forward, twice that back."""
    return 4.0 * n * keys * d, 8.0 * n * keys * d


def _longformer_flops(n, d, scope):  # window 512 (513 keys) on the padded length, plus one global token
    m = _window(n, 512)
    fwd, bwd = _attention_flops(514, m, d)  # the global token is one more key of every query ...
    return fwd + 4.0 * m * d, bwd + 8.0 * m * d  # ... and its query sees every key


# The formulas above, for ``benchmark --list`` (m: the length padded to the reference's window or block).
REFERENCE_FLOPS = {
    "hf-longformer": "4·m·514·d + 4·m·d (window 512 + the global token; m = n padded to 512)",
    "hf-bigbird": "4·d·((m - 128)·8·64 + 128·m) (m = n padded to 64); n ≤ 704: 4·n²·d",
    "hf-modernbert": "4·n·K·d, K = n in every third layer, min(n, 129) in the others (averaged); layer "
    "scope: 4·n²·d (its first layer is global)",
}


def _bigbird_flops(n, d, scope):
    """The first and last blocks global, the others 3 sliding + 2 global + 3 random blocks of keys."""
    m = _window(n, 64)
    if n <= _BIGBIRD_FULL_UNTIL:
        return _attention_flops(n, n, d)
    return _attention_flops(((m - 128) * 8 * 64 + 128 * m) / m, m, d)


def _modernbert_flops(n, d, scope):  # every third layer global (the first one is), the others 129-token local
    local = min(n, 129)
    if scope == "layer":
        return _attention_flops(n, n, d)
    layers = [n if i % 3 == 0 else local for i in range(12)]  # the average over a base model's pattern
    return _attention_flops(sum(layers) / len(layers), n, d)


REFERENCES["lsg"] = [
    Reference(
        "hf-longformer",
        "Longformer",
        lambda s, n: {"attention_window": 512, "max_position_embeddings": _window(n, 512) + 2},
        passthrough=False,
        note=lambda n: (
            f"window 512, first token global; pads {n:,} to {_window(n, 512):,}"
            if n % 512
            else "window 512, first token global"
        ),
        flops=_longformer_flops,
    ),
    Reference(
        "hf-bigbird",
        "BigBird",
        lambda s, n: {
            "attention_type": "block_sparse",
            "block_size": 64,
            "num_random_blocks": 3,
            "max_position_embeddings": _window(n, 64),
        },
        passthrough=False,
        note=lambda n: (
            f"ran FULL attention: block_sparse needs more than {_BIGBIRD_FULL_UNTIL} tokens"
            if n <= _BIGBIRD_FULL_UNTIL
            else f"block_sparse, blocks of 64, 3 random; pads {n:,} to {_window(n, 64):,}"
            if n % 64
            else "block_sparse, blocks of 64, 3 random"
        ),
        flops=_bigbird_flops,
    ),
    Reference(
        "hf-modernbert",
        "ModernBert",
        lambda s, n: {"local_attention": 128, "max_position_embeddings": max(n, 8192), "pad_token_id": 1},
        passthrough=False,
        note=lambda n: (
            "local 128 with every third layer global; transformers runs the local layers as "
            "SDPA with a sliding-window mask (n×n work)"
        ),
        layer="layers.0.attn",
        flops=_modernbert_flops,
    ),
]
