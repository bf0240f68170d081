"""Loading checkpoints into the longattn family: our own, and foreign ones through explicit key maps.

Every foreign family is an :class:`Importer`: a function from its ``config.json`` to our config arguments,
and an explicit map from its state-dict keys to ours. RoBERTa and BERT live here; YOSO, Nyströmformer and
LSG register theirs the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError
from longattn_cli.hub import resolve
from longattn_cli.models.modeling import HEADS, LongAttnConfig

# Config fields that carry over unchanged from BERT-like configs.
_COMMON_FIELDS = (
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


IMPORTERS: dict[str, Importer] = {}

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
    out = {k: src[k] for k in _COMMON_FIELDS if k in src and src[k] is not None}
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


def _roberta_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = bert_style_body("roberta", cfg["num_hidden_layers"]) | roberta_heads()
    if any(k.startswith("classifier.weight") for k in keys):  # token classification: one linear layer
        m |= {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
    return m


def _bert_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    m = bert_style_body("bert", cfg["num_hidden_layers"]) | bert_mlm_head()
    token_level = any("ForTokenClassification" in a for a in cfg.get("architectures") or [])
    for t in ("weight", "bias"):
        if token_level:
            m[f"classifier.{t}"] = f"classifier.{t}"
        else:  # BERT's pooler + classifier is RoBERTa's dense + out_proj head
            m[f"bert.pooler.dense.{t}"] = f"classifier.dense.{t}"
            m[f"classifier.{t}"] = f"classifier.out_proj.{t}"
    return m


def _check_absolute(src: dict[str, Any]) -> None:
    kind = src.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise UserError(
            f"position_embedding_type={kind!r} is not supported; only 'absolute' position embeddings are"
        )


# Fields of the published LSG configs (ccdv/lsg-base-4096 and the lsg-converter's output), also our settings.
LSG_FIELDS = (
    "block_size",
    "sparse_block_size",
    "sparsity_factor",
    "sparsity_type",
    "num_global_tokens",
    "adaptive",
    "mask_first_token",
    "pool_with_global",
    "lsh_num_pre_rounds",
)


def lsg_attention(src: dict[str, Any]) -> dict[str, Any]:
    """``{"attention": "lsg", "attention_settings": ...}`` for an LSG checkpoint in RoBERTa/BERT format, else {}.

    Such a checkpoint says ``model_type: roberta`` (or bert...) and runs LSG only through its remote code
    (``auto_map``); read as a plain RoBERTa it would silently be dense. Other remote model code is refused.
    """
    models = {k: v for k, v in (src.get("auto_map") or {}).items() if k.startswith("AutoModel")}
    names = " ".join(str(v) for v in models.values()) + " " + " ".join(src.get("architectures") or [])
    if "LSG" not in names and not any(k in src for k in ("sparsity_type", "num_global_tokens")):
        if models:
            raise UserError(
                f"the config maps to custom model code ({next(iter(models.values()))}) that longattn does not know; "
                "supported remote-code checkpoints: LSG (auto_map to modeling_lsg_*)"
            )
        return {}
    settings = {k: src[k] for k in LSG_FIELDS if k in src}
    # The published LSG config corrects these silently at load time; do as it does so outputs match.
    if "num_global_tokens" in settings:
        settings["num_global_tokens"] = min(max(int(settings["num_global_tokens"]), 1), 512)
    if settings.get("mask_first_token"):
        settings["pool_with_global"] = True
    return {"attention": "lsg", "attention_settings": settings}


def _roberta_config(src: dict[str, Any]) -> dict[str, Any]:
    _check_absolute(src)
    return common_config(src, position_offset=src.get("pad_token_id", 1) + 1, **lsg_attention(src))


def _bert_config(src: dict[str, Any]) -> dict[str, Any]:
    _check_absolute(src)
    return common_config(
        src, position_offset=0, pad_token_id=src.get("pad_token_id", 0), **lsg_attention(src)
    )


# transformers' YosoConfig defaults, for config.json files that leave a field out.
YOSO_DEFAULTS = {
    "hidden_act": "gelu",
    "max_position_embeddings": 4096,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 1,
    "use_expectation": True,
    "hash_code_len": 9,
    "num_hash": 64,
    "conv_window": None,
    "use_fast_hash": True,
    "lsh_backward": True,
}
YOSO_SETTINGS = (
    "hash_code_len",
    "num_hash",
    "use_expectation",
    "use_fast_hash",
    "lsh_backward",
    "conv_window",
)


def _yoso_config(src: dict[str, Any]) -> dict[str, Any]:
    src = YOSO_DEFAULTS | {k: v for k, v in src.items() if v is not None}
    # YOSO's position table has two rows more than max_position_embeddings; positions start at 2.
    return common_config(
        src,
        max_position_embeddings=src["max_position_embeddings"] + 2,
        position_offset=2,
        attention="yoso",
        attention_settings={k: src[k] for k in YOSO_SETTINGS},
    )


def _yoso_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    n = cfg["num_hidden_layers"]
    m = bert_style_body("yoso", n) | bert_mlm_head()
    for i in range(n):  # the depthwise convolution of conv_window, (H, 1, w, 1) as in ours
        m[f"yoso.encoder.layer.{i}.attention.self.conv.weight"] = f"longattn.layers.{i}.attention.conv.weight"
    if any("ForTokenClassification" in a for a in cfg.get("architectures") or []):
        m |= {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
    # YosoForSequenceClassification's head applies hidden_act where ours applies tanh: it is not mapped, so
    # such a checkpoint loads with a freshly initialised head (and a note saying so).
    return m


# NystromformerConfig's defaults, for fields an older config.json leaves out.
_NYSTROMFORMER_DEFAULTS = {
    "hidden_act": "gelu_new",
    "max_position_embeddings": 510,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "num_landmarks": 64,
    "conv_kernel_size": 65,
    "inv_coeff_init_option": False,
}


def _nystromformer_config(src: dict[str, Any]) -> dict[str, Any]:
    """``uw-madison/nystromformer-*`` configs: ``segment_means_seq_len`` is not needed (any length works)."""
    src = {
        **_NYSTROMFORMER_DEFAULTS,
        **{k: v for k, v in src.items() if v is not None or k == "conv_kernel_size"},
    }
    settings = {
        "num_landmarks": src["num_landmarks"],
        "conv_kernel_size": src["conv_kernel_size"],
        # inv_coeff_init_option=True asks for the per-matrix 1/‖A‖₁ initialisation (transformers raises on it).
        "pinv_init": "exact" if src["inv_coeff_init_option"] else "original",
    }
    # The reference's position table has max_position_embeddings + 2 rows and real positions start at 2.
    return common_config(
        src,
        max_position_embeddings=src["max_position_embeddings"] + 2,
        position_offset=2,
        attention="nystrom",
        attention_settings=settings,
    )


def _nystromformer_keys(cfg: dict[str, Any], keys: list[str]) -> dict[str, str]:
    layers = cfg.get("num_hidden_layers", 12)
    m = bert_style_body("nystromformer", layers) | bert_mlm_head()
    if "cls.predictions.bias" not in keys:  # older files may keep only the tied decoder bias
        m["cls.predictions.decoder.bias"] = "lm_head.bias"
    for i in range(layers):  # the depthwise convolution over V, (H, 1, k, 1)
        m[f"nystromformer.encoder.layer.{i}.attention.self.conv.weight"] = (
            f"longattn.layers.{i}.attention.conv.weight"
        )
    if any("ForTokenClassification" in a for a in cfg.get("architectures") or []):
        m |= {f"classifier.{t}": f"classifier.{t}" for t in ("weight", "bias")}
    # Not mapped: the sequence-classification head applies hidden_act where ours applies tanh.
    return m


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
    if any("ForTokenClassification" in a for a in cfg.get("architectures") or []):
        m |= {f"classifier.{t}": f"classifier.{t}" for t in ("weight", "bias")}
    # Not mapped: DistilBertForSequenceClassification's pre_classifier + ReLU head (ours: dense + tanh), so
    # such a checkpoint gets a fresh head, as YOSO's and Nyströmformer's do.
    return m


def _distilbert_missing(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """No token types: one all-zero row adds nothing to the embeddings, as DistilBERT has it."""
    word = next(v for k, v in state.items() if k.endswith("embeddings.word_embeddings.weight"))
    return {"distilbert.embeddings.token_type_embeddings.weight": word.new_zeros(1, word.shape[1])}


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
    _check_absolute(src)
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
    token_level = any("ForTokenClassification" in a for a in cfg.get("architectures") or [])
    if token_level:
        parts["classifier"] = "classifier"
    else:
        parts |= {"classifier.dense": "classifier.dense", "classifier.out_proj": "classifier.out_proj"}
    for a, b in parts.items():
        for t in ("weight", "bias"):
            m[f"{a}.{t}"] = f"{b}.{t}"
    m["generator_lm_head.weight"] = "lm_head.decoder.weight"
    m["generator_lm_head.bias"] = "lm_head.bias"
    return m


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
    _check_absolute(src)
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
    if any("ForTokenClassification" in a for a in cfg.get("architectures") or []):
        parts["classifier"] = "classifier"
    else:  # ALBERT's pooler + classifier is RoBERTa's dense + out_proj head, as BERT's
        parts |= {"albert.pooler": "classifier.dense", "classifier": "classifier.out_proj"}
    for a, b in parts.items():
        for t in ("weight", "bias"):
            m[f"{a}.{t}"] = f"{b}.{t}"
    m["predictions.decoder.weight"] = "lm_head.decoder.weight"
    m["predictions.bias" if "predictions.bias" in keys else "predictions.decoder.bias"] = "lm_head.bias"
    return m


IMPORTERS["roberta"] = Importer("roberta", _roberta_config, _roberta_keys)
IMPORTERS["xlm-roberta"] = Importer("roberta", _roberta_config, _roberta_keys)
IMPORTERS["camembert"] = Importer("roberta", _roberta_config, _roberta_keys)
IMPORTERS["bert"] = Importer("bert", _bert_config, _bert_keys)
IMPORTERS["nystromformer"] = Importer("nystromformer", _nystromformer_config, _nystromformer_keys)
IMPORTERS["yoso"] = Importer("yoso", _yoso_config, _yoso_keys)
IMPORTERS["distilbert"] = Importer("distilbert", _distilbert_config, _distilbert_keys, _distilbert_missing)
IMPORTERS["electra"] = Importer("electra", _electra_config, _electra_keys)
IMPORTERS["albert"] = Importer("albert", _albert_config, _albert_keys)


def read_config(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {directory / 'config.json'}: {exc}") from None


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: safetensors (single or sharded), else a pickle that
    ``torch.load(weights_only=True)`` accepts."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(f)))
        return sd
    pickles = sorted(directory.glob("pytorch_model*.bin"))
    if not pickles:
        raise UserError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin")
    sd = {}
    for f in pickles:
        try:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise UserError(
                f"refusing to load {f}: not loadable with weights_only=True ({type(exc).__name__})"
            ) from None
    return sd


def supported_types() -> list[str]:
    return sorted(["longattn", *IMPORTERS])


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


def import_config(directory: Path, attention: str | None = None, attention_settings: dict | None = None):
    """Our :class:`LongAttnConfig` for the checkpoint in ``directory`` (ours or a foreign one)."""
    src = read_config(directory)
    kind = src.get("model_type")
    if kind == "longattn":
        config = LongAttnConfig.from_pretrained(directory)
    elif kind in IMPORTERS:
        config = LongAttnConfig(**IMPORTERS[kind].config(src))
        config.architectures = src.get("architectures")
    else:
        raise UserError(
            f"unsupported architecture model_type={kind!r} in {directory}; supported: {', '.join(supported_types())}"
        )
    if attention or attention_settings:
        config.set_attention(attention, **(attention_settings or {}))
    return config


def check_tokenizer(config, tokenizer, name: str | None) -> None:
    """A :class:`UserError` unless every id of ``tokenizer`` has a row in the model's embeddings and the
    padding ids agree."""
    if len(tokenizer) > config.vocab_size:
        raise UserError(
            f"tokenizer {name} does not match the model: it has {len(tokenizer):,} tokens, "
            f"the model's vocabulary {config.vocab_size:,}"
        )
    if (
        tokenizer.pad_token_id is not None
        and config.pad_token_id is not None
        and tokenizer.pad_token_id != config.pad_token_id
    ):
        raise UserError(
            f"tokenizer {name} does not match the model: padding id {tokenizer.pad_token_id}, "
            f"the model's {config.pad_token_id}"
        )


def load_model(
    source: str,
    head: str = "auto",
    attention: str | None = None,
    attention_settings: dict[str, Any] | None = None,
    **config_overrides,
):
    """Load ``source`` (hub id or directory; longattn, RoBERTa, BERT, ...) as one of our models.

    Args:
        source: a checkpoint directory or a hub id.
        head: ``auto`` (the source's own head), ``base``, ``masked-lm``, ``sequence-classification``,
            ``token-classification`` or ``replaced-token-detection`` (ELECTRA's discriminator). A head the source lacks is initialised randomly.
        attention: switch to this mechanism (e.g. run a softmax checkpoint with ``yoso``).
        attention_settings: override the mechanism's settings (e.g. ``{"use_expectation": False}``).
        **config_overrides: other config fields (``num_labels``, dropouts...).

    Returns:
        The model in eval mode, on CPU, in float32.
    """
    directory = resolve(source)
    src = read_config(directory)
    config = import_config(directory, attention, attention_settings)
    for k, v in config_overrides.items():
        setattr(config, k, v)
    if head == "auto":
        head = detect_head(src)
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; valid: auto, {', '.join(HEADS)}")
    model = HEADS[head](config)
    state = read_state_dict(directory)
    if src.get("model_type") == "longattn":
        state = _retarget_own(state, head)
    else:
        state = _fit_global_embeddings(state, config.num_global_tokens)
        importer = IMPORTERS[src["model_type"]]
        if importer.missing:
            state = {**importer.missing(src, state), **state}
        mapping = importer.key_map(src, list(state))
        mapped = {}
        for k, v in state.items():
            # A bare source model has no prefix; give it one so one map serves both.
            key = k if k in mapping else f"{importer.prefix}.{k}"
            if key in mapping:
                mapped[mapping[key]] = v
        state = mapped if head != "base" else {k.removeprefix("longattn."): v for k, v in mapped.items()}
    _load_into(model, state, source)
    return model.eval()


def _fit_global_embeddings(state: dict[str, torch.Tensor], num_global: int) -> dict[str, torch.Tensor]:
    """Published LSG checkpoints store a 512-row global table of which the first ``num_global_tokens`` rows
    are used; keep those (or drop the table when the chosen attention has no global tokens)."""
    out = {}
    for k, v in state.items():
        if k.endswith("embeddings.global_embeddings.weight"):
            if not num_global:
                continue
            if v.shape[0] < num_global:
                raise UserError(f"{k} has {v.shape[0]} rows but num_global_tokens={num_global}")
            v = v[:num_global]
        out[k] = v
    return out


def _retarget_own(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """Our own checkpoints saved from a bare model lack the ``longattn.`` prefix, and vice versa."""
    bare = not any(k.startswith("longattn.") for k in state)
    if head == "base":
        return {k.removeprefix("longattn."): v for k, v in state.items() if bare or k.startswith("longattn.")}
    return {(f"longattn.{k}" if bare else k): v for k, v in state.items()}


def _load_into(model, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise UserError(
                f"{source}: weight {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}"
            )
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    missing = [k for k in result.missing_keys if k not in tied]
    body_missing = [k for k in missing if k.startswith(("longattn.", "embeddings.", "layers."))]
    if any(k.endswith("global_embeddings.weight") for k in body_missing):
        raise UserError(
            f"{source} has no global token embeddings, which LSG attention needs; make an LSG model from it "
            f"with `longattn convert {source} --attention lsg`"
        )
    if body_missing:
        raise UserError(f"{source}: the checkpoint lacks encoder weights, e.g. {body_missing[0]}")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    if missing:
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]note:[/] {len(missing)} head weight(s) not in {source} were initialised randomly ({missing[0]}, ...)"
        )


def load_tokenizer(source: str):
    """The tokenizer stored with ``source``; a :class:`UserError` if there is none."""
    from transformers import AutoTokenizer

    directory = resolve(source)
    spm_files = [n for n in _SENTENCEPIECE_FILES if (directory / n).is_file()]
    try:
        if spm_files and not (directory / "tokenizer.json").is_file():
            return _sentencepiece_tokenizer(directory, source, spm_files[0])
        return AutoTokenizer.from_pretrained(directory)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"no usable tokenizer in {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


# SentencePiece models as tokenizers ship them: ALBERT (and Nyströmformer), XLM-R/CamemBERT, Llama-style.
_SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def _sentencepiece_tokenizer(directory: Path, source: str, spm_name: str):
    """A tokenizer shipped only as a SentencePiece model (ALBERT's ``spiece.model``, as Nyströmformer's).

    Converting it needs ``sentencepiece`` and ``protobuf`` (the ``sentencepiece`` extra). transformers'
    AutoTokenizer maps some model types (nystromformer) to a class that cannot read ``.model`` files, so the
    class named in ``tokenizer_config.json`` is used directly.
    """
    missing = [m for m in ("sentencepiece", "google.protobuf") if not _installed(m)]
    if missing:
        raise UserError(
            f"the tokenizer of {source} is a SentencePiece model ({spm_name}); reading it needs "
            f"{' and '.join(m.split('.')[-1] for m in missing)}: pip install 'longattn[sentencepiece]'"
        )
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        declared = json.loads((directory / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        declared = None
    cls = tokenizer_class_from_name(declared) if declared else None
    return (cls or AutoTokenizer).from_pretrained(directory)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (google) is absent
        return False


def export_roberta(model, out_dir: str | Path) -> None:
    """Write a ``LongAttnForMaskedLM`` with softmax attention as a stock ``RobertaForMaskedLM`` directory."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = model.config
    if cfg.attention != "softmax" or cfg.position_offset != cfg.pad_token_id + 1 or cfg.num_global_tokens:
        raise UserError(
            f"only softmax models with RoBERTa positions export to RoBERTa (got attention={cfg.attention!r}, position_offset={cfg.position_offset})"
        )
    if cfg.embedding_size or cfg.num_hidden_groups:
        raise UserError(
            f"a model with embedding_size={cfg.embedding_size} or num_hidden_groups={cfg.num_hidden_groups} "
            "(ALBERT- or ELECTRA-style) has no RoBERTa form; save it with save_pretrained instead"
        )
    fields = {k: getattr(cfg, k) for k in _COMMON_FIELDS if getattr(cfg, k, None) is not None}
    target = RobertaForMaskedLM(RobertaConfig(**fields))
    inverse = {ours: theirs for theirs, ours in _roberta_keys(target.config.to_dict(), []).items()}
    ours = model.state_dict()
    target.load_state_dict({inverse[k]: v for k, v in ours.items() if k in inverse}, strict=False)
    target.tie_weights()
    target.save_pretrained(out_dir)
