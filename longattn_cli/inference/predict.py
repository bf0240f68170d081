"""``longattn predict``: labels, scores and every class's probability for each example (each word, for token
tasks), written as JSONL, CSV or Parquet by the output's extension, in input order.

The input is read in windows of examples (a map-style dataset is memory-mapped; ``data.streaming=true``
streams one from a hub or a file); each window is tokenized, batched longest first, predicted, and written in
input order before the next is read, so the file always holds whole rows. Ctrl-C stops at a window's end and
leaves a valid file of the rows done; ``--resume`` counts them and continues after them.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import torch

from longattn_cli.errors import UserError
from longattn_cli.inference.files import check_output, csv_header, drop_torn_line, rows_done
from longattn_cli.training.signals import Stop

FORMATS = (".jsonl", ".csv", ".parquet")
WINDOW = 256  # examples read, sorted by length and written at a time


def describe(task, scores: torch.Tensor) -> dict[str, Any]:
    """One example's (or word's) prediction from its logits: label, score, every class's probability."""
    labels = task.labels
    if labels.problem_type == "regression":
        return {"prediction": scores[0].item()}
    if labels.problem_type == "multi_label_classification":
        probs = torch.sigmoid(scores)
        chosen = [n for n, p in zip(labels.names, probs.tolist(), strict=True) if p > 0.5]
        return {"labels": chosen, "probabilities": dict(zip(labels.names, probs.tolist(), strict=True))}
    probs = torch.softmax(scores, -1)
    best = int(probs.argmax())
    return {
        "label": labels.names[best],
        "score": probs[best].item(),
        "probabilities": dict(zip(labels.names, probs.tolist(), strict=True)),
    }


def _row(task, index: int, example: dict[str, Any], encoded: dict[str, Any], scores, text_column: str):
    if task.task != "token-classification":
        return {"index": index, **describe(task, scores)}
    words: list[Any] = [None] * len(example[text_column])  # words cut off by max_length stay None
    for j, w in enumerate(encoded["word_index"]):
        if w >= 0:
            words[w] = {"word": example[text_column][w], **describe(task, scores[j])}
    return {"index": index, "words": words}


class _Writer:
    """Appends whole rows to a JSONL, CSV or Parquet file; a resumed Parquet file is rewritten with the
    rows it had (Parquet cannot be appended to)."""

    def __init__(self, out: Path, resume: bool):
        self.out, self.suffix, self.parquet, self.fields = out, out.suffix.lower(), None, None
        self.kept = None
        if self.suffix == ".parquet" and resume and out.exists():
            import pyarrow.parquet as pq

            self.kept = pq.read_table(out)
        elif self.suffix in (".jsonl", ".csv"):
            if resume and out.exists():
                drop_torn_line(out)
            if self.suffix == ".csv" and resume and out.exists():
                self.fields = csv_header(out)
            self.file = out.open("a" if resume else "w", newline="")

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self.suffix == ".jsonl":
            self.file.write("".join(json.dumps(r) + "\n" for r in rows))
            self.file.flush()
        elif self.suffix == ".csv":
            flat = [_flat(r) for r in rows]
            if self.fields is None:
                self.fields = list(flat[0])
                csv.writer(self.file).writerow(self.fields)
            csv.DictWriter(self.file, self.fields).writerows(flat)
            self.file.flush()
        else:
            self._parquet(
                [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows]
            )

    def _parquet(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        if self.parquet is None:
            self.tmp = self.out.with_name(f".{self.out.name}.tmp")
            schema = self.kept.schema if self.kept is not None else table.schema
            self.parquet = pq.ParquetWriter(self.tmp, schema)
            if self.kept is not None:
                self.parquet.write_table(self.kept)
            self.schema = schema
        self.parquet.write_table(table.cast(self.schema))

    def close(self) -> None:
        if self.suffix in (".jsonl", ".csv"):
            self.file.close()
        elif self.parquet is not None:
            self.parquet.close()
            self.tmp.replace(self.out)  # whole: the kept rows and every window written


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: probabilities as ``p(NAME)`` columns, lists as JSON."""
    out = {}
    for k, v in row.items():
        if k == "probabilities":
            out.update({f"p({name})": p for name, p in v.items()})
        else:
            out[k] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


def _window(task, examples: list[dict[str, Any]], first: int, data_cfg, batch_size: int) -> list[dict]:
    """Predictions of one window of examples, in input order, batched longest first."""
    import datasets

    from longattn_cli.training.finetune import collator, encode, predict

    raw = datasets.Dataset.from_list(examples)
    unlabelled = dataclasses.replace(task.labels, column="")  # a label column in the data is left alone
    encoded = encode(raw, task.tokenizer, data_cfg, unlabelled, task.task, keep_words=True)
    logits = predict(task.model, encoded, collator(task.tokenizer, task.task), batch_size)
    return [
        _row(task, first + i, examples[i], encoded[i], logits[i], data_cfg.text_column)
        for i in range(len(examples))
    ]


def predict_file(
    model: str, data: str, out: str, batch_size: int = 16, overrides=None, resume=False, overwrite=False
):
    """Write ``model``'s predictions for every example of ``data`` to ``out``; returns ``{"rows", "out",
    "skipped", "stopped"}`` (``stopped``: Ctrl-C or SIGTERM ended it early, the file whole)."""
    from longattn_cli.devices import pick_device
    from longattn_cli.inference.task import data_config, load_task_model
    from longattn_cli.training import data as D

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    path = check_output(out, FORMATS, overwrite, resume)
    task = load_task_model(model, pick_device("auto"))
    data_cfg = data_config(model, data, dict(overrides or {}))
    raw = D.load_raw(data_cfg.source, data_cfg.split, data_cfg, what="--data")
    kinds = ("words",) if task.task == "token-classification" else ("text",)
    if not data_cfg.streaming:
        D.check_column(raw, data_cfg.text_column, kinds, "--data")
    skip = rows_done(path) if resume else 0
    total = len(raw) if hasattr(raw, "__len__") else None
    stop = Stop()  # Ctrl-C or SIGTERM: the window under way is finished and written, then the run stops
    writer, done = _Writer(path, resume and skip > 0), skip
    try:
        with stop, _progress(total, skip) as advance:
            examples = itertools.islice(iter(raw), skip, None)
            while not stop.signal:
                window = list(itertools.islice(examples, WINDOW))
                if not window:
                    break
                if data_cfg.text_column not in window[0]:
                    raise UserError(f"--data: no column {data_cfg.text_column!r} (set data.text_column)")
                writer.write(_window(task, window, done, data_cfg, batch_size))
                done += len(window)
                advance(len(window))
    finally:
        writer.close()
    return {"rows": done, "out": str(path), "skipped": skip, "stopped": bool(stop.signal)}


class _progress:
    """A progress bar with rows/s and, when the total is known, the ETA (on stderr)."""

    def __init__(self, total: int | None, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn("predicting"), BarColumn(), MofNCompleteColumn()]
        columns += [TimeRemainingColumn()] if total else [TextColumn("{task.speed} rows/s")]
        from rich.console import Console

        self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("predict", total=total, completed=done)

    def __enter__(self):
        self.bar.__enter__()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
