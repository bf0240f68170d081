"""``longattn pretrain``: masked-language-model pretraining of a long-sequence encoder.

With no arguments it runs the embedded default recipe (the defaults of :class:`~longattn_cli.training.config.PretrainRecipe`,
spelled out in ``recipes/pretrain/default.yaml``): a small 4,096-token model trained from scratch, with a
byte-level BPE tokenizer trained on the way, on the English documentation that ships with CPython. No download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from longattn_cli.errors import UserError
from longattn_cli.models.tokenizer import load_tokenizer
from longattn_cli.training import data as D
from longattn_cli.training.model_setup import apply_freezing, check_fit, fresh_config
from longattn_cli.training.sampling import sharded
from longattn_cli.training.train import Job

if TYPE_CHECKING:
    from longattn_cli.training.config import PretrainDataConfig, PretrainModelConfig


class MaskedLMObjective(nn.Module):
    """Masked-LM loss that runs the vocabulary projection only where a token is to be predicted.

    The LM head is the largest matrix product of a small long-sequence model (length × vocabulary); computing
    it at the ~15% masked positions alone gives the same loss as ``LongAttnForMaskedLM(labels=...)`` for a
    fraction of the work.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.model.longattn(input_ids, attention_mask=attention_mask).last_hidden_state  # (B, N, C)
        chosen = labels != -100
        logits = self.model.lm_head(hidden[chosen])  # (M, V) for the M masked tokens only
        return nn.functional.cross_entropy(logits.float(), labels[chosen])


def pick_tokenizer(model_cfg: PretrainModelConfig, data_cfg: PretrainDataConfig, raw, fingerprint: str):
    """The tokenizer named by the recipe, the source checkpoint's, or one trained on the corpus."""
    if model_cfg.tokenizer or model_cfg.source:
        return load_tokenizer(model_cfg.tokenizer or model_cfg.source), []
    tok = D.corpus_tokenizer(raw, data_cfg, model_cfg.vocab_size, fingerprint)
    return tok, [f"byte-level BPE tokenizer with {len(tok):,} tokens trained on the corpus"]


def scratch_config(model_cfg: PretrainModelConfig, data_cfg: PretrainDataConfig, tokenizer=None):
    """The :class:`LongAttnConfig` of a model pretrained from scratch (``model.vocab_size`` without a tokenizer)."""
    attention, settings = model_cfg.scratch_attention()
    return fresh_config(
        tokenizer,
        data_cfg.max_length,
        attention,
        settings,
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_hidden_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        intermediate_size=model_cfg.intermediate_size,
        hidden_dropout_prob=model_cfg.dropout,
        attention_probs_dropout_prob=model_cfg.attention_dropout or 0.0,
    )


