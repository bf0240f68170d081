"""The shared contract of all attention mechanisms and the registry of their classes."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import nn

from longattn_cli.attention.settings import (
    BUILTIN_MODULES,
    SETTINGS,
    AttentionSettings,
    make_settings,
    settings_class,
)


class Attention(nn.Module):
    """A mechanism: ``forward(q, k, v, mask) -> out`` on ``(B, H, N, D)`` tensors.

    Args:
        settings: the mechanism's own settings dataclass.
        num_heads: number of attention heads (for per-head parameters such as a convolution).
        head_dim: size of one head.
        dropout: attention-probability dropout, applied in training where the mechanism has probabilities.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[AttentionSettings]]

    def __init__(self, settings: AttentionSettings, num_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.settings = settings
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout

    # How :meth:`flops` counts, in one line per mode (shown by ``longattn benchmark --list``).
    FLOPS: ClassVar[str] = "not counted"

    @classmethod
    def flops(cls, settings: AttentionSettings, n: int, d: int) -> tuple[float, float] | None:
        """Floating-point operations the algorithm needs for one head of one sequence of ``n`` real tokens of
        width ``d``: (forward, backward), a multiply-add counting as two; None where not counted.

        Counts are analytic (what the algorithm's products need, not what a profiler sees): each mechanism
        documents its formula in :attr:`FLOPS`, next to the code that does the work. Element-wise work
        (softmax, masks, normalisation) is left out: it is a small share, and memory-bound.
        """
        return None

    @classmethod
    def benchmark_variants(cls) -> dict[str, dict[str, Any]]:
        """Labelled settings that ``longattn benchmark`` measures by default (label → settings dict)."""
        return cls.Settings.benchmark_variants() or {cls.name: {}}

    def export_problem(self) -> str | None:
        """Why these settings cannot be exported to ONNX (one line saying what to use instead), or None."""
        return None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def exporting() -> bool:
    """True while ``torch.export`` traces the model (``longattn export``). Mechanisms then take one branch-free
    route for every length and padding, where eager mode picks shortcuts from the data (no padding, a short
    input): a traced graph keeps only the branches its example input took."""
    return torch.compiler.is_exporting()


def real_first_order(mask: torch.Tensor) -> torch.Tensor:
    """The stable order putting each row's real tokens first: (B, N) positions from a (B, N) bool mask.

    Counted rather than sorted (a real token goes to its rank among the real ones, padding after them in its
    rank among the padding), so it exports to ONNX as a scatter, where a stable sort has no exact equivalent.
    """
    real = mask.long()
    rank_real = real.cumsum(dim=1) - 1
    rank_pad = (1 - real).cumsum(dim=1) - 1 + real.sum(dim=1, keepdim=True)
    destination = torch.where(mask, rank_real, rank_pad)  # (B, N): where each position goes
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(destination)
    return torch.empty_like(destination).scatter(1, destination, positions)


def softmax_flops(n: int, d: int) -> tuple[float, float]:
    """Exact attention's count per head: 4·n²·d forward (q kᵀ, p v), 8·n²·d backward (∂p, ∂v, ∂q, ∂k); the
    mechanisms that fall back to it on short inputs count it so too."""
    return 4.0 * n * n * d, 8.0 * n * n * d


_REGISTRY: dict[str, type[Attention]] = {}


def register(cls: type[Attention]) -> type[Attention]:
    """Class decorator that adds a mechanism (and its settings) to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"attention {cls.name!r} is registered twice")
    known = SETTINGS.get(cls.name)
    if known is not None and known is not cls.Settings:
        raise ValueError(f"attention {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    SETTINGS[cls.name] = cls.Settings
    return cls


def get_mechanism(name: str) -> type[Attention]:
    """The mechanism class registered as ``name``; a :class:`UserError` names the valid ones otherwise."""
    settings_class(name)  # unknown names fail here, with the valid ones
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])  # registers it
    return _REGISTRY[name]


def build_attention(
    name: str, settings: dict[str, Any] | None, num_heads: int, head_dim: int, dropout: float = 0.0
) -> Attention:
    """Instantiate mechanism ``name`` with validated settings."""
    return get_mechanism(name)(make_settings(name, settings), num_heads, head_dim, dropout)
