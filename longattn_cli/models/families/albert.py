"""ALBERT checkpoints: factorised embeddings and layers shared in groups."""

from __future__ import annotations

from typing import Any

from longattn_cli.errors import UserError
from longattn_cli.models.families.common import (
    Importer,
    check_absolute,
    common_config,
    token_level,
)
from longattn_cli.models.families.lsg import lsg_attention

# AlbertConfig's defaults, for fields a config.json leaves out.
_ALBERT_DEFAULTS = {
    "vocab_size": 30000,
    "embedding_size": 128,
    "hidden_size": 4096,
    "num_hidden_layers": 12,
    "num_hidden_groups": 1,
    "num_attention_heads": 64,
    "intermediate_size": 16384,
    "inner_group_num": 1,
    "hidden_act": "gelu_new",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
}


def _albert_config(src: dict[str, Any]) -> dict[str, Any]:
    """ALBERT: factorised embeddings (``embedding_size``, always mapped to the hidden size) and layers shared
    in ``num_hidden_groups`` groups, kept shared (one set of weights per group)."""
    check_absolute(src)
    src = _ALBERT_DEFAULTS | {k: v for k, v in src.items() if v is not None}
    if src["inner_group_num"] != 1:
        raise UserError(
            f"ALBERT with inner_group_num={src['inner_group_num']} is not supported (only 1, as every "
            "published ALBERT): each shared group must be one layer"
        )
    if "classifier_dropout_prob" in src:
        src["classifier_dropout"] = src["classifier_dropout_prob"]
    return common_config(
        src,
        position_offset=0,
        embedding_size=src["embedding_size"],
        num_hidden_groups=src["num_hidden_groups"],
        **lsg_attention(src),
    )


def _albert_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "global_embeddings"):
        m[f"albert.embeddings.{name}.weight"] = f"longattn.embeddings.{name}.weight"
    pairs = {
        "attention.query": "query",
        "attention.key": "key",
        "attention.value": "value",
        "attention.dense": "attention_output",
        "attention.LayerNorm": "attention_norm",
        "ffn": "intermediate",
        "ffn_output": "output",
        "full_layer_layer_norm": "output_norm",
    }
    parts = {
        "albert.embeddings.LayerNorm": "longattn.embeddings.layer_norm",
        "albert.encoder.embedding_hidden_mapping_in": "longattn.embeddings.projection",
        "predictions.dense": "lm_head.dense",
        "predictions.LayerNorm": "lm_head.layer_norm",
    }
    for g in range(cfg.get("num_hidden_groups", 1)):
        src, dst = f"albert.encoder.albert_layer_groups.{g}.albert_layers.0", f"longattn.layers.{g}"
        parts |= {f"{src}.{a}": f"{dst}.{b}" for a, b in pairs.items()}
    if token_level(cfg):
        parts["classifier"] = "classifier"
    else:  # ALBERT's pooler + classifier is RoBERTa's dense + out_proj head, as BERT's
        parts |= {"albert.pooler": "classifier.dense", "classifier": "classifier.out_proj"}
    for a, b in parts.items():
        for t in ("weight", "bias"):
            m[f"{a}.{t}"] = f"{b}.{t}"
    m["predictions.decoder.weight"] = "lm_head.decoder.weight"
    m["predictions.bias" if "predictions.bias" in keys else "predictions.decoder.bias"] = "lm_head.bias"
    return m


IMPORTER = Importer("albert", _albert_config, _albert_keys)