def build_model(model_cfg: PretrainModelConfig, data_cfg: PretrainDataConfig, tokenizer):
    """From scratch (the recipe's architecture) or from ``model.source``, as a ``LongAttnForMaskedLM``."""
    from longattn_cli.models.modeling import LongAttnForMaskedLM

    if model_cfg.source:
        from longattn_cli.models.checkpoints import load_model

        extra = (
            {}
            if model_cfg.attention_dropout is None
            else {"attention_probs_dropout_prob": model_cfg.attention_dropout}
        )
        model = load_model(
            model_cfg.source,
            head="masked-lm",
            attention=model_cfg.attention,
            attention_settings=model_cfg.attention_settings or None,
            **extra,
        )
    else:
        model = LongAttnForMaskedLM(scratch_config(model_cfg, data_cfg, tokenizer))
    check_fit(model.config, tokenizer, data_cfg.max_length, model_cfg.tokenizer or model_cfg.source)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def build(recipe, accelerator) -> Job:
    """The pretraining job: data, tokenizer, model, masking and (with validation data) the MLM loss."""
    model_cfg, data_cfg, training = recipe.model, recipe.data, recipe.training
    raw = D.load_raw(data_cfg.source, data_cfg.split, data_cfg)
    D.check_column(raw, data_cfg.text_column, ("text",), "data.source")
    fingerprint = D.source_fingerprint(data_cfg.source, data_cfg.split, data_cfg)
    held_out = None
    if not data_cfg.validation and data_cfg.validation_split and not data_cfg.streaming:
        raw, held_out, fingerprint = hold_out(raw, data_cfg.validation_split, training.seed, fingerprint)
    tokenizer, notes = pick_tokenizer(model_cfg, data_cfg, raw, fingerprint)
    tokenizer.model_max_length = data_cfg.max_length
    model = build_model(model_cfg, data_cfg, tokenizer)
    notes += apply_freezing(model, model_cfg.freeze, model_cfg.train_only)
    packed, data_key, hit = D.pack(raw, tokenizer, data_cfg, fingerprint)
    if not data_cfg.streaming:
        notes.append(
            f"{len(packed):,} blocks of {data_cfg.max_length:,} tokens ({'reused from the cache' if hit else 'packed and cached'})"
        )
    collate = D.MaskingCollator(tokenizer, data_cfg.mlm_probability, data_cfg.whole_word_mask, training.seed)
    evaluate = finish = None
    if data_cfg.validation or held_out is not None:
        if held_out is None:
            held_out = D.load_raw(
                data_cfg.validation if D.is_local(data_cfg.validation) else data_cfg.source,
                data_cfg.validation,
                data_cfg,
                what="data.validation",
            )
            D.check_column(held_out, data_cfg.text_column, ("text",), "data.validation")
            fingerprint = D.source_fingerprint(
                data_cfg.validation if D.is_local(data_cfg.validation) else data_cfg.source,
                data_cfg.validation,
                data_cfg,
            )
        else:
            fingerprint = fingerprint + "-held-out"
            notes.append(f"{len(held_out):,} documents held out for validation (data.validation_split)")
        evaluate, valid_blocks = _validation(
            held_out, fingerprint, data_cfg, tokenizer, collate, training.batch_size
        )
        finish = _closing_report(model, evaluate, valid_blocks, packed, held_out, tokenizer, data_cfg)
    return Job(
        model=model,
        objective=MaskedLMObjective(model),
        tokenizer=tokenizer,
        train=packed,
        collate=collate,
        tokens=lambda b: int(b["attention_mask"].sum()),
        fingerprint={"tokenizer": D.tokenizer_hash(tokenizer), "data": data_key},
        evaluate=evaluate,
        metric_for_best=training.metric_for_best or "loss",
        greater_is_better=False,
        stream_length=data_cfg.streaming_examples if data_cfg.streaming else None,
        notes=notes,
        finish=finish,
    )


def hold_out(raw, fraction: float, seed: int, fingerprint: str):
    """Split the documents into training and held-out ones: (train, held out, the training fingerprint)."""
    if len(raw) < 2:
        raise UserError(
            f"data.validation_split={fraction}: the corpus has {len(raw)} document(s), too few to hold any "
            "out; set data.validation_split=0 or give data.validation"
        )
    n = max(1, round(len(raw) * fraction))
    parts = raw.train_test_split(test_size=n, seed=seed, shuffle=True)
    return parts["train"], parts["test"], D._sha(fingerprint, "held-out", fraction, seed)


def _validation(raw, fingerprint: str, data_cfg: PretrainDataConfig, tokenizer, collate, batch_size: int):
    """MLM loss on the validation blocks, with fixed masks (the same every evaluation): ``(evaluate, the
    validation blocks)``."""
    blocks, _, _ = D.pack(raw, tokenizer, data_cfg, fingerprint, what="data.validation")
    rows = (
        list(blocks.take(256))
        if not hasattr(blocks, "__len__")
        else [blocks[i] for i in range(min(len(blocks), 256))]
    )

    @torch.no_grad()
    def evaluate(model, local: bool = False) -> dict[str, Any]:
        """Every process its share of the batches (the same batches and masks whatever their number);
        ``local``: this process alone computes them all (no collective call)."""
        objective, device = MaskedLMObjective(model), next(model.parameters()).device

        def batch_loss(i: int) -> float:
            batch = {k: v.to(device) for k, v in collate(rows[i : i + batch_size], (1 << 40) + i).items()}
            return objective(**batch).item()

        starts = list(range(0, len(rows), batch_size))
        losses = [batch_loss(i) for i in starts] if local else sharded(batch_loss, starts)
        loss = sum(losses) / len(losses)
        return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(min(loss, 50.0))))}

    return evaluate, rows


def token_counts(blocks, size: int, limit: int | None = None) -> torch.Tensor:
    """How often each id occurs in (the first ``limit``) packed blocks: (size,) float64."""
    counts = torch.zeros(size, dtype=torch.float64)
    for i in range(len(blocks) if limit is None else min(len(blocks), limit)):
        counts += torch.bincount(torch.tensor(blocks[i]["input_ids"]), minlength=size)[:size]
    return counts


