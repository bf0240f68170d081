"""The longattn model family: one post-LN transformer encoder whose attention is a plug-in.

The family is registered with transformers' Auto classes under ``model_type = "longattn"`` (see
``longattn_cli/models/auto.py``), so ``AutoModelForMaskedLM.from_pretrained(dir)`` and
``pipeline("fill-mask", model=dir)`` work after ``import longattn_cli``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from longattn_cli.attention import build_attention
from longattn_cli.attention.base import exporting
from longattn_cli.errors import UserError
from longattn_cli.models.configuration import LongAttnConfig


class LongAttnEmbeddings(nn.Module):
    """Word + position + token-type embeddings, with optional learned global tokens prepended, and with
    ``embedding_size`` a linear map to ``hidden_size`` after the LayerNorm and dropout (ALBERT, ELECTRA)."""

    def __init__(self, config: LongAttnConfig):
        super().__init__()
        e = config.embedding_width
        self.word_embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, e)
        self.num_global_tokens = config.num_global_tokens
        if self.num_global_tokens:
            self.global_embeddings = nn.Embedding(self.num_global_tokens, e)
        self.layer_norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.projection = nn.Linear(e, config.hidden_size) if config.embedding_size else None
        self.position_offset = config.position_offset

    def position_ids(self, mask: torch.Tensor) -> torch.Tensor:
        """Positions that count real tokens only: (B, N) from a (B, N) bool mask."""
        real = mask.long()
        pos = torch.cumsum(real, dim=1) - 1 + self.position_offset
        return torch.where(mask, pos, max(self.position_offset - 1, 0))

    def forward(self, input_ids, mask, token_type_ids=None, position_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = self.position_ids(mask)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(position_ids)
        x = (
            inputs_embeds
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        if self.num_global_tokens:
            g = self.global_embeddings.weight[None].expand(x.shape[0], -1, -1)  # (B, G, C)
            x = torch.cat([g.to(x.dtype), x], dim=1)
        x = self.dropout(self.layer_norm(x))
        return x if self.projection is None else self.projection(x)


class LongAttnLayer(nn.Module):
    """One post-LN encoder layer: projections here, the mechanism in ``self.attention``."""

    def __init__(self, config: LongAttnConfig):
        super().__init__()
        h, c = config.num_attention_heads, config.hidden_size
        self.num_heads, self.head_dim = h, c // h
        self.query = nn.Linear(c, c)
        self.key = nn.Linear(c, c)
        self.value = nn.Linear(c, c)
        self.attention = build_attention(
            config.attention, config.attention_settings, h, self.head_dim, config.attention_probs_dropout_prob
        )
        self.attention_output = nn.Linear(c, c)
        self.attention_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(c, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.output = nn.Linear(config.intermediate_size, c)
        self.output_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attend(x, mask))

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention half (what transformers calls ``*Attention``: self-attention and its output with
        the residual and norm); ``longattn benchmark --scope layer`` times exactly this."""
        b, n, c = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        a = self.attention(q, k, v, mask).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.attention_norm(x + self.dropout(self.attention_output(a)))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward half, with its residual and norm."""
        y = self.output(self.act(self.intermediate(x)))
        return self.output_norm(x + self.dropout(y))


class LongAttnPreTrainedModel(PreTrainedModel):
    config_class = LongAttnConfig
    base_model_prefix = "longattn"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LongAttnLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, LongAttnLMHead):
            module.bias.zero_()


class LongAttnModel(LongAttnPreTrainedModel):
    """The bare encoder: ``last_hidden_state`` (B, N, C) for the input tokens (global tokens removed)."""

    def __init__(self, config: LongAttnConfig):
        super().__init__(config)
        self.embeddings = LongAttnEmbeddings(config)
        distinct = config.num_hidden_groups or config.num_hidden_layers  # ALBERT shares layers in groups
        self.layers = nn.ModuleList(LongAttnLayer(config) for _ in range(distinct))
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if attention_mask is None:
            mask = torch.ones(shape, dtype=torch.bool, device=device)
        else:
            mask = attention_mask.to(device=device, dtype=torch.bool)
        if position_ids is None and not exporting():
            self._check_length(mask)
        x = self.embeddings(input_ids, mask, token_type_ids, position_ids, inputs_embeds)
        g = self.embeddings.num_global_tokens
        if g:
            mask = torch.cat([mask.new_ones(shape[0], g), mask], dim=1)
        hidden = [x[:, g:]] if output_hidden_states else None
        depth, distinct = self.config.num_hidden_layers, len(self.layers)
        for i in range(depth):
            layer = self.layers[i * distinct // depth]
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, mask)
            else:
                x = layer(x, mask)
            if hidden is not None:
                hidden.append(x[:, g:])
        if g and self.config.attention_settings.get("pool_with_global"):
            x = pool_with_global(x, mask, g)
            if hidden is not None:
                hidden[-1] = x[:, g:]
        return BaseModelOutput(last_hidden_state=x[:, g:], hidden_states=tuple(hidden) if hidden else None)

    def _check_length(self, mask: torch.Tensor) -> None:
        """More real tokens than position rows is a clear error, not an IndexError in the embedding."""
        limit = self.config.max_sequence_length
        if mask.shape[1] <= limit:
            return
        longest = int(mask.sum(dim=1).max())  # positions count real tokens: padding beyond the limit is fine
        if longest > limit:
            raise UserError(
                f"the input has {longest} tokens, more than the {limit} this model has positions for "
                f"(max_position_embeddings={self.config.max_position_embeddings}); truncate it to {limit} "
                "tokens, or convert the model to a longer one with `longattn convert`"
            )


def pool_with_global(x: torch.Tensor, mask: torch.Tensor, g: int) -> torch.Tensor:
    """LSG's ``pool_with_global``: the output at each row's first real token becomes the first global token's.

    Args:
        x: (B, G + N, C) final hidden states, global tokens first.
        mask: (B, G + N) bool, True = real token.
        g: number of global tokens.
    """
    first = g + mask[:, g:].int().argmax(dim=1)  # first real token of each row (left padding included)
    rows = torch.arange(x.shape[0], device=x.device)
    out = x.clone()
    out[rows, first] = x[:, 0]  # read from x, written to the copy: no second clone needed
    return out


class LongAttnLMHead(nn.Module):
    """dense → activation → LayerNorm → decoder (tied to the word embeddings) + bias; the dense layer maps to
    the embeddings' width (``embedding_size``, ALBERT's and ELECTRA's factorised head)."""

    def __init__(self, config: LongAttnConfig):
        super().__init__()
        e = config.embedding_width
        self.dense = nn.Linear(config.hidden_size, e)
        self.act = ACT2FN[config.lm_head_act or config.hidden_act]
        self.layer_norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(e, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(x)))) + self.bias


