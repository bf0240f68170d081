"""What the BERT-derived families share: the config fields that carry over, the encoder's key map, the
heads' key maps, and :class:`Importer`, the shape of one family's translation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from longattn_cli.errors import UserError

# Config fields that carry over unchanged from BERT-like configs.
COMMON_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "classifier_dropout",
    "id2label",
    "label2id",
    "problem_type",
)


@dataclasses.dataclass
class Importer:
    """How to bring one foreign ``model_type`` into the family.

    Attributes:
        prefix: the source's base-model prefix (``roberta``, ``bert``...).
        config: source config dict → keyword arguments of :class:`LongAttnConfig`.
        key_map: (source config dict, source state-dict keys) → {source key: our key}, with our keys named
            as in the full ``*ForX`` model (``longattn.``-prefixed). Keys it leaves out are dropped.
        head_of: which of our heads the source architecture carries.
    """

    prefix: str
    config: Callable[[dict[str, Any]], dict[str, Any]]
    key_map: Callable[[dict[str, Any], list[str]], dict[str, str]]
    # (source config, state) → tensors the source lacks and ours needs, under source keys (None: none).
    missing: Callable[[dict[str, Any], dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


# Config fields that other families (transformers' own classes) name differently: BERT's name → theirs.
_FIELD_NAMES = {
    "modernbert": {
        "hidden_dropout_prob": ("embedding_dropout", "mlp_dropout"),
        "attention_probs_dropout_prob": ("attention_dropout",),
    }
}


def family_fields(model_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` named as BERT names them (dropouts...), renamed to the ``model_type`` config's own names."""
    names = _FIELD_NAMES.get(model_type, {})
    return {theirs: v for k, v in fields.items() for theirs in names.get(k, (k,))}


def common_config(src: dict[str, Any], **overrides) -> dict[str, Any]:
    """Fields shared by BERT-derived configs, plus ``overrides``."""
    out = {k: src[k] for k in COMMON_FIELDS if k in src and src[k] is not None}
    if "id2label" in out:
        out["id2label"] = {int(k): v for k, v in out["id2label"].items()}
    out.update(overrides)
    return out


def bert_style_body(prefix: str, num_layers: int) -> dict[str, str]:
    """The embedding and encoder keys shared by BERT, RoBERTa, YOSO and Nyströmformer checkpoints."""
    m = {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "global_embeddings"):
        m[f"{prefix}.embeddings.{name}.weight"] = f"longattn.embeddings.{name}.weight"
    for t in ("weight", "bias"):
        m[f"{prefix}.embeddings.LayerNorm.{t}"] = f"longattn.embeddings.layer_norm.{t}"
    for i in range(num_layers):
        src, dst = f"{prefix}.encoder.layer.{i}", f"longattn.layers.{i}"
        pairs = {
            "attention.self.query": "query",
            "attention.self.key": "key",
            "attention.self.value": "value",
            "attention.output.dense": "attention_output",
            "attention.output.LayerNorm": "attention_norm",
            "intermediate.dense": "intermediate",
            "output.dense": "output",
            "output.LayerNorm": "output_norm",
        }
        for a, b in pairs.items():
            for t in ("weight", "bias"):
                m[f"{src}.{a}.{t}"] = f"{dst}.{b}.{t}"
    return m


def bert_mlm_head() -> dict[str, str]:
    """BERT's ``cls.predictions`` head (also used by YOSO and Nyströmformer)."""
    return {
        "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
        "cls.predictions.transform.dense.bias": "lm_head.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "lm_head.layer_norm.weight",
        "cls.predictions.transform.LayerNorm.bias": "lm_head.layer_norm.bias",
        "cls.predictions.decoder.weight": "lm_head.decoder.weight",
        "cls.predictions.bias": "lm_head.bias",
    }


def roberta_heads() -> dict[str, str]:
    """RoBERTa's MLM, sequence- and token-classification heads."""
    m = {f"lm_head.{n}.{t}": f"lm_head.{n}.{t}" for n in ("dense", "layer_norm") for t in ("weight", "bias")}
    m["lm_head.decoder.weight"] = "lm_head.decoder.weight"
    m["lm_head.bias"] = "lm_head.bias"
    for n in ("dense", "out_proj"):
        for t in ("weight", "bias"):
            m[f"classifier.{n}.{t}"] = f"classifier.{n}.{t}"
    return m


def check_absolute(src: dict[str, Any]) -> None:
    kind = src.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise UserError(
            f"position_embedding_type={kind!r} is not supported; only 'absolute' position embeddings are"
        )


def token_level(cfg: dict[str, Any]) -> bool:
    """Whether the source's architecture is a token-classification model (a one-layer ``classifier``)."""
    return any("ForTokenClassification" in a for a in cfg.get("architectures") or [])
