"""``longattn finetune``: sequence classification (single-label, multi-label, regression) and token classification.

Starts from any checkpoint ``longattn_cli.models.checkpoints.load_model`` reads (ours, RoBERTa, BERT, YOSO,
Nyströmformer, LSG), optionally with another attention mechanism; evaluates on the validation data during
training, keeps the best model (``OUTPUT/best``, then ``OUTPUT`` itself), and writes predictions for the test
data (or the validation data when there is no test split) to ``OUTPUT/predictions.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from longattn_cli.errors import UserError
from longattn_cli.models.tokenizer import load_tokenizer
from longattn_cli.training import data as D
from longattn_cli.training import labels as L
from longattn_cli.training import metrics as M
from longattn_cli.training.model_setup import apply_freezing, check_fit, fresh_config
from longattn_cli.training.sampling import longest_first, sharded
from longattn_cli.training.train import Job

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")

if TYPE_CHECKING:
    from longattn_cli.training.config import FinetuneDataConfig, FinetuneModelConfig, TrainingConfig


class ClassificationObjective(nn.Module):
    """The head's own loss (cross-entropy, BCE-with-logits or MSE, by ``config.problem_type``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return self.model(**batch).loss


def load_split(data_cfg: FinetuneDataConfig, value: str, what: str):
    """A split named in the recipe: a local file, or a split of ``data.source`` (a hub dataset or a directory)."""
    if D.is_local(value):
        return D.load_raw(value, "train", data_cfg, what=what), D.source_fingerprint(value, "train", data_cfg)
    if D.is_local(data_cfg.source) and not Path(data_cfg.source).expanduser().is_dir():
        raise UserError(
            f"{what}={value!r} is neither a file nor usable as a split name: data.source is a local file"
        )
    return D.load_raw(data_cfg.source, value, data_cfg, what=what), D.source_fingerprint(
        data_cfg.source, value, data_cfg
    )


def load_for_task(
    model_cfg: FinetuneModelConfig, labels: L.Labels, tokenizer=None, max_length: int | None = None
):
    """The starting checkpoint with a head for ``labels`` (the source's own head when it already fits), or
    without ``model.source`` a new model of the ``model.scratch`` architecture."""
    from longattn_cli.hub import resolve
    from longattn_cli.models.checkpoints import load_model
    from longattn_cli.models.heads import detect_head
    from longattn_cli.models.modeling import HEADS
    from longattn_cli.models.weights import read_config

    fields = {
        "num_labels": labels.num_labels,
        "id2label": dict(enumerate(labels.names)),
        "label2id": {n: i for i, n in enumerate(labels.names)},
        "problem_type": None if labels.problem_type == "token_classification" else labels.problem_type,
    }
    if model_cfg.dropout is not None:
        fields.update(hidden_dropout_prob=model_cfg.dropout, classifier_dropout=model_cfg.dropout)
    if model_cfg.attention_dropout is not None:
        fields["attention_probs_dropout_prob"] = model_cfg.attention_dropout
    settings = model_cfg.attention_settings or None
    if not model_cfg.source:
        extra = {"attention_probs_dropout_prob": model_cfg.attention_dropout or 0.0}
        config = fresh_config(
            tokenizer, max_length, model_cfg.attention, settings, **{**extra, **model_cfg.scratch, **fields}
        )
        return HEADS[model_cfg.task](config)
    src = read_config(resolve(model_cfg.source))
    if src.get("model_type") in FOREIGN:
        return _load_foreign(model_cfg, src, fields)
    if detect_head(src) == model_cfg.task and len(src.get("id2label") or {}) == labels.num_labels:
        return load_model(
            model_cfg.source,
            head=model_cfg.task,
            attention=model_cfg.attention,
            attention_settings=settings,
            **fields,
        )
    body = load_model(
        model_cfg.source, head="base", attention=model_cfg.attention, attention_settings=settings
    )
    for k, v in fields.items():
        setattr(body.config, k, v)
    model = HEADS[model_cfg.task](body.config)  # a fresh head (seeded), the source's encoder
    model.longattn.load_state_dict(body.state_dict())
    return model


# Encoders of other families fine-tuned as they are (transformers' own classes, through the Auto classes, no
# remote code), so that one recipe with model.source swapped gives a baseline row: model_type → name.
FOREIGN = {"longformer": "Longformer", "big_bird": "BigBird", "modernbert": "ModernBERT"}