class LongAttnForMaskedLM(LongAttnPreTrainedModel):
    _tied_weights_keys = {"lm_head.decoder.weight": "longattn.embeddings.word_embeddings.weight"}

    def __init__(self, config: LongAttnConfig):
        super().__init__(config)
        self.longattn = LongAttnModel(config)
        self.lm_head = LongAttnLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, **kwargs):
        out = self.longattn(
            input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.view(-1, logits.shape[-1]).float(), labels.view(-1).to(logits.device)
            )
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class LongAttnClassificationHead(nn.Module):
    """Pooled head: dropout → dense → tanh → dropout → out_proj (RoBERTa's; BERT's pooler maps onto it; the
    activation is ``classifier_activation``, gelu for ELECTRA).

    The pooled vector is the first token's, or with ``classifier_pooling="mean"`` the mean over real tokens.
    """

    def __init__(self, config: LongAttnConfig):
        super().__init__()
        self.pooling = config.classifier_pooling
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.classifier_activation]
        self.dropout = nn.Dropout(p)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "mean":
            if attention_mask is None:
                x = x.mean(dim=1)
            else:
                w = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
                x = (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        else:
            x = x[:, 0]
        x = self.act(self.dense(self.dropout(x)))
        return self.out_proj(self.dropout(x))


def sequence_classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss by ``config.problem_type`` as transformers infers it (regression, single- or multi-label)."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float().view(logits.shape[0]))
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.float(), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())


class LongAttnForSequenceClassification(LongAttnPreTrainedModel):
    def __init__(self, config: LongAttnConfig):
        super().__init__(config)
        self.longattn = LongAttnModel(config)
        self.classifier = LongAttnClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, **kwargs):
        out = self.longattn(
            input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.classifier(out.last_hidden_state, attention_mask)
        loss = (
            None
            if labels is None
            else sequence_classification_loss(self.config, logits, labels.to(logits.device))
        )
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class LongAttnForTokenClassification(LongAttnPreTrainedModel):
    def __init__(self, config: LongAttnConfig):
        super().__init__(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.longattn = LongAttnModel(config)
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, **kwargs):
        out = self.longattn(
            input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:  # -100 marks positions without a label (padding, sub-word continuations)
            loss = nn.functional.cross_entropy(
                logits.view(-1, self.config.num_labels).float(), labels.view(-1).to(logits.device)
            )
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class LongAttnForReplacedTokenDetection(LongAttnPreTrainedModel):
    """ELECTRA's discriminator: dense → hidden_act → one logit per token, "was this token replaced?"
    (``ElectraForPreTraining``; registered with ``AutoModelForPreTraining``). ``labels`` (B, N), 1 where the
    token was replaced: binary cross-entropy over the real tokens."""

    def __init__(self, config: LongAttnConfig):
        super().__init__(config)
        self.longattn = LongAttnModel(config)
        self.discriminator = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.prediction = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_hidden_states=None, **kwargs):
        out = self.longattn(
            input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states, **kwargs
        )
        logits = self.prediction(self.act(self.discriminator(out.last_hidden_state))).squeeze(-1)  # (B, N)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device).float()
            if attention_mask is None:
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
            else:
                real = attention_mask.to(logits.device).bool()
                loss = nn.functional.binary_cross_entropy_with_logits(logits[real].float(), labels[real])
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


HEADS = {
    "base": LongAttnModel,
    "masked-lm": LongAttnForMaskedLM,
    "sequence-classification": LongAttnForSequenceClassification,
    "token-classification": LongAttnForTokenClassification,
    "replaced-token-detection": LongAttnForReplacedTokenDetection,
}
