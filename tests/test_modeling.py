"""The encoder itself: padding invariance, positions, heads, global tokens, attention switching."""

import pytest
import torch
from torch.testing import assert_close

from longattn_cli.errors import UserError
from longattn_cli.models.modeling import (
    LongAttnConfig,
    LongAttnForMaskedLM,
    LongAttnForSequenceClassification,
    LongAttnForTokenClassification,
)

TINY = dict(
    vocab_size=90,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    max_position_embeddings=64,
)


def test_left_and_right_padding_leave_real_tokens_unchanged():
    torch.manual_seed(0)
    model = LongAttnForMaskedLM(LongAttnConfig(**TINY)).eval()
    ids = torch.randint(5, 90, (1, 11))
    pad = torch.full((1, 6), 1)
    with torch.no_grad():
        alone = model(ids).logits
        right = model(
            torch.cat([ids, pad], 1), attention_mask=torch.cat([torch.ones(1, 11), torch.zeros(1, 6)], 1)
        ).logits
        left = model(
            torch.cat([pad, ids], 1), attention_mask=torch.cat([torch.zeros(1, 6), torch.ones(1, 11)], 1)
        ).logits
    assert_close(right[:, :11], alone, rtol=1e-5, atol=1e-5)
    assert_close(left[:, 6:], alone, rtol=1e-5, atol=1e-5)


def test_heads_losses_and_labels():
    torch.manual_seed(0)
    ids = torch.randint(5, 90, (3, 9))
    mlm = LongAttnForMaskedLM(LongAttnConfig(**TINY))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    out = mlm(ids, labels=labels)
    want = torch.nn.functional.cross_entropy(out.logits[:, 2], ids[:, 2])
    assert_close(out.loss, want)
    reg = LongAttnForSequenceClassification(LongAttnConfig(**TINY, num_labels=1))
    out = reg(ids, labels=torch.tensor([0.5, 1.0, -1.0]))
    assert reg.config.problem_type == "regression"
    assert_close(
        out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, 1.0, -1.0]))
    )
    multi = LongAttnForSequenceClassification(LongAttnConfig(**TINY, num_labels=3))
    target = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1]])
    out = multi(ids, labels=target)
    assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target))
    tok = LongAttnForTokenClassification(LongAttnConfig(**TINY, num_labels=4))
    t_labels = torch.randint(0, 4, ids.shape)
    t_labels[0, 0] = -100
    out = tok(ids, labels=t_labels)
    assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits.reshape(-1, 4), t_labels.reshape(-1)))


def test_switching_attention_keeps_weights_and_validates():
    cfg = LongAttnConfig(**TINY)
    cfg.set_attention("softmax", implementation="eager")
    assert cfg.attention_settings == {"implementation": "eager"}
    torch.manual_seed(0)
    a = LongAttnForMaskedLM(LongAttnConfig(**TINY)).eval()
    b = LongAttnForMaskedLM(cfg).eval()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(5, 90, (2, 10))
    with torch.no_grad():
        assert_close(a(ids).logits, b(ids).logits, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = LongAttnConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = LongAttnForMaskedLM(cfg).train()
    b = LongAttnForMaskedLM(cfg).train()
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing_enable()
    ids = torch.randint(5, 90, (2, 10))
    a(ids, labels=ids).loss.backward()
    b(ids, labels=ids).loss.backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("attention", ["softmax", "lsg", "yoso", "nystrom"])
def test_more_tokens_than_positions_is_a_clear_error(attention):
    """Not an IndexError from the embedding: the error names the length and the limit. Padding beyond the
    limit is fine, since positions count real tokens."""
    settings = {"block_size": 16, "sparse_block_size": 16} if attention == "lsg" else {}
    model = LongAttnForMaskedLM(
        LongAttnConfig(**TINY, attention=attention, attention_settings=settings)
    ).eval()
    limit = model.config.max_sequence_length  # 62
    with pytest.raises(
        UserError, match=f"the input has {limit + 1} tokens, more than the {limit} this model"
    ):
        model(input_ids=torch.full((1, limit + 1), 5))
    mask = torch.ones(2, limit + 6, dtype=torch.long)
    mask[:, limit:] = 0
    with torch.no_grad():
        assert (
            model(input_ids=torch.full((2, limit + 6), 5), attention_mask=mask).logits.shape[1] == limit + 6
        )
