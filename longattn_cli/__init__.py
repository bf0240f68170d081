"""longattn: transformer encoders with efficient long-sequence attention.

Importing the package registers the ``longattn`` model family with transformers' Auto classes (as soon as
transformers is imported; see :mod:`longattn_cli.models.autoregister`), and is itself cheap: torch and transformers
load only when a model is used.
"""

__version__ = "0.1.0"

from longattn_cli.models import autoregister as _autoregister  # noqa: E402

_autoregister.install()

_MODELS = (
    "LongAttnConfig",
    "LongAttnModel",
    "LongAttnForMaskedLM",
    "LongAttnForSequenceClassification",
    "LongAttnForTokenClassification",
)


_CHECKPOINTS = ("load_model", "load_tokenizer", "export_roberta")


def __getattr__(name: str):
    if name in _MODELS:
        from longattn_cli.models import modeling

        return getattr(modeling, name)
    if name in _CHECKPOINTS:
        from longattn_cli.models import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_MODELS, *_CHECKPOINTS]
