"""``longattn evaluate``: a fine-tuned model scored on a data source, with the metrics ``finetune`` reports.

The examples are read, tokenized, batched and scored exactly as fine-tuning's final evaluation does them
(the same functions), so on the same model and data the two agree. Under ``accelerate launch`` every process
computes its share of the batches and the main process prints.
"""

from __future__ import annotations

import json
from typing import Any

from longattn_cli.inference.task import data_config, load_task_model, read_examples

BATCH_SIZE = 16


def evaluate(model: str, data: str, overrides: dict[str, Any] | None = None, batch_size: int = BATCH_SIZE):
    """Score ``model`` on ``data`` (a file, folder, saved dataset or hub id; ``data.*`` keys in ``overrides``).

    Returns:
        ``{"model", "data", "split", "examples", "loss", <metrics>, "majority_accuracy" or "mean_mse"?}``.

    Raises:
        UserError: a model without a task head, data without its text or label column, labels the model does
            not know.
    """
    from longattn_cli.errors import UserError
    from longattn_cli.training.accelerator import make_accelerator
    from longattn_cli.training.finetune import baselines, collator, final_scores, predict

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    accelerator = make_accelerator("no")
    task = load_task_model(model, accelerator.device)
    data_cfg = data_config(model, data, overrides or {})
    raw, encoded, labels = read_examples(task, data_cfg)
    if labels.column not in raw.column_names:
        raise UserError(
            f"--data has no label column {labels.column!r} (columns: {', '.join(raw.column_names)}); set "
            "data.label_column, or use longattn predict for unlabelled data"
        )
    logits = predict(task.model, encoded, collator(task.tokenizer, task.task), batch_size)
    result = {"model": model, "data": data, "split": data_cfg.split, "examples": len(encoded)}
    result.update(final_scores(labels, logits, encoded))
    result.update(baselines(labels, encoded))
    return result


def render(result: dict[str, Any], as_json: bool) -> None:
    """The metrics as a table, or as JSON."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['data']} ({result['examples']:,} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key in ("model", "data", "split", "examples"):
            continue
        table.add_row(
            key, "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        )
    Console().print(table)
