"""``longattn lra report RUNS...``: our LRA accuracies next to the published ones."""

from __future__ import annotations

import json
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
    return {
        "run": str(run),
        "task": summary.get("task") or _task_from_name(run.name),
        "attention": summary.get("attention", "?"),
        "accuracy": None if accuracy is None else 100.0 * float(accuracy),
        "train_time_s": summary.get("train_time_s"),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "steps": summary.get("steps"),
    }


def _task_from_name(name: str) -> str:
    return next((t for t in TASKS if t in name.lower()), "?")


def report(runs: list[str], as_json: bool = False) -> list[dict[str, Any]]:
    """Print the comparison table (or JSON) and return its rows."""
    if not runs:
        raise UserError("no runs given; pass one or more finetune output directories")
    rows = [read_run(r) for r in runs]
    for row in rows:
        row["published"] = published(row["attention"], row["task"])
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Long Range Arena: test accuracy (%)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("#", "task", "attention", "ours", "paper", "Δ", "steps", "train", "memory"):
        table.add_column(col, justify="left" if col in ("task", "attention") else "right", no_wrap=True)
    ordered = sorted(rows, key=lambda r: (r["task"], r["attention"]))
    for i, r in enumerate(ordered, 1):
        ours, pub = r["accuracy"], r["published"]
        table.add_row(
            str(i),
            r["task"],
            r["attention"],
            "—" if ours is None else f"{ours:.2f}",
            "—" if pub is None else f"{pub:.2f}",
            "—" if ours is None or pub is None else f"{ours - pub:+.2f}",
            "—" if r["steps"] is None else f"{r['steps']:,}",
            "—" if r["train_time_s"] is None else f"{r['train_time_s'] / 60:.1f} min",
            "—" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:,.0f} MB",
        )
    console = Console()
    console.print(table)
    for i, r in enumerate(ordered, 1):  # run directories below the table: they are long
        print(f"[{i}] {r['run']}")
    used = sorted({r["attention"] for r in rows if r["published"] is not None})
    for mech in used:
        console.print(f"published {mech}: {SOURCES[mech]}")
    return rows
