"""The shared contract of all attention mechanisms and the registry by name."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from longattn_cli.errors import UserError


@dataclasses.dataclass
class AttentionSettings:
    """Base class of every mechanism's settings; subclasses add fields and validate in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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

    @classmethod
    def benchmark_variants(cls) -> dict[str, dict[str, Any]]:
        """Labelled settings that ``longattn benchmark`` measures by default (label → settings dict)."""
        return {cls.name: {}}

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[Attention]] = {}


def register(cls: type[Attention]) -> type[Attention]:
    """Class decorator that adds a mechanism to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"attention {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered mechanisms, sorted."""
    return sorted(_REGISTRY)


def get_mechanism(name: str) -> type[Attention]:
    """The mechanism class registered as ``name``; a :class:`UserError` names the valid ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown attention {name!r}; valid: {', '.join(available())}") from None


def make_settings(name: str, values: dict[str, Any] | None = None) -> AttentionSettings:
    """Build and validate the settings of mechanism ``name`` from a plain dict.

    Unknown keys are rejected with the list of valid ones.
    """
    settings_cls = get_mechanism(name).Settings
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(unknown)} for attention {name!r}; valid: {', '.join(sorted(fields)) or 'none'}"
        )
    try:
        return settings_cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"attention {name!r}: {exc}") from None


def build_attention(
    name: str, settings: dict[str, Any] | None, num_heads: int, head_dim: int, dropout: float = 0.0
) -> Attention:
    """Instantiate mechanism ``name`` with validated settings."""
    return get_mechanism(name)(make_settings(name, settings), num_heads, head_dim, dropout)
