"""Which of our heads a source checkpoint carries, from its ``architectures``."""

from __future__ import annotations

from typing import Any


def detect_head(cfg: dict[str, Any]) -> str:
    """Our head matching the source's ``architectures`` (``base`` when none is recognised)."""
    arch = " ".join(cfg.get("architectures") or [])
    if (
        "ForPreTraining" in arch
    ):  # ELECTRA's discriminator; BERT's and ALBERT's MLM (their NSP/SOP heads dropped)
        return "replaced-token-detection" if cfg.get("model_type") == "electra" else "masked-lm"
    for suffix, head in (
        ("ForMaskedLM", "masked-lm"),
        ("ForSequenceClassification", "sequence-classification"),
        ("ForTokenClassification", "token-classification"),
    ):
        if suffix in arch:
            return head
    return "base"
