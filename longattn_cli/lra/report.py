"""``longattn lra report RUNS...``: our LRA accuracies next to the published ones."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from longattn_cli.errors import UserError
from longattn_cli.lra.published import SOURCES, published

TASKS = ("listops", "text")


def read_run(run: str | Path) -> dict[str, Any]:
    """One finetune run's summary: task, mechanism, test accuracy, training time, peak memory."""
    run = Path(run)
    path = run / "summary.json"
    if not path.is_file():
        raise UserError(
            f"{run} has no summary.json; expected the output directory of a finished `longattn finetune` run"
        )
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    test = summary.get("test_metrics") or summary.get("test") or {}
    accuracy = test.get("accuracy", test.get("test_accuracy"))
    majority = test.get("majority_accuracy")
    if majority is None:
        majority = _majority_from_predictions(run / "predictions.jsonl")
    return {
        "run": str(run),
        "task": summary.get("task") or _task_from_name(run.name),
        "attention": summary.get("attention", "?"),
        "family": summary.get("family", "longattn"),
        "accuracy": None if accuracy is None else 100.0 * float(accuracy),
        "majority": None if majority is None else 100.0 * float(majority),
        "train_time_s": summary.get("train_time_s"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "steps": summary.get("steps"),
    }


def _majority_from_predictions(path: Path) -> float | None:
    """The majority-class share of the labels a run's predictions.jsonl holds (runs from before results.json
    recorded it)."""
    if not path.is_file():
        return None
    from longattn_cli.training.labels import majority_share

    labels = []
    for line in path.read_text().splitlines():
        label = json.loads(line).get("label") if line.strip() else None
        if label is None or isinstance(label, (list, dict, float)):
            return None  # not single-label classification
        labels.append(label)
    return majority_share(labels)


def _task_from_name(name: str) -> str:
    return next((t for t in TASKS if t in name.lower()), "?")


def report(runs: list[str], as_json: bool = False, save: str | Path | None = None) -> list[dict[str, Any]]:
    """Print the comparison table (or JSON) and return its rows; ``save``: also write SAVE.txt (the table as
    printed, 80 columns) and SAVE.json (when, commit, command and the rows)."""
    if not runs:
        raise UserError("no runs given; pass one or more finetune output directories")
    rows = [read_run(r) for r in runs]
    for row in rows:
        row["published"] = published(row["attention"], row["task"])
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        from longattn_cli.bench.machine import provenance

        record = {**provenance(), "rows": rows}
        Path(f"{save}.json").write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    from rich.console import Console

    text = render(rows)
    Console(highlight=False).print(text, markup=False, end="", soft_wrap=True)
    if save:
        Path(f"{save}.txt").write_text(text)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The table (80 columns) with the run directories and the published figures' sources below it."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Long Range Arena: test accuracy (%)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    heads = ("#", "task", "attention", "ours", "major", "paper", "Δ", "steps", "min", "tok/s", "MB")
    for col in heads:
        table.add_column(col, justify="left" if col in ("task", "attention") else "right", no_wrap=True)
    ordered = sorted(rows, key=lambda r: (r["task"], r["attention"]))
    for i, r in enumerate(ordered, 1):
        ours, pub, maj = r["accuracy"], r["published"], r["majority"]
        table.add_row(
            str(i),
            r["task"],
            r["attention"] if r["family"] == "longattn" else f"{r['family']}",
            "—" if ours is None else f"{ours:.2f}",
            "—" if maj is None else f"{maj:.1f}",
            "—" if pub is None else f"{pub:.2f}",
            "—" if ours is None or pub is None else f"{ours - pub:+.2f}",
            "—" if r["steps"] is None else f"{r['steps']:,}",
            "—" if r["train_time_s"] is None else f"{r['train_time_s'] / 60:.1f}",
            "—" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}",
            "—" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:,.0f}",
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, highlight=False, color_system=None)
    console.print(table)
    lines = [line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()]
    notes = (
        "major: accuracy of always predicting the test split's most common class. paper: published, at the"
        " paper's scale; Δ = ours − paper. min: training wall time, evaluations included. tok/s: training"
        " tokens (padding excluded) per second. MB: peak memory (CPU: the process's resident set)."
    )
    lines += textwrap.wrap(notes, 80)
    for i, r in enumerate(ordered, 1):  # run directories below the table: they are long
        lines.append(f"[{i}] {r['run']}")
    used = sorted({r["attention"] for r in rows if r["published"] is not None})
    for mech in used:
        lines += textwrap.wrap(f"published {mech}: {SOURCES[mech]}", 80, subsequent_indent="  ")
    return "\n".join(lines) + "\n"
