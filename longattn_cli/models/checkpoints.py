"""Loading checkpoints into the longattn family: our own, and foreign ones through their family's translation
(:mod:`longattn_cli.models.families`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError
from longattn_cli.hub import resolve
from longattn_cli.models.families import IMPORTERS, supported_types
from longattn_cli.models.heads import detect_head
from longattn_cli.models.modeling import HEADS, LongAttnConfig
from longattn_cli.models.weights import read_config, read_state_dict


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
