"""DistilBERT checkpoints: BERT with its own field and key names and no token types."""

from __future__ import annotations

from typing import Any

import torch

from longattn_cli.errors import UserError
from longattn_cli.models.families.common import (
    Importer,
    common_config,
    token_level,
)
from longattn_cli.models.families.lsg import lsg_attention

# DistilBertConfig's defaults, for fields a config.json leaves out.
_DISTILBERT_DEFAULTS = {
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "n_layers": 6,
    "n_heads": 12,
    "dim": 768,
    "hidden_dim": 3072,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation": "gelu",
    "initializer_range": 0.02,
    "pad_token_id": 0,
}


def _distilbert_config(src: dict[str, Any]) -> dict[str, Any]:
    """DistilBERT is BERT with fewer layers, its own field names and no token types (LayerNorm eps 1e-12)."""
    src = _DISTILBERT_DEFAULTS | {k: v for k, v in src.items() if v is not None}
    if src.get("sinusoidal_pos_embds"):
        raise UserError(
            "DistilBERT with sinusoidal_pos_embds=true is not supported (its positions are not learned)"
        )
    names = {
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "hidden_dim": "intermediate_size",
        "activation": "hidden_act",
        "dropout": "hidden_dropout_prob",
        "attention_dropout": "attention_probs_dropout_prob",
    }
    bert_like = {names.get(k, k): v for k, v in src.items()}
    return common_config(
        bert_like, position_offset=0, type_vocab_size=1, layer_norm_eps=1e-12, **lsg_attention(src)
    )


def _distilbert_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = {
        "distilbert.embeddings.word_embeddings.weight": "longattn.embeddings.word_embeddings.weight",
        "distilbert.embeddings.position_embeddings.weight": "longattn.embeddings.position_embeddings.weight",
        "distilbert.embeddings.token_type_embeddings.weight": "longattn.embeddings.token_type_embeddings.weight",
        "distilbert.embeddings.global_embeddings.weight": "longattn.embeddings.global_embeddings.weight",
    }
    pairs = {
        "attention.q_lin": "query",
        "attention.k_lin": "key",
        "attention.v_lin": "value",
        "attention.out_lin": "attention_output",
        "sa_layer_norm": "attention_norm",
        "ffn.lin1": "intermediate",
        "ffn.lin2": "output",
        "output_layer_norm": "output_norm",
    }
    heads = {"vocab_transform": "lm_head.dense", "vocab_layer_norm": "lm_head.layer_norm"}
    for t in ("weight", "bias"):
        m[f"distilbert.embeddings.LayerNorm.{t}"] = f"longattn.embeddings.layer_norm.{t}"
        for i in range(cfg.get("n_layers", 6)):
            for a, b in pairs.items():
                m[f"distilbert.transformer.layer.{i}.{a}.{t}"] = f"longattn.layers.{i}.{b}.{t}"
        for a, b in heads.items():
            m[f"{a}.{t}"] = f"{b}.{t}"
    m["vocab_projector.weight"] = "lm_head.decoder.weight"
    m["vocab_projector.bias"] = "lm_head.bias"
    if token_level(cfg):
        m |= {f"classifier.{t}": f"classifier.{t}" for t in ("weight", "bias")}
    # Not mapped: DistilBertForSequenceClassification's pre_classifier + ReLU head (ours: dense + tanh), so
    # such a checkpoint gets a fresh head, as YOSO's and Nyströmformer's do.
    return m


def _distilbert_missing(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """No token types: one all-zero row adds nothing to the embeddings, as DistilBERT has it."""
    word = next(v for k, v in state.items() if k.endswith("embeddings.word_embeddings.weight"))
    return {"distilbert.embeddings.token_type_embeddings.weight": word.new_zeros(1, word.shape[1])}


IMPORTER = Importer("distilbert", _distilbert_config, _distilbert_keys, _distilbert_missing)
