"""Every mechanism's settings, and the registry of names: plain Python, so that a recipe or a flag is checked
before torch is imported.

A mechanism's ``Settings`` dataclass lists the keys a config's ``attention_settings`` may hold and validates
them in ``__post_init__``. The built-in mechanisms' modules are imported only when a model is built
(:func:`longattn_cli.attention.base.get_mechanism`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from longattn_cli.errors import UserError

IMPLEMENTATIONS = ("sdpa", "eager")
PINV_INITS = ("original", "exact")
MAX_HASH_CODE_LEN = 16
SPARSITY_TYPES = ("norm", "pooling", "lsh", "stride", "block_stride", "bos_pooling", "none")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass
class AttentionSettings:
    """Base class of every mechanism's settings; subclasses add fields and validate in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def benchmark_variants(cls) -> dict[str, dict[str, Any]] | None:
        """Labelled settings that ``longattn benchmark`` measures by default (label → settings dict);
        None: the mechanism's name with its defaults."""
        return None


@dataclasses.dataclass
class SoftmaxSettings(AttentionSettings):
    """Settings of exact attention.

    Attributes:
        implementation: ``sdpa`` (torch's fused scaled_dot_product_attention) or ``eager`` (explicit
            matmul-softmax-matmul, mainly as a benchmark reference).
    """

    implementation: str = "sdpa"

    @classmethod
    def benchmark_variants(cls):
        return {"softmax-sdpa": {"implementation": "sdpa"}, "softmax-eager": {"implementation": "eager"}}

    def __post_init__(self):
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation={self.implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}"
            )


@dataclasses.dataclass
class NystromSettings(AttentionSettings):
    """Settings of Nyströmformer attention.

    Attributes:
        num_landmarks: number of landmarks m; sequences with at most m real tokens get exact attention.
        pinv_iterations: iterations of the pseudo-inverse approximation (6 in the paper).
        conv_kernel_size: odd kernel length of the depthwise convolution over V added to the output (one
            filter per head, as in the published checkpoints), or None for no convolution.
        pinv_init: ``original`` (Z₀ = Aᵀ / max column sum over the whole batch, as published) or ``exact``
            (Z₀ = Aᵀ / ‖A‖₁ per matrix).
    """

    num_landmarks: int = 64
    pinv_iterations: int = 6
    conv_kernel_size: int | None = None
    pinv_init: str = "original"

    @classmethod
    def benchmark_variants(cls):
        return {"nystrom": {"num_landmarks": 64, "conv_kernel_size": 65}}

    def __post_init__(self):
        if not _is_int(self.num_landmarks) or self.num_landmarks < 1:
            raise ValueError(f"num_landmarks={self.num_landmarks!r} must be a positive integer")
        if not _is_int(self.pinv_iterations) or self.pinv_iterations < 1:
            raise ValueError(f"pinv_iterations={self.pinv_iterations!r} must be a positive integer")
        k = self.conv_kernel_size
        if k is not None and (not _is_int(k) or k < 1 or k % 2 == 0):
            raise ValueError(f"conv_kernel_size={k!r} must be an odd positive integer or None")
        if self.pinv_init not in PINV_INITS:
            raise ValueError(f"pinv_init={self.pinv_init!r} is not one of {', '.join(PINV_INITS)}")


