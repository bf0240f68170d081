"""The longattn family in transformers' Auto classes and pipelines.

This is the registration transformers documents for a model family of one's own ("Customizing models":
``AutoConfig.register`` and ``AutoModel*.register``). :func:`register` runs when ``longattn_cli`` is imported,
so ``import longattn_cli`` is all a user needs before ``AutoModelForMaskedLM.from_pretrained(dir)``,
``pipeline("fill-mask", model=dir)`` or ``SentenceTransformer(dir)``, whatever was imported before it.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from longattn_cli.models.configuration import LongAttnConfig
from longattn_cli.models.modeling import (
    LongAttnForMaskedLM,
    LongAttnForReplacedTokenDetection,
    LongAttnForSequenceClassification,
    LongAttnForTokenClassification,
    LongAttnModel,
)

# Each Auto class and the head it builds for a longattn checkpoint.
AUTO_CLASSES = (
    (AutoModel, LongAttnModel),
    (AutoModelForMaskedLM, LongAttnForMaskedLM),
    (AutoModelForPreTraining, LongAttnForReplacedTokenDetection),
    (AutoModelForSequenceClassification, LongAttnForSequenceClassification),
    (AutoModelForTokenClassification, LongAttnForTokenClassification),
)


def register() -> None:
    """Register ``model_type = "longattn"`` and its heads; calling it again changes nothing."""
    AutoConfig.register(LongAttnConfig.model_type, LongAttnConfig, exist_ok=True)
    for auto_class, head in AUTO_CLASSES:
        auto_class.register(LongAttnConfig, head, exist_ok=True)
