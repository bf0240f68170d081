"""BERT checkpoints: positions from 0, BERT's MLM head, its pooler and classifier as a RoBERTa-style head."""

from __future__ import annotations

from typing import Any

from longattn_cli.models.families.common import (
    Importer,
    bert_mlm_head,
    bert_style_body,
    check_absolute,
    common_config,
    token_level,
)
from longattn_cli.models.families.lsg import lsg_attention


def _bert_config(src: dict[str, Any]) -> dict[str, Any]:
    check_absolute(src)
    return common_config(
        src, position_offset=0, pad_token_id=src.get("pad_token_id", 0), **lsg_attention(src)
    )


def _bert_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = bert_style_body("bert", cfg["num_hidden_layers"]) | bert_mlm_head()
    for t in ("weight", "bias"):
        if token_level(cfg):
            m[f"classifier.{t}"] = f"classifier.{t}"
        else:  # BERT's pooler + classifier is RoBERTa's dense + out_proj head
            m[f"bert.pooler.dense.{t}"] = f"classifier.dense.{t}"
            m[f"classifier.{t}"] = f"classifier.out_proj.{t}"
    return m


IMPORTER = Importer("bert", _bert_config, _bert_keys)