def unigram_loss(train_blocks, rows, tokenizer) -> float:
    """Cross-entropy (nats) of the validation tokens under the training data's token frequencies (add-one
    smoothed), special tokens left out: the loss of a model that has learnt nothing but frequencies."""
    counts = token_counts(train_blocks, len(tokenizer)) + 1
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    counts[special] = 0
    logp = (counts / counts.sum()).log()
    ids = torch.tensor([t for r in rows for t in r["input_ids"]])
    ids = ids[~torch.isin(ids, special)]
    return float(-logp[ids].mean())


def _closing_report(
    model, evaluate, valid_blocks, train_blocks, held_out, tokenizer, data_cfg: PretrainDataConfig
):
    """The summary rows: validation loss before and after next to the unigram baseline, and fill-mask
    predictions on held-out sentences. The loss before training is measured now, on the fresh weights."""
    from accelerate import PartialState

    # The job is built under main_process_first (the main process alone, then the others), so no collective
    # call here: the main process, the only one that reports, measures the fresh weights alone.
    model.eval()
    before = evaluate(model, local=True)["loss"] if PartialState().is_main_process else float("nan")
    model.train()
    baseline = unigram_loss(train_blocks, valid_blocks, tokenizer)
    samples = sample_sentences(held_out, tokenizer, data_cfg.text_column, train_blocks)

    def finish(model) -> dict[str, Any]:
        after = evaluate(model)["loss"]
        rows = {
            "validation loss": f"{before:.2f} → {after:.2f}",
            "unigram baseline": f"{baseline:.2f} (validation {abs(baseline - after):.2f} "
            f"{'below' if after < baseline else 'above'} it)",
        }
        rows.update(predict_samples(model, tokenizer, samples))
        return rows

    return finish


def sample_sentences(held_out, tokenizer, column: str, train_blocks, count: int = 4):
    """A few held-out sentences of plain prose, each with its most frequent word masked: ``[(masked text,
    answer)]``. The corpus's most frequent word is never the one masked: a model that knows only
    frequencies predicts it everywhere, so getting it right would show nothing."""
    import re

    counts = token_counts(train_blocks, len(tokenizer), limit=64)
    freq = {t: int(c) for t, c in enumerate(counts.tolist()) if c}

    def word_id(word: str) -> int | None:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    words = [t for t in sorted(freq, key=freq.get, reverse=True) if tokenizer.decode([t]).strip().isalpha()]
    commonest = words[0] if words else None
    out = []
    for doc in held_out[column]:
        sentence = re.split(r"(?<=[.!?])\s", " ".join((doc or "").split()))[0]
        if not (
            40 <= len(sentence) <= 100 and sentence.endswith(".") and re.fullmatch(r"[\w ,.'’-]+", sentence)
        ):
            continue  # plain prose only: no headings, markup or code
        best = None
        for match in re.finditer(r"(?<= )[A-Za-z]{2,}\b", sentence):
            t = word_id(match.group())
            if t is not None and t != commonest and (best is None or freq.get(t, 0) > best[0]):
                best = (freq.get(t, 0), match)
        if best is None:
            continue
        match = best[1]
        text = sentence[: match.start() - 1] + " " + tokenizer.mask_token + sentence[match.end() :]
        out.append((text, match.group()))
        if len(out) == count:
            break
    return out


def _around(text: str, mask: str, width: int = 18) -> str:
    """The words near the mask, so that a sample fits one line of the summary table."""
    head, _, tail = text.partition(mask)
    head = head if len(head) <= width else "…" + head[-width:].split(" ", 1)[-1]
    tail = tail if len(tail) <= width else tail[:width].rsplit(" ", 1)[0] + "…"
    return f"{head}{mask}{tail}"


@torch.no_grad()
def predict_samples(model, tokenizer, samples) -> dict[str, str]:
    """``{"sample 1": "text → top 3 (✓ when the first is the answer)"}`` for the summary table."""
    rows = {}
    model.eval()
    device = next(model.parameters()).device
    for i, (text, answer) in enumerate(samples, 1):
        enc = tokenizer(text, return_tensors="pt").to(device)
        where = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
        logits = model(**enc).logits[0, where]
        top = [tokenizer.decode([t]) for t in logits.topk(3).indices.tolist()]
        top = [t.strip() or repr(t) for t in top]  # a newline or space shown as such
        mark = "✓" if top[0] == answer else f"✗ {answer}"
        rows[f"sample {i}"] = f"{_around(text, tokenizer.mask_token)} → {' · '.join(top)}  {mark}"
    return rows


def run(recipe, on_step=None) -> int:
    """Pretrain as ``recipe`` says; returns the exit code (see :func:`longattn_cli.training.train.run`)."""
    from longattn_cli.training.train import run as train

    return train(recipe, build, on_step)
