"""``longattn lra run TASK --scale cpu|paper``: build the data, train every mechanism in turn, report.

Each mechanism is one ``longattn finetune`` run of ``recipes/lra[/cpu]/TASK-MECHANISM.yaml`` in a child
process (so each run's peak memory is its own), writing ``OUT/TASK-MECHANISM``. A sweep continues where it
stopped: a run with a ``summary.json`` is done and skipped, a run with checkpoints resumes from its latest.
Ctrl-C reaches the running child, which saves a checkpoint and exits; the sweep then stops with its code.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from longattn_cli.errors import UserError
from longattn_cli.lra.report import TASKS

MECHANISMS = ("softmax", "yoso", "nystrom", "lsg")
SCALES = ("cpu", "paper")

# ListOps data of each scale (``longattn data listops`` arguments); the recipes' data paths point here.
LISTOPS = {
    "cpu": {"train": 24_000, "validation": 400, "test": 2_000, "min_length": 200, "max_length": 600},
    "paper": {"train": 96_000, "validation": 2_000, "test": 2_000, "min_length": 500, "max_length": 2_000},
}


def recipes_dir() -> Path:
    """The recipes beside this package (an editable install or a checkout), else ./recipes."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    return here if here.is_dir() else Path("recipes")


def recipe_path(task: str, scale: str, mechanism: str, recipes: Path | None = None) -> Path:
    base = (recipes or recipes_dir()) / "lra"
    return (base / "cpu" if scale == "cpu" else base) / f"{task}-{mechanism}.yaml"


def parse_mechanisms(value: str | None) -> list[str]:
    if not value:
        return list(MECHANISMS)
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in MECHANISMS]
    if bad or not names:
        raise UserError(
            f"--attention {value!r}: expected a comma-separated subset of {', '.join(MECHANISMS)}"
        )
    return list(dict.fromkeys(names))


def _data_dir(recipe: Path) -> Path:
    import yaml

    source = (yaml.safe_load(recipe.read_text()) or {}).get("data", {}).get("source")
    if not source:
        raise UserError(f"{recipe} names no data.source")
    return Path(source).parent


def data_overrides(where: Path) -> list[str]:
    """Recipe overrides that read the task from ``where`` (``longattn data`` layout) instead."""
    return [
        f"model.tokenizer={where / 'tokenizer'}",
        *(
            f"data.{k}={where / f'{f}.jsonl'}"
            for k, f in (("source", "train"), ("validation", "validation"), ("test", "test"))
        ),
    ]


def ensure_data(task: str, scale: str, where: Path, text_source: str | None) -> Path:
    """Build the task's data in ``where``, unless it is there already."""
    from longattn_cli.lra import cli as lra_cli

    if (where / "train.jsonl").is_file():
        return where
    if task == "listops":
        s = LISTOPS[scale]
        lra_cli.listops(
            str(where), s["train"], s["validation"], s["test"], s["min_length"], s["max_length"], 10, 10, 0
        )
    else:
        lra_cli.text(str(where), text_source)
    return where


def state(out: Path) -> str:
    """done (summary.json written), resume (checkpoints, no summary) or new."""
    if (out / "summary.json").is_file():
        return "done"
    ckpt = out / "checkpoints"
    if ckpt.is_dir() and any(ckpt.iterdir()):
        return "resume"
    return "new"


def _child(args: list[str]) -> int:
    """Run ``python -m longattn_cmd ARGS``; while it runs Ctrl-C is the child's to handle (it saves)."""
    proc = subprocess.Popen([sys.executable, "-m", "longattn_cmd", *args])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def run(
    task: str,
    scale: str = "cpu",
    attention: str | None = None,
    out: str | None = None,
    overrides: list[str] | None = None,
    text_source: str | None = None,
    recipes: str | None = None,
    data: str | None = None,
) -> int:
    """The sweep; returns the exit code of the first run that failed (0 when all finished)."""
    from rich.console import Console

    if task not in TASKS:
        raise UserError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if scale not in SCALES:
        raise UserError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    mechanisms = parse_mechanisms(attention)
    base = Path(recipes) if recipes else None
    paths = {m: recipe_path(task, scale, m, base) for m in mechanisms}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"recipe {missing[0]} not found; pass --recipes DIR (the folder holding lra/)")
    out_dir = Path(out or f"runs/lra-{scale}")
    console = Console(stderr=True)
    where = Path(data) if data else _data_dir(paths[mechanisms[0]])
    ensure_data(task, scale, where, text_source)
    overrides = (data_overrides(where) if data else []) + list(overrides or [])
    runs = []
    for i, m in enumerate(mechanisms, 1):
        target = out_dir / f"{task}-{m}"
        runs.append(str(target))
        now = state(target)
        console.rule(f"[bold]{i}/{len(mechanisms)} · {task} · {m}[/] · {target} · {now}")
        if now == "done":
            console.print(f"{target}/summary.json exists: done, skipped (delete the folder to run it again)")
            continue
        args = ["finetune", "--recipe", str(paths[m]), f"training.output_dir={target}", *overrides]
        if now == "resume":
            args += ["--resume", "latest"]
        code = _child(args)
        if code:
            console.print(
                f"[red]{task}-{m} stopped with exit code {code}[/]; "
                f"run the same command again to continue from its last checkpoint"
            )
            return code
    from longattn_cli.lra.report import report

    report(runs, save=out_dir / task)
    return 0
