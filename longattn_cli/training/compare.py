"""``longattn compare``: one fine-tuning recipe run once per mechanism (and once per baseline checkpoint, such as
a Longformer, which keeps its own attention), ending in one table and one plot.

Each run is ``longattn finetune`` in a child process (so that its peak memory is its own), writing
``OUT/NAME``. A run with a ``summary.json`` is done and skipped; one with checkpoints resumes from its latest.
Ctrl-C reaches the running child, which saves a checkpoint and exits; the comparison stops with its code and
the same command continues it. ``longattn lra run`` is this over the LRA recipes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longattn_cli.errors import UserError

TEMPLATE = "{attention}"  # in --recipe: each mechanism reads its own recipe file (the LRA recipes do)
WALL = "compare-wall.json"  # each run's wall seconds, summed over the sessions that ran it


@dataclass
class Run:
    """One fine-tuning run of a comparison."""

    label: str  # the row's name: the mechanism, or the baseline checkpoint's
    name: str  # its folder under OUT
    recipe: Path
    overrides: list[str] = field(default_factory=list)


def parse_list(value: str | None, option: str) -> list[str]:
    """``a,b,c`` as a list without blanks or repeats."""
    names = [v.strip() for v in (value or "").split(",") if v.strip()]
    if value is not None and not names:
        raise UserError(f"{option} {value!r}: expected a comma-separated list")
    return list(dict.fromkeys(names))


def plan(
    recipe: str,
    attention: list[str],
    sources: list[str],
    overrides: list[str] | None = None,
    prefix: str = "",
) -> list[Run]:
    """The runs of ``recipe``: one per mechanism (``model.attention=A``, or the recipe file named by putting
    the mechanism in place of ``{attention}``), then one per source checkpoint (``model.source=S``, attention
    its own)."""
    from longattn_cli.attention.settings import available

    known = available()
    bad = [a for a in attention if a not in known]
    if bad:
        raise UserError(f"--attention {bad[0]!r} is not a mechanism; valid: {', '.join(known)}")
    if not attention and not sources:
        raise UserError("nothing to compare: give --attention A,B,... and/or --sources S,...")
    templated = TEMPLATE in recipe
    if templated and sources:
        raise UserError(
            f"--sources needs one recipe for every run; --recipe {recipe!r} names one per mechanism"
        )
    runs = []
    for a in attention:
        path = Path(recipe.replace(TEMPLATE, a))
        runs.append(Run(a, f"{prefix}{a}", path, [] if templated else [f"model.attention={a}"]))
    for s in sources:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", s.rstrip("/").split("/")[-1]) or "source"
        # A baseline keeps its own attention: the recipe's mechanism settings do not apply to it.
        runs.append(
            Run(
                s,
                f"{prefix}{name}",
                Path(recipe),
                [f"model.source={s}", "model.attention=null", "model.attention_settings={}"],
            )
        )
    names = [r.name for r in runs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise UserError(f"two runs would share the folder {twice!r}; rename one of the sources")
    for r in runs:
        if not r.recipe.is_file():
            raise UserError(f"recipe {str(r.recipe)!r} not found")
        r.overrides += list(overrides or [])
    return runs


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


def _add_wall(target: Path, seconds: float) -> None:
    path = target / WALL
    before = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
    target.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seconds": round(before + seconds, 1)}) + "\n")


def run_all(runs: list[Run], out: Path) -> int:
    """Each run in turn, skipping finished ones and resuming interrupted ones; the exit code of the first
    that failed, else 0."""
    from rich.console import Console

    console = Console(stderr=True)
    for i, r in enumerate(runs, 1):
        target = out / r.name
        now = state(target)
        console.rule(f"[bold]{i}/{len(runs)} · {r.label}[/] · {target} · {now}")
        if now == "done":
            console.print(f"{target}/summary.json exists: done, skipped (delete the folder to run it again)")
            continue
        args = ["finetune", "--recipe", str(r.recipe), f"training.output_dir={target}", *r.overrides]
        if now == "resume":
            args += ["--resume", "latest"]
        began = time.perf_counter()
        code = _child(args)
        _add_wall(target, time.perf_counter() - began)
        if code:
            console.print(
                f"[red]{r.name} stopped with exit code {code}[/]; run the same command again to continue "
                "from its last checkpoint"
            )
            return code
    return 0


# The metric a row shows, by what the run's results hold (first found), and whether higher is better.
METRICS = (("entity_f1", True), ("mse", False), ("f1", True), ("accuracy", True))


def read(run: Run, out: Path) -> dict[str, Any]:
    """A finished run's row: its test (else validation) metric and baseline, training speed, memory, time."""
    target = out / run.name
    summary = json.loads((target / "summary.json").read_text())
    results = summary.get("test_metrics") or {}
    if "mse" in results or "pearson" in results:  # regression: MSE, against always predicting the mean
        metric, baseline = "mse", results.get("mean_mse")
    elif "entity_f1" in results:
        metric, baseline = "entity_f1", None
    elif "majority_accuracy" in results:
        metric, baseline = "accuracy", results["majority_accuracy"]
    else:
        metric = next((m for m, _ in METRICS if m in results), None)
        baseline = None
    wall = target / WALL
    return {
        "label": run.label,
        "name": run.name,
        "run": str(target),
        "attention": summary.get("attention"),
        "split": results.get("split"),
        "metric": metric,
        "value": results.get(metric) if metric else None,
        "baseline": baseline,
        "tokens_per_s": summary.get("tokens_per_s"),
        "peak_memory_mb": summary.get("peak_memory_mb"),
        "train_time_s": summary.get("train_time_s"),
        "wall_time_s": json.loads(wall.read_text())["seconds"] if wall.is_file() else None,
        "steps": summary.get("steps"),
    }


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], title: str) -> str:
    """The rows as an 80-column text table."""
    metric = next((r["metric"] for r in rows if r["metric"]), "metric")
    head = f"{'run':<21} {metric[:10]:>10} {'baseline':>9} {'tokens/s':>9} {'peak MB':>9} {'train s':>8} {'wall s':>8}"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name'][-21:]:<21} {_fmt(r['value'], '.4f'):>10} {_fmt(r['baseline'], '.4f'):>9} "
            f"{_fmt(r['tokens_per_s'], ',.0f'):>9} {_fmt(r['peak_memory_mb'], ',.0f'):>9} "
            f"{_fmt(r['train_time_s'], ',.0f'):>8} {_fmt(r['wall_time_s'], ',.0f'):>8}"
        )
    baseline = {"accuracy": "majority class", "mse": "predicting the mean"}.get(metric)
    if baseline:
        lines.append(f"baseline: {baseline}, on the same split")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Metric against training time, one marker per run, its area proportional to peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["value"] is not None and r["train_time_s"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    most = max((r["peak_memory_mb"] or 0 for r in shown), default=1) or 1
    for r in shown:
        size = 40 + 760 * (r["peak_memory_mb"] or 0) / most
        ax.scatter(r["train_time_s"], r["value"], s=size, alpha=0.6)
        ax.annotate(r["name"], (r["train_time_s"], r["value"]), textcoords="offset points", xytext=(6, 6))
    metric = next((r["metric"] for r in shown), "metric")
    baselines = {r["baseline"] for r in shown if r["baseline"] is not None}
    if len(baselines) == 1:
        what = "predicting the mean" if metric == "mse" else "majority class"
        ax.axhline(baselines.pop(), color="grey", linestyle="--", linewidth=1, label=f"baseline: {what}")
        ax.legend(loc="best", fontsize=8)
    ax.margins(x=0.2, y=0.15)  # room for the names beside the markers
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"{metric} ({shown[0]['split'] if shown else 'test'})")
    ax.set_title(f"{title}\nmarker area: peak memory (largest {most:,.0f} MB)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(
    recipe: str,
    attention: str | None,
    sources: str | None,
    out: str | None = None,
    overrides: list[str] | None = None,
    as_json: bool = False,
) -> int:
    """``longattn compare``: plan, run (or skip, or resume) every run, then the table, JSON and plot in OUT."""
    mechanisms = parse_list(attention, "--attention")
    baselines = parse_list(sources, "--sources")
    if attention is None and not baselines:
        mechanisms = ["softmax", "yoso", "nystrom", "lsg"]
    runs = plan(recipe, mechanisms, baselines, overrides)
    out_dir = Path(out or f"runs/compare-{Path(recipe).stem.replace(TEMPLATE, 'each')}")
    code = run_all(runs, out_dir)
    if code:
        return code
    write_report(runs, out_dir, f"{Path(recipe).name}: {len(runs)} runs", as_json)
    return 0


def write_report(
    runs: list[Run], out: Path, title: str, as_json: bool = False, show: bool = True
) -> list[dict[str, Any]]:
    """OUT/compare.txt (the table), OUT/compare.json (when, commit, command and the rows) and OUT/compare.png (the plot); with ``show``
    the table (or the JSON) printed."""
    rows = [read(r, out) for r in runs]
    text = table(rows, title)
    (out / "compare.txt").write_text(text)
    from longattn_cli.bench.machine import provenance

    (out / "compare.json").write_text(json.dumps({**provenance(), "rows": rows}, indent=2) + "\n")
    plot(rows, out / "compare.png", title)
    if not show:
        return rows
    print(json.dumps(rows, indent=2) if as_json else text, end="" if not as_json else "\n")
    if not as_json:
        print(f"table, rows and plot: {out}/compare.txt, compare.json, compare.png")
    return rows
