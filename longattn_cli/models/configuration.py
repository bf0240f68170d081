"""The configuration of the longattn model family (``model_type = "longattn"``)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from longattn_cli.attention import make_settings


class LongAttnConfig(PretrainedConfig):
    """Configuration of a longattn encoder.

    Args:
        vocab_size: size of the token vocabulary.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of encoder layers.
        num_attention_heads: heads per layer; must divide ``hidden_size``.
        intermediate_size: width of the feed-forward block.
        hidden_act: feed-forward (and MLM head) activation, a key of ``transformers.activations.ACT2FN``.
        hidden_dropout_prob: dropout on embeddings and residual branches.
        attention_probs_dropout_prob: dropout on attention probabilities (mechanisms that have them).
        max_position_embeddings: rows of the position table (including ``position_offset``).
        type_vocab_size: rows of the token-type table.
        layer_norm_eps: LayerNorm epsilon.
        position_offset: index of the first real token's position row (0 for BERT, 2 for RoBERTa, YOSO
            and Nyströmformer checkpoints). Positions count real tokens only, so left or right padding
            never shifts them; padding positions use row ``max(position_offset - 1, 0)``.
        attention: name of the attention mechanism (see ``longattn_cli.attention.available()``).
        attention_settings: the mechanism's settings, validated by its ``Settings`` dataclass.
        classifier_dropout: dropout in classification heads (defaults to ``hidden_dropout_prob``).
        classifier_pooling: what the sequence-classification head reads: ``first`` (the first token, as
            BERT and RoBERTa) or ``mean`` (the mean over real tokens, as the LRA models).
        classifier_activation: activation of the sequence-classification head's dense layer (``tanh`` as
            BERT and RoBERTa; ``gelu`` as ELECTRA).
        embedding_size: width of the token, position and token-type embeddings when it differs from
            ``hidden_size`` (ALBERT, ELECTRA): a linear map takes them to ``hidden_size``, and the MLM head
            maps back to this width before its decoder. None: the embeddings are ``hidden_size`` wide.
        num_hidden_groups: number of distinct layers, shared in order by the ``num_hidden_layers`` (ALBERT's
            cross-layer sharing: layer i runs group ``i · num_hidden_groups // num_hidden_layers``). None:
            every layer has its own weights.
        lm_head_act: activation of the MLM head (None: ``hidden_act``; ELECTRA's generator uses gelu).
    """

    model_type = "longattn"

    def __init__(
        self,
        vocab_size: int = 50265,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 514,
        type_vocab_size: int = 1,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        position_offset: int = 2,
        attention: str = "softmax",
        attention_settings: dict[str, Any] | None = None,
        classifier_dropout: float | None = None,
        classifier_pooling: str = "first",
        classifier_activation: str = "tanh",
        embedding_size: int | None = None,
        num_hidden_groups: int | None = None,
        lm_head_act: str | None = None,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        # Shape.
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.embedding_size, self.num_hidden_groups = embedding_size, num_hidden_groups
        # Positions and token types.
        self.max_position_embeddings, self.position_offset = max_position_embeddings, position_offset
        self.type_vocab_size = type_vocab_size
        # Dropout, initialisation, normalisation.
        self.hidden_dropout_prob, self.classifier_dropout = hidden_dropout_prob, classifier_dropout
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range, self.layer_norm_eps = initializer_range, layer_norm_eps
        # Activations and heads.
        self.hidden_act, self.classifier_activation, self.lm_head_act = (
            hidden_act,
            classifier_activation,
            lm_head_act,
        )
        self.classifier_pooling = classifier_pooling
        # Validate now (unknown mechanism or setting fails here) and store the complete, explicit settings.
        self.attention = attention
        self.attention_settings = make_settings(attention, attention_settings).to_dict()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._check()

    def _check(self) -> None:
        """A ``ValueError`` naming the field for values the model cannot be built with."""
        from transformers.activations import ACT2FN

        if self.classifier_pooling not in ("first", "mean"):
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r} is not one of first, mean")
        for name in ("classifier_activation", "lm_head_act"):
            act = getattr(self, name)
            if act is not None and act not in ACT2FN:
                raise ValueError(f"{name}={act!r} is not an activation; valid: {', '.join(sorted(ACT2FN))}")
        if self.embedding_size is not None and self.embedding_size < 1:
            raise ValueError(f"embedding_size={self.embedding_size} must be a positive width, or null")
        groups, layers = self.num_hidden_groups, self.num_hidden_layers
        if groups is not None and not 1 <= groups <= layers:
            raise ValueError(
                f"num_hidden_groups={groups} must be between 1 and num_hidden_layers={layers}, or null"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )

    @property
    def num_global_tokens(self) -> int:
        """Learned tokens prepended to every sequence (used by LSG; 0 for the other mechanisms)."""
        return int(self.attention_settings.get("num_global_tokens", 0) or 0)

    @property
    def embedding_width(self) -> int:
        """Width of the embedding tables (``embedding_size``, else ``hidden_size``)."""
        return self.embedding_size or self.hidden_size

    @property
    def max_sequence_length(self) -> int:
        """Longest input (in tokens, special tokens included) the position table admits."""
        return self.max_position_embeddings - self.position_offset

    def set_attention(self, attention: str | None = None, **settings) -> None:
        """Switch mechanism and/or update its settings in place, validating the result.

        Settings of the current mechanism are kept when the mechanism does not change.
        """
        name = attention or self.attention
        base = dict(self.attention_settings) if name == self.attention else {}
        base.update(settings)
        self.attention_settings = make_settings(name, base).to_dict()
        self.attention = name