def _load_foreign(model_cfg: FinetuneModelConfig, src: dict, fields: dict):
    """A Longformer, BigBird or ModernBERT checkpoint with a head for the task (the source's own where it
    fits, else a new one), its attention untouched."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from longattn_cli.hub import resolve
    from longattn_cli.models.families import family_fields

    family = src["model_type"]
    given = [k for k in ("attention", "attention_settings", "scratch") if getattr(model_cfg, k)]
    if given:
        raise UserError(
            f"model.{given[0]} does not apply to model.source={model_cfg.source!r}, a {FOREIGN[family]} checkpoint that "
            f"keeps its own attention; remove it (it applies to longattn, RoBERTa and BERT sources)"
        )
    directory = resolve(model_cfg.source)
    config = AutoConfig.from_pretrained(directory, **family_fields(family, fields))
    cls = (
        AutoModelForTokenClassification
        if model_cfg.task == "token-classification"
        else AutoModelForSequenceClassification
    )
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "some weights were newly initialised": the new head, expected
    try:
        return cls.from_pretrained(directory, config=config, ignore_mismatched_sizes=True)
    finally:
        transformers.logging.set_verbosity(verbosity)


def foreign_positions(config) -> int:
    """Tokens a foreign model takes: Longformer's table holds two rows for RoBERTa's padding offset."""
    n = config.max_position_embeddings
    return n - 2 if config.model_type == "longformer" else n


def _evaluation(
    val, data_cfg: FinetuneDataConfig, training: TrainingConfig, labels: L.Labels, collate, notes
):
    """The evaluation on the validation split (a seeded subset of ``data.validation_examples``), or None."""
    if val is not None and data_cfg.validation_examples and data_cfg.validation_examples < len(val):
        # A seeded random subset, not the first N: files are often sorted by label (IMDB's are).
        full = len(val)
        val = val.shuffle(seed=training.seed).select(range(data_cfg.validation_examples))
        notes.append(f"evaluating on {len(val):,} of {full:,} validation examples")
    if val is None or "labels" not in val.column_names:
        return None

    def evaluate(net) -> dict[str, float]:
        return score(labels, predict(net, val, collate, 2 * training.batch_size), val)

    return evaluate


def _model(model_cfg: FinetuneModelConfig, labels: L.Labels, tokenizer, max_length: int):
    """The model with its head for the task, checked against the tokenizer and the length."""
    model = load_for_task(model_cfg, labels, tokenizer, max_length)
    if model.config.model_type in FOREIGN:
        from longattn_cli.models.checkpoints import check_tokenizer

        if max_length > foreign_positions(model.config):
            raise UserError(
                f"data.max_length={max_length} is above the {FOREIGN[model.config.model_type]} model's "
                f"{foreign_positions(model.config)} positions; lower it"
            )
        check_tokenizer(model.config, tokenizer, model_cfg.tokenizer or model_cfg.source)
    else:
        check_fit(model.config, tokenizer, max_length, model_cfg.tokenizer or model_cfg.source)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _tokenizer(model_cfg: FinetuneModelConfig):
    tok = load_tokenizer(model_cfg.tokenizer or model_cfg.source)
    if model_cfg.task == "token-classification":
        try:
            tok(["a", "b"], is_split_into_words=True)
        except (ValueError, TypeError):  # byte-level BPE needs a prefix space to take pre-split words
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tok.name_or_path, add_prefix_space=True)
    return tok


def encode(
    ds, tokenizer, data_cfg: FinetuneDataConfig, labels: L.Labels, task: str, keep_words: bool = False
):
    """Tokenize a split (truncated to ``data.max_length``) and encode its labels when it has them."""
    has_labels = labels.column in ds.column_names
    token = task == "token-classification"

    def fn(batch):
        if token:
            enc = tokenizer(
                batch[data_cfg.text_column],
                is_split_into_words=True,
                truncation=True,
                max_length=data_cfg.max_length,
            )
        else:
            pair = [t or "" for t in batch[data_cfg.text_pair_column]] if data_cfg.text_pair_column else None
            texts = [
                t or "" for t in batch[data_cfg.text_column]
            ]  # an empty cell is an empty text, not a crash
            enc = tokenizer(texts, pair, truncation=True, max_length=data_cfg.max_length)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        if token:
            words = [enc.word_ids(i) for i in range(len(enc["input_ids"]))]
            first = [
                [w if w is not None and (j == 0 or ids[j - 1] != w) else -1 for j, w in enumerate(ids)]
                for ids in words
            ]
            if keep_words:
                out["word_index"] = first
            if has_labels:  # the first sub-token of each word carries its label; the rest are ignored (-100)
                out["labels"] = [
                    [labels.encode(tags[w]) if w >= 0 else -100 for w in f]
                    for f, tags in zip(first, batch[labels.column], strict=True)
                ]
        elif has_labels:
            out["labels"] = [labels.encode(v) for v in batch[labels.column]]
        return out

    return ds.map(fn, batched=True, remove_columns=ds.column_names)


def collator(tokenizer, task: str):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    pad = (
        DataCollatorForTokenClassification(tokenizer)
        if task == "token-classification"
        else DataCollatorWithPadding(tokenizer)
    )

    def collate(examples: list[dict[str, Any]], key: int = 0) -> dict[str, torch.Tensor]:
        return pad([{k: v for k, v in ex.items() if k in MODEL_INPUTS} for ex in examples])

    return collate


@torch.no_grad()
def predict(model, ds, collate, batch_size: int) -> list[torch.Tensor]:
    """Logits per example, in ``ds`` order (trimmed to its length for token tasks).

    Examples are batched longest first (a batch pads to its longest example, so sorting wastes no compute
    on padding), and under several processes each computes every ``world``-th batch
    (:func:`~longattn_cli.training.sampling.sharded`); every process returns all the logits, in the original
    order. The batches are the same whatever the number of processes, so the logits are too.
    """
    device = next(model.parameters()).device
    lengths = [len(x) for x in ds["input_ids"]]
    batches = longest_first(lengths, batch_size)

    def run(indices: list[int]) -> list[torch.Tensor]:
        rows = [{k: v for k, v in ds[i].items() if k != "labels"} for i in indices]
        logits = model(**{k: v.to(device) for k, v in collate(rows).items()}).logits.float().cpu()
        return [x[: lengths[i]] if x.dim() == 2 else x for x, i in zip(logits, indices, strict=True)]

    out: list[torch.Tensor | None] = [None] * len(ds)
    for indices, logits in zip(batches, sharded(run, batches), strict=True):
        for i, x in zip(indices, logits, strict=True):
            out[i] = x
    return out


def _gold(labels: L.Labels, ds) -> torch.Tensor:
    if labels.problem_type == "token_classification":
        return torch.tensor([t for ex in ds["labels"] for t in ex])
    return torch.tensor(ds["labels"])


def _stacked(labels: L.Labels, logits: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(logits) if labels.problem_type == "token_classification" else torch.stack(logits)


def score(labels: L.Labels, logits: list[torch.Tensor], ds) -> dict[str, float]:
    """The loss (the heads' own: cross-entropy over examples or labelled tokens, MSE, or binary
    cross-entropy) and the problem type's metrics, from the logits of every example."""
    flat, gold = _stacked(labels, logits), _gold(labels, ds)
    return {"loss": M.loss(labels.problem_type, flat, gold), **M.compute(labels.problem_type, flat, gold)}


