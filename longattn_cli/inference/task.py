"""A fine-tuned model and the data it is asked about: the model with its task head, its label set, and a data
source read with ``finetune``'s ``data.*`` keys (defaults from the recipe the model was trained with)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from longattn_cli.errors import UserError
from longattn_cli.training import labels as L

TASK_HEADS = ("sequence-classification", "token-classification")
# data.* keys a saved fine-tuning recipe lends to evaluate and predict: how its examples were read.
RECIPE_KEYS = ("text_column", "text_pair_column", "label_column", "max_length")


@dataclasses.dataclass
class TaskModel:
    """A model with a task head, on its device, with what reading and scoring data for it needs."""

    model: Any
    tokenizer: Any
    task: str  # sequence-classification or token-classification
    labels: L.Labels
    source: str


def load_task_model(source: str, device) -> TaskModel:
    """The checkpoint ``source`` with its own task head (a :class:`UserError` for a model without one)."""
    from longattn_cli.hub import resolve
    from longattn_cli.models.checkpoints import load_model
    from longattn_cli.models.heads import detect_head
    from longattn_cli.models.tokenizer import load_tokenizer
    from longattn_cli.models.weights import read_config

    head = detect_head(read_config(resolve(source)))
    if head not in TASK_HEADS:
        raise UserError(
            f"{source} is a {head} model; evaluate and predict need a fine-tuned one with a "
            f"{' or '.join(TASK_HEADS)} head (longattn finetune makes one)"
        )
    model = load_model(source, head=head).to(device).eval()
    config = model.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    problem = "token_classification" if head == "token-classification" else config.problem_type
    labels = L.Labels(problem or "single_label_classification", names, "label")
    return TaskModel(model, load_tokenizer(source), head, labels, source)


def data_config(model_dir: str, data: str, overrides: dict[str, Any]):
    """``finetune``'s data section for ``data``: the model's training recipe's reading keys
    (:data:`RECIPE_KEYS`), then ``overrides`` (``data.*`` keys, which win)."""
    from longattn_cli.training.config import load_recipe

    values = {f"data.{k}": v for k, v in _saved_reading(model_dir).items()}
    for key, value in overrides.items():
        if not key.startswith("data."):
            raise UserError(f"{key}={value!r}: only data.* keys apply here (e.g. data.text_column=review)")
        values[key] = value
    values.update({"data.source": data, "model.source": model_dir})
    return load_recipe("finetune", None, values).data


def _saved_reading(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / "recipe.yaml"
    if not path.is_file():
        return {}
    import yaml

    saved = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return {k: saved[k] for k in RECIPE_KEYS if k in saved}


def read_examples(task: TaskModel, data_cfg):
    """The data's examples, tokenized as fine-tuning tokenized them; their labels (when the data has the
    label column) checked against the model's."""
    from longattn_cli.training import data as D
    from longattn_cli.training.finetune import encode

    raw = D.load_raw(data_cfg.source, data_cfg.split, data_cfg, what="--data")
    kinds = ("words",) if task.task == "token-classification" else ("text",)
    D.check_column(raw, data_cfg.text_column, kinds, "--data")
    if data_cfg.text_pair_column:
        D.check_column(raw, data_cfg.text_pair_column, ("text",), "--data")
    labels = dataclasses.replace(task.labels, column=data_cfg.label_column)
    if data_cfg.label_column in raw.column_names:
        labels = _matching_labels(task, raw, data_cfg.label_column)
    return raw, encode(raw, task.tokenizer, data_cfg, labels, task.task, keep_words=True), labels


def _matching_labels(task: TaskModel, raw, column: str) -> L.Labels:
    """The model's label set read against the data's label column: a :class:`UserError` naming both sets when
    the data holds labels the model does not know."""
    problem = task.labels.problem_type
    found = L.infer([raw], column, task.task, "auto" if problem == "token_classification" else problem)
    ours = task.labels
    if problem != "regression":
        unknown = [n for n in found.names if n not in ours.names]
        if unknown:
            raise UserError(
                f"--data: label(s) {', '.join(map(str, unknown[:5]))} in column {column!r} are not the model's; "
                f"the model knows {', '.join(ours.names)}"
            )
        if found.indexed and found.names != ours.names:  # class indices mean other names here
            raise UserError(
                f"--data: column {column!r} numbers its classes {', '.join(found.names)}; the model numbers "
                f"them {', '.join(ours.names)}"
            )
    return dataclasses.replace(ours, column=column, indexed=found.indexed)
