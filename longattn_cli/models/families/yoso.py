"""YOSO checkpoints (``uw-madison/yoso-4096``): transformers' YosoConfig defaults and its settings."""

from __future__ import annotations

from typing import Any

from longattn_cli.models.families.common import (
    Importer,
    bert_mlm_head,
    bert_style_body,
    common_config,
    token_level,
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
    if token_level(cfg):
        m |= {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
    # YosoForSequenceClassification's head applies hidden_act where ours applies tanh: it is not mapped, so
    # such a checkpoint loads with a freshly initialised head (and a note saying so).
    return m


IMPORTER = Importer("yoso", _yoso_config, _yoso_keys)
