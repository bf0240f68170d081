"""ELECTRA checkpoints: embeddings of their own width, the generator's and the discriminator's heads."""

from __future__ import annotations

from typing import Any

from longattn_cli.models.families.common import (
    Importer,
    bert_style_body,
    check_absolute,
    common_config,
    token_level,
)
from longattn_cli.models.families.lsg import lsg_attention

# ElectraConfig's defaults, for fields a config.json leaves out.
_ELECTRA_DEFAULTS = {
    "vocab_size": 30522,
    "embedding_size": 128,
    "hidden_size": 256,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "hidden_act": "gelu",
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def _electra_config(src: dict[str, Any]) -> dict[str, Any]:
    """ELECTRA is BERT with embeddings of their own width (``embedding_size``, mapped to the hidden size when
    it differs), a gelu generator head and a gelu sequence-classification head."""
    check_absolute(src)
    src = _ELECTRA_DEFAULTS | {k: v for k, v in src.items() if v is not None}
    e = src["embedding_size"]
    return common_config(
        src,
        position_offset=0,
        embedding_size=None if e == src["hidden_size"] else e,  # ElectraModel has no projection then
        classifier_activation="gelu",
        lm_head_act="gelu",
        **lsg_attention(src),
    )


def _electra_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = bert_style_body("electra", cfg.get("num_hidden_layers", 12))
    parts = {
        "electra.embeddings_project": "longattn.embeddings.projection",
        "generator_predictions.dense": "lm_head.dense",
        "generator_predictions.LayerNorm": "lm_head.layer_norm",
        "discriminator_predictions.dense": "discriminator",
        "discriminator_predictions.dense_prediction": "prediction",
    }
    if token_level(cfg):
        parts["classifier"] = "classifier"
    else:
        parts |= {"classifier.dense": "classifier.dense", "classifier.out_proj": "classifier.out_proj"}
    for a, b in parts.items():
        for t in ("weight", "bias"):
            m[f"{a}.{t}"] = f"{b}.{t}"
    m["generator_lm_head.weight"] = "lm_head.decoder.weight"
    m["generator_lm_head.bias"] = "lm_head.bias"
    return m


IMPORTER = Importer("electra", _electra_config, _electra_keys)