@dataclasses.dataclass
class YosoSettings(AttentionSettings):
    """Settings of YOSO, named and defaulted as in transformers' ``YosoConfig``.

    Attributes:
        hash_code_len: τ, bits per hash; buckets per table are 2^τ and the weights are B = (1 - θ/π)^τ.
        num_hash: hashes averaged in LSH mode (ignored in expectation mode).
        use_expectation: compute the expectation exactly (O(n²) time) instead of sampling with LSH.
        use_fast_hash: hash with three random ±1 diagonals and Walsh–Hadamard transforms (head_dim
            zero-padded into a rotation at least 4× as wide; ``yoso.fast_hash_dim``) instead of Gaussian
            random projections.
        lsh_backward: in LSH mode, compute gradients with weighted LSH cumulation (linear in n); otherwise
            with the expectation formula (O(n²) time, computed in row chunks so memory stays O(n)).
        conv_window: odd kernel size of a per-head depthwise convolution over the (masked) values added to
            the output, or None for none.
        seed: fixes the hash functions: every call draws the same ones (reproducible inference). None draws
            fresh ones from torch's global generator at every call (as in training).
    """

    hash_code_len: int = 9
    num_hash: int = 64
    use_expectation: bool = True
    use_fast_hash: bool = True
    lsh_backward: bool = True
    conv_window: int | None = None
    seed: int | None = None

    @classmethod
    def benchmark_variants(cls):
        return {
            "yoso-e": {"use_expectation": True},
            "yoso-lsh": {"use_expectation": False, "lsh_backward": True, "num_hash": 32, "hash_code_len": 8},
            # LSH forward with the expectation-formula backward: O(n²) backward, but no d² factor.
            "yoso-lsh-ebwd": {
                "use_expectation": False,
                "lsh_backward": False,
                "num_hash": 32,
                "hash_code_len": 8,
            },
        }

    def __post_init__(self):
        if not _is_int(self.hash_code_len) or not 1 <= self.hash_code_len <= MAX_HASH_CODE_LEN:
            raise ValueError(
                f"hash_code_len={self.hash_code_len!r} must be an integer from 1 to {MAX_HASH_CODE_LEN}"
            )
        if not _is_int(self.num_hash) or self.num_hash < 1:
            raise ValueError(f"num_hash={self.num_hash!r} must be an integer of at least 1")
        for name in ("use_expectation", "use_fast_hash", "lsh_backward"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        w = self.conv_window
        if w is not None and (not _is_int(w) or w < 1 or w % 2 == 0):
            raise ValueError(f"conv_window={w!r} must be null or an odd positive integer (e.g. 3, 5, 65)")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed={self.seed!r} must be null or a non-negative integer")


@dataclasses.dataclass
class LSGSettings(AttentionSettings):
    """Settings of LSG attention, named as in the published LSG configs.

    Attributes:
        block_size: queries per local block; each block sees its neighbours (3 blocks of keys).
        sparse_block_size: compressed tokens attended on each side of the local window (0: none).
        sparsity_factor: tokens per compressed token; must divide ``block_size``.
        sparsity_type: how tokens are compressed, one of ``SPARSITY_TYPES``.
        num_global_tokens: learned global tokens the encoder prepends (1 to 512).
        adaptive: pad the input to a multiple of ``block_size`` (masked); without it, lengths above two
            blocks must be multiples of ``block_size``.
        mask_first_token: hide the first real token (BOS/CLS) as a key, since the first global token
            plays its role.
        pool_with_global: the encoder's output at the first real token is the first global token's.
        lsh_num_pre_rounds: hashing rounds before the final one (``lsh`` only).
    """

    block_size: int = 128
    sparse_block_size: int = 128
    sparsity_factor: int = 2
    sparsity_type: str = "norm"
    num_global_tokens: int = 1
    adaptive: bool = True
    mask_first_token: bool = False
    pool_with_global: bool = True
    lsh_num_pre_rounds: int = 1

    @classmethod
    def benchmark_variants(cls):
        base = dict(block_size=128, sparse_block_size=128, sparsity_factor=2, num_global_tokens=1)
        kinds = ("norm", "bos_pooling", "pooling", "stride", "block_stride")
        return {f"lsg-{k}": {**base, "sparsity_type": k} for k in kinds}

    def __post_init__(self):
        if self.sparsity_type is None:  # published configs write null for "no sparse tokens"
            self.sparsity_type = "none"
        if self.sparsity_type not in SPARSITY_TYPES:
            raise ValueError(
                f"sparsity_type={self.sparsity_type!r} is not one of {', '.join(SPARSITY_TYPES)}"
            )
        for name in ("block_size", "sparsity_factor"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(self.sparse_block_size, int) or self.sparse_block_size < 0:
            raise ValueError(f"sparse_block_size={self.sparse_block_size!r} must be an integer >= 0")
        if self.block_size % self.sparsity_factor:
            raise ValueError(
                f"block_size={self.block_size} is not divisible by sparsity_factor={self.sparsity_factor}"
            )
        if not isinstance(self.num_global_tokens, int) or not 1 <= self.num_global_tokens <= 512:
            raise ValueError(f"num_global_tokens={self.num_global_tokens!r} must be between 1 and 512")
        if self.lsh_num_pre_rounds < 0:
            raise ValueError(f"lsh_num_pre_rounds={self.lsh_num_pre_rounds} must be >= 0")
        if self.mask_first_token and not self.pool_with_global:
            raise ValueError(
                "mask_first_token=True needs pool_with_global=True (the first token's output comes from the global token)"
            )
        chunk = min(self.block_size, self.sparse_block_size)
        if (
            self.sparsity_type in ("norm", "lsh")
            and chunk
            and (self.block_size % chunk or chunk % self.sparsity_factor)
        ):
            raise ValueError(
                f"sparsity_type={self.sparsity_type!r} compresses chunks of min(block_size, sparse_block_size)={chunk} "
                f"tokens, which must divide block_size={self.block_size} and be a multiple of sparsity_factor={self.sparsity_factor}"
            )

    @property
    def uses_sparse(self) -> bool:
        return self.sparsity_type != "none" and self.sparse_block_size > 0


# name -> settings class; the built-in mechanisms' modules, imported when one is built.
SETTINGS: dict[str, type[AttentionSettings]] = {
    "softmax": SoftmaxSettings,
    "nystrom": NystromSettings,
    "yoso": YosoSettings,
    "lsg": LSGSettings,
}
BUILTIN_MODULES = {name: f"longattn_cli.attention.{name}" for name in SETTINGS}


def available() -> list[str]:
    """Names of the registered mechanisms, sorted."""
    return sorted(SETTINGS)


def settings_class(name: str) -> type[AttentionSettings]:
    """The settings dataclass of mechanism ``name``; a :class:`UserError` names the valid ones otherwise."""
    try:
        return SETTINGS[name]
    except KeyError:
        raise UserError(f"unknown attention {name!r}; valid: {', '.join(available())}") from None


def make_settings(name: str, values: dict[str, Any] | None = None) -> AttentionSettings:
    """Build and validate the settings of mechanism ``name`` from a plain dict.

    Unknown keys are rejected with the list of valid ones.
    """
    cls = settings_class(name)
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(unknown)} for attention {name!r}; valid: {', '.join(sorted(fields)) or 'none'}"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"attention {name!r}: {exc}") from None
