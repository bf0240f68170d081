"""longattn: transformer encoders with efficient long-sequence attention.

Importing the package registers the ``longattn`` model family with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from longattn_cli.modeling import (
    LongAttnConfig,
    LongAttnForMaskedLM,
    LongAttnForSequenceClassification,
    LongAttnForTokenClassification,
    LongAttnModel,
)

__version__ = "0.1.0"

AutoConfig.register("longattn", LongAttnConfig, exist_ok=True)
AutoModel.register(LongAttnConfig, LongAttnModel, exist_ok=True)
AutoModelForMaskedLM.register(LongAttnConfig, LongAttnForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(LongAttnConfig, LongAttnForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(LongAttnConfig, LongAttnForTokenClassification, exist_ok=True)

__all__ = [
    "LongAttnConfig",
    "LongAttnModel",
    "LongAttnForMaskedLM",
    "LongAttnForSequenceClassification",
    "LongAttnForTokenClassification",
]
