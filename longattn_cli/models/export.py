"""Writing our models in another family's format: a softmax model as a stock RoBERTa."""

from __future__ import annotations

from pathlib import Path

from longattn_cli.errors import UserError
from longattn_cli.models.families import roberta
from longattn_cli.models.families.common import COMMON_FIELDS


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
    fields = {k: getattr(cfg, k) for k in COMMON_FIELDS if getattr(cfg, k, None) is not None}
    target = RobertaForMaskedLM(RobertaConfig(**fields))
    inverse = {ours: theirs for theirs, ours in roberta.IMPORTER.key_map(target.config.to_dict(), []).items()}
    ours = model.state_dict()
    target.load_state_dict({inverse[k]: v for k, v in ours.items() if k in inverse}, strict=False)
    target.tie_weights()
    target.save_pretrained(out_dir)