def final_scores(labels: L.Labels, logits: list[torch.Tensor], ds) -> dict[str, float | None]:
    """:func:`score` and what a final report adds: per-class precision, recall and F1 (single-label and token
    classification), Pearson's r (regression), entity-level F1 (token labels in BIO form)."""
    out: dict[str, float | None] = dict(score(labels, logits, ds))
    flat, gold = _stacked(labels, logits), _gold(labels, ds)
    if labels.problem_type == "regression":
        out["pearson"] = M.pearson(flat.squeeze(-1), gold)
    elif labels.problem_type in ("single_label_classification", "token_classification"):
        keep = gold != -100
        out.update(M.per_class(flat.argmax(-1)[keep], gold[keep], labels.names))
    if labels.problem_type == "token_classification" and any(n[:2] in ("B-", "I-") for n in labels.names):
        tags = [[], []]
        for scores, gold_ids in zip(logits, ds["labels"], strict=True):
            kept = [j for j, t in enumerate(gold_ids) if t != -100]
            tags[0].append([labels.names[scores[j].argmax().item()] for j in kept])
            tags[1].append([labels.names[gold_ids[j]] for j in kept])
        out["entity_f1"] = M.entity_f1(*tags)
    return out


def baselines(labels: L.Labels, ds) -> dict[str, float | None]:
    """What a model that ignores its input scores on ``ds``: the majority class's accuracy (single-label), or
    the MSE of always predicting the mean (regression)."""
    if labels.problem_type == "single_label_classification":
        return {"majority_accuracy": L.majority_share(ds["labels"])}
    if labels.problem_type == "regression":
        gold = torch.tensor(ds["labels"], dtype=torch.float64)
        return {"mean_mse": float(((gold - gold.mean()) ** 2).mean())}
    return {}


def load_splits(data_cfg: FinetuneDataConfig, task: str) -> tuple[dict[str, Any], list[str]]:
    """The train split and whichever of validation and test the recipe names, with their columns checked;
    and the fingerprints of their sources."""
    if data_cfg.streaming:
        raise UserError("data.streaming is for pretraining corpora; fine-tuning reads its splits whole")
    kinds = ("words",) if task == "token-classification" else ("text",)
    splits = {"train": D.load_raw(data_cfg.source, data_cfg.split, data_cfg)}
    prints = [D.source_fingerprint(data_cfg.source, data_cfg.split, data_cfg)]
    for name in ("validation", "test"):
        value = getattr(data_cfg, name)
        if value:
            splits[name], fp = load_split(data_cfg, value, f"data.{name}")
            prints.append(fp)
    for name, ds in splits.items():
        where = "data.source" if name == "train" else f"data.{name}"
        D.check_column(ds, data_cfg.text_column, kinds, where)
        if data_cfg.text_pair_column:
            D.check_column(ds, data_cfg.text_pair_column, ("text",), where)
    return splits, prints


