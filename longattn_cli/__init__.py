"""longattn: transformer encoders with efficient long-sequence attention.

``import longattn_cli`` registers the ``longattn`` model family with transformers' Auto classes (see
:mod:`longattn_cli.models.auto`), so a checkpoint longattn wrote loads with ``AutoModel*.from_pretrained``,
``pipeline(...)`` and ``SentenceTransformer(...)``. It imports torch and transformers to do so; the
``longattn`` command starts from :mod:`longattn_cmd`, which imports neither until a command needs them.
"""

__version__ = "0.1.0"

from longattn_cli.models import auto as _auto  # noqa: E402
from longattn_cli.models.checkpoints import load_model  # noqa: E402
from longattn_cli.models.export import export_roberta  # noqa: E402
from longattn_cli.models.modeling import (  # noqa: E402
    LongAttnConfig,
    LongAttnForMaskedLM,
    LongAttnForReplacedTokenDetection,
    LongAttnForSequenceClassification,
    LongAttnForTokenClassification,
    LongAttnModel,
)
from longattn_cli.models.tokenizer import load_tokenizer  # noqa: E402

_auto.register()

__all__ = [
    "LongAttnConfig",
    "LongAttnModel",
    "LongAttnForMaskedLM",
    "LongAttnForSequenceClassification",
    "LongAttnForTokenClassification",
    "LongAttnForReplacedTokenDetection",
    "load_model",
    "load_tokenizer",
    "export_roberta",
]
