"""LSG checkpoints in RoBERTa/BERT format (``ccdv/lsg-base-4096`` and lsg-converter's output): their
attention settings, read from the config fields the published code adds."""

from __future__ import annotations

from typing import Any

from longattn_cli.errors import UserError

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
