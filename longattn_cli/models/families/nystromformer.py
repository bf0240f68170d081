"""Nyströmformer checkpoints (``uw-madison/nystromformer-512``): landmarks, the convolution over the values."""

from __future__ import annotations

from typing import Any

from longattn_cli.models.families.common import (
    Importer,
    bert_mlm_head,
    bert_style_body,
    common_config,
    token_level,
)

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
    if token_level(cfg):
        m |= {f"classifier.{t}": f"classifier.{t}" for t in ("weight", "bias")}
    # Not mapped: the sequence-classification head applies hidden_act where ours applies tanh.
    return m


IMPORTER = Importer("nystromformer", _nystromformer_config, _nystromformer_keys)
