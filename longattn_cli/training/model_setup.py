"""What pretraining and fine-tuning both do to a model before training: a config for one trained from scratch,
a check that the tokenizer and length fit it, and freezing by parameter-name patterns."""

from __future__ import annotations

import fnmatch

from torch import nn

from longattn_cli.errors import UserError


def fresh_config(
    tokenizer,
    max_length: int,
    attention: str | None,
    settings: dict | None,
    vocab_size: int | None = None,
    **fields,
):
    """A :class:`LongAttnConfig` for a model trained from scratch on ``tokenizer`` and ``max_length`` tokens.

    Args:
        tokenizer: its size and special ids go into the config (``vocab_size`` is used without one).
        max_length: longest input, special tokens included.
        attention: mechanism name (softmax when None); settings: its settings.
        fields: any other config field (hidden_size, num_hidden_layers, classifier_pooling...).
    """
    from longattn_cli.models.modeling import LongAttnConfig

    offset = 2  # RoBERTa's convention; positions count real tokens, so any tokenizer works with it
    ids = {}
    if tokenizer is not None:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id if cls is None else cls,
            "eos_token_id": tokenizer.eos_token_id if sep is None else sep,
        }
    return LongAttnConfig(
        vocab_size=len(tokenizer) if tokenizer is not None else vocab_size,
        max_position_embeddings=max_length + offset,
        position_offset=offset,
        attention=attention or "softmax",
        attention_settings=settings,
        **ids,
        **fields,
    )


def apply_freezing(model: nn.Module, freeze: list[str], train_only: list[str]) -> list[str]:
    """Set ``requires_grad`` by parameter-name patterns (fnmatch); returns notes for the user.

    Raises:
        UserError: a pattern that matches no parameter (with examples of names), or nothing left to train.
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in [*freeze, *train_only]:
        if not fnmatch.filter(names, pattern):
            raise UserError(
                f"pattern {pattern!r} matches no parameter; names look like {', '.join(names[:2])}, ..., {names[-1]}"
            )
    for name, p in model.named_parameters():
        if train_only:
            p.requires_grad = any(fnmatch.fnmatch(name, pat) for pat in train_only)
        if any(fnmatch.fnmatch(name, pat) for pat in freeze):
            p.requires_grad = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise UserError("model.freeze / model.train_only leave no parameter to train")
    total = sum(p.numel() for p in model.parameters())
    if trainable == total:
        return []
    return [f"training {trainable:,} of {total:,} parameters ({trainable / total:.1%})"]


def check_fit(config, tokenizer, max_length: int, tokenizer_name: str | None) -> None:
    """The tokenizer's ids and the requested length must fit the model's tables."""
    if max_length > config.max_sequence_length:
        raise UserError(
            f"data.max_length={max_length} is above the model's {config.max_sequence_length} positions; "
            "lower it, or convert the model to a longer one with `longattn convert`"
        )
    from longattn_cli.models.checkpoints import check_tokenizer

    check_tokenizer(config, tokenizer, tokenizer_name)
