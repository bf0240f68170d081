"""Attention mechanisms, one module per mechanism, looked up by name.

Every mechanism is an ``nn.Module`` subclass of :class:`Attention` registered with :func:`register`. The
encoder layer owns the q/k/v and output projections and calls the mechanism with one signature::

    out = mechanism(q, k, v, mask)   # q, k, v: (B, H, N, D); mask: (B, N) bool, True = real token

and gets back ``(B, H, N, D)``. Each mechanism declares a ``Settings`` dataclass
(``longattn_cli/attention/settings.py``); its fields are the keys a config's ``attention_settings`` may hold,
and ``__post_init__`` validates them. Names and settings need no torch; the classes are imported on first use.
"""

from longattn_cli.attention.settings import AttentionSettings, available, make_settings

_HEAVY = ("Attention", "build_attention", "get_mechanism", "register")


def __getattr__(name: str):
    if name in _HEAVY:
        from longattn_cli.attention import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AttentionSettings", "available", "make_settings", *_HEAVY]
