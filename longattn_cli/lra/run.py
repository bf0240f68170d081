"""``longattn lra run TASK --scale cpu|paper``: build the data, then ``longattn compare`` over the task's
recipes (``recipes/lra[/cpu]/TASK-MECHANISM.yaml``, runs in ``OUT/TASK-MECHANISM``: each in its own process,
finished ones skipped, interrupted ones resumed), then the LRA report beside the published accuracies.
"""

from __future__ import annotations

from pathlib import Path

from longattn_cli.errors import UserError
from longattn_cli.lra.report import TASKS
from longattn_cli.training import compare

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
    where = Path(data) if data else _data_dir(paths[mechanisms[0]])
    ensure_data(task, scale, where, text_source)
    overrides = (data_overrides(where) if data else []) + list(overrides or [])
    # One recipe file per mechanism: longattn compare with {attention} in the recipe's path.
    template = str(recipe_path(task, scale, compare.TEMPLATE, base))
    runs = compare.plan(template, mechanisms, [], overrides, prefix=f"{task}-")
    code = compare.run_all(runs, out_dir)
    if code:
        return code
    compare.write_report(runs, out_dir, f"LRA {task} ({scale} scale)", show=False)
    from longattn_cli.lra.report import report

    report([str(out_dir / r.name) for r in runs], save=out_dir / task)
    print(f"plot: {out_dir}/compare.png")
    return 0
