"""Attention mechanisms, one module per mechanism, looked up by name.

Every mechanism is an ``nn.Module`` subclass of :class:`Attention` registered with :func:`register`. The
encoder layer owns the q/k/v and output projections and calls the mechanism with one signature::

    out = mechanism(q, k, v, mask)   # q, k, v: (B, H, N, D); mask: (B, N) bool, True = real token

and gets back ``(B, H, N, D)``. Each mechanism declares a ``Settings`` dataclass; its fields are the keys a
config's ``attention_settings`` may hold, and ``__post_init__`` validates them.
"""

from longattn_cli.attention.base import (
    Attention,
    AttentionSettings,
    available,
    build_attention,
    get_mechanism,
    make_settings,
    register,
)

# Importing the modules registers them.
from longattn_cli.attention import softmax  # noqa: E402,F401  isort: skip
from longattn_cli.attention import nystrom  # noqa: E402,F401  isort: skip
from longattn_cli.attention import yoso  # noqa: E402,F401  isort: skip


from longattn_cli.attention import lsg  # noqa: E402,F401  isort: skip

__all__ = [
    "Attention",
    "AttentionSettings",
    "available",
    "build_attention",
    "get_mechanism",
    "make_settings",
    "register",
]