def build(recipe, accelerator) -> Job:
    """The fine-tuning job: splits, labels, tokenizer, model with its head, evaluation and predictions."""
    model_cfg, data_cfg, training = recipe.model, recipe.data, recipe.training
    splits, prints = load_splits(data_cfg, model_cfg.task)
    train = splits["train"]
    labels = L.infer(
        [train, *(s for k, s in splits.items() if k != "train" and data_cfg.label_column in s.column_names)],
        data_cfg.label_column,
        model_cfg.task,
        model_cfg.problem_type,
    )
    tokenizer = _tokenizer(model_cfg)
    model = _model(model_cfg, labels, tokenizer, data_cfg.max_length)
    notes = apply_freezing(model, model_cfg.freeze, model_cfg.train_only)
    notes.append(
        f"{labels.problem_type.replace('_', ' ')} with {labels.num_labels} output(s); {len(train):,} training examples"
    )
    encoded = {
        k: encode(v, tokenizer, data_cfg, labels, model_cfg.task, keep_words=k != "train")
        for k, v in splits.items()
    }
    collate = collator(tokenizer, model_cfg.task)
    metric, higher = M.BEST[labels.problem_type]
    metric = training.metric_for_best or metric
    higher = not M.lower_is_better(metric)
    evaluate = _evaluation(encoded.get("validation"), data_cfg, training, labels, collate, notes)
    fingerprint = D._sha(
        prints,
        labels.names,
        labels.problem_type,
        data_cfg.max_length,
        data_cfg.text_column,
        data_cfg.text_pair_column,
    )
    lengths = [len(x) for x in encoded["train"]["input_ids"]]
    group = training.group_by_length if training.group_by_length is not None else len(set(lengths)) > 1
    if group:
        notes.append("training batches grouped by length (training.group_by_length)")
    return Job(
        model=model,
        objective=ClassificationObjective(model),
        tokenizer=tokenizer,
        train=encoded["train"],
        collate=collate,
        tokens=lambda b: int(b["attention_mask"].sum()),
        fingerprint={"tokenizer": D.tokenizer_hash(tokenizer), "data": fingerprint},
        evaluate=evaluate,
        metric_for_best=metric,
        greater_is_better=higher,
        finish=lambda net: _finish(
            net, encoded, splits, labels, collate, training, model_cfg.task, data_cfg.text_column
        ),
        notes=notes,
        lengths=lengths if group else None,
    )


def _finish(
    model, encoded, raw, labels: L.Labels, collate, training: TrainingConfig, task: str, text_column: str
) -> dict[str, Any]:
    """Predictions for the test split (else validation) in ``predictions.jsonl``; its metrics in ``results.json``."""
    name = "test" if "test" in encoded else "validation" if "validation" in encoded else None
    if name is None:
        return {}
    ds = encoded[name]
    logits = predict(
        model, ds, collate, 2 * training.batch_size
    )  # every process its share; the main one writes
    out = Path(training.output_dir)
    rows: dict[str, Any] = {"predictions": str(out / "predictions.jsonl")}
    results = None
    if "labels" in ds.column_names:
        results = {"split": name, **final_scores(labels, logits, ds), **baselines(labels, ds)}
        # The report's rows: the overall figures (results.json has every class's too).
        rows.update(
            {f"{name} {k}": v for k, v in results.items() if k != "split" and " " not in k and v is not None}
        )
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return rows
    with (out / "predictions.jsonl").open("w") as f:
        for i, (row, scores) in enumerate(zip(ds, logits, strict=True)):
            if task == "token-classification":  # words cut off by max_length get None
                prediction = [None] * len(raw[name][i][text_column])
                for j, w in enumerate(row["word_index"]):
                    if w >= 0:
                        prediction[w] = labels.decode(scores[j].tolist())
            else:
                prediction = labels.decode(scores.tolist())
            item = {"index": i, "prediction": prediction}
            if labels.column in raw[name].column_names:
                item["label"] = raw[name][i][labels.column]
            f.write(json.dumps(item) + "\n")
    if results is not None:
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return rows


def run(recipe, on_step=None) -> int:
    """Fine-tune as ``recipe`` says; returns the exit code (see :func:`longattn_cli.training.train.run`)."""
    from longattn_cli.training.train import run as train

    return train(recipe, build, on_step)
