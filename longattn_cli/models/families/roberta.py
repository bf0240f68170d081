"""RoBERTa, XLM-RoBERTa and CamemBERT checkpoints: positions after the padding id, RoBERTa's heads."""

from __future__ import annotations

from typing import Any

from longattn_cli.models.families.common import (
    Importer,
    bert_style_body,
    check_absolute,
    common_config,
    roberta_heads,
)
from longattn_cli.models.families.lsg import lsg_attention


def _roberta_config(src: dict[str, Any]) -> dict[str, Any]:
    check_absolute(src)
    return common_config(src, position_offset=src.get("pad_token_id", 1) + 1, **lsg_attention(src))


def _roberta_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = bert_style_body("roberta", cfg["num_hidden_layers"]) | roberta_heads()
    if any(k.startswith("classifier.weight") for k in keys):  # token classification: one linear layer
        m |= {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
    return m


IMPORTER = Importer("roberta", _roberta_config, _roberta_keys)
