"""What ``longattn benchmark`` shows and writes: a live table, JSON, CSV and a log-log plot."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from longattn_cli.bench.status import OK
from longattn_cli.errors import UserError

STATUS_STYLE = {
    "ok": "green",
    "OOM": "red",
    "timeout": "yellow",
    "skipped": "dim",
    "unavailable": "dim",
    "error": "red",
}


def _ms(seconds: float | None) -> str:
    return (
        "" if seconds is None else f"{seconds * 1e3:.3g}" if seconds * 1e3 < 1000 else f"{seconds * 1e3:,.0f}"
    )


def _mib(nbytes: int | None) -> str:
    if nbytes is None:
        return ""
    mib = nbytes / 2**20
    return f"{mib:.1f}" if mib < 100 else f"{mib:,.0f}"


def _pair(a: float | None, b: float | None) -> str:
    if a is None and b is None:
        return ""
    return f"{_ratio(a)}/{_ratio(b)}"


def _ratio(x: float | None) -> str:
    """At most four characters: 0.38, 4.36, 27.5, 127."""
    return "–" if x is None else f"{x:.2f}" if x < 9.995 else f"{x:.1f}" if x < 99.95 else f"{x:.0f}"


def _short(x: float) -> str:
    """At most four characters, for a spread or a rate: 7.13, 289, 1.1k, 19k."""
    return f"{x:.3g}" if x < 999.5 else f"{x / 1e3:.1f}k" if x < 9950 else f"{x / 1e3:.0f}k"


def _mem(nbytes: int | None) -> str:
    """At most five characters with the unit: 46.8M, 332M, 3.1G."""
    if nbytes is None:
        return ""
    mib = nbytes / 2**20
    return f"{mib:.3g}M" if mib < 999.5 else f"{mib / 1024:.1f}G"


# Status words in the group table (the footnote says the rest): short enough for nine columns in 80.
_STATUS_WORDS = {"unavailable": "n/a"}


def _share(p: dict[str, Any]) -> str:
    """Percent of the ceiling, in three characters: 88, 4.3, 0.2."""
    share = p.get("ceiling_share")
    return "" if share is None else f"{share * 100:.0f}" if share >= 0.0995 else f"{share * 100:.1f}"


def _baseline_note(points: list[dict[str, Any]]) -> str:
    """Which SDPA the ÷SDPA column divides by (the points of one mode agree)."""
    used = {p.get("sdpa_baseline") for p in points} - {None}
    if not used:
        return ""
    label = used.pop()
    if label == "softmax-sdpa-fused":
        return " · ÷SDPA: ÷ softmax-sdpa-fused (no attention dropout: fused kernel)"
    return f" · ÷SDPA: ÷ {label}"


def _compact(title: str, caption: str, **spacing) -> Table:
    """A table without side borders, title and caption on the left: what fits 80 columns."""
    return Table(
        title=title,
        caption=caption,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        **spacing,
    )


def group_table(points: list[dict[str, Any]]) -> Group:
    """The points of one (scope, mode, length) group: one row per candidate, within 80 columns.

    A status with a message (unavailable, OOM, ...) shows its word and a footnote number; the messages
    follow the table, one line each, so that no cell wraps word by word.
    """
    p0 = points[0]
    what = {"forward": "forward", "train": "forward+backward"}[p0["mode"]]
    table = _compact(
        f"{p0['scope']} · {what} · n={p0['n']:,} · batch {p0['batch']}"
        + (f" · {p0['dtype']}" if p0.get("dtype", "float32") != "float32" else "")
        + (" · checkpointed" if p0.get("gradient_checkpointing") else "")
        + (" · compiled" if p0.get("compile") else ""),
        "ms: median step · IQR: quartile spread · mem: peak · ÷ t/m: time/memory ratios · %pk: percent of the "
        "machine's matmul ceiling reached, by the algorithm's FLOP count" + _baseline_note(points),
        padding=(0, 0),  # nine columns in 80: one space between them
    )
    for name in ("attention", "ms", "IQR", "tok/s", "mem", "÷ref t/m", "÷SDPA t/m", "%pk", "status"):
        table.add_column(name, justify="left" if name in ("attention", "status") else "right", no_wrap=True)
    notes: list[str] = []
    for p in points:
        ok = p["status"] == OK
        name = escape(p["label"]) if p["kind"] == "ours" else f"[italic]{escape(p['label'])}[/]"
        status = p["status"]
        if not ok and status != "running" and p.get("message"):
            notes.append(f"[{len(notes) + 1}] {p['label']} {status}: {p['message']}")
            status = f"{_STATUS_WORDS.get(status, status)} [{len(notes)}]"
        elif p.get("note"):  # how a reference ran at this length (its window, padding, a fallback)
            notes.append(f"[{len(notes) + 1}] {p['label']}: {p['note']}")
            status = f"{status} [{len(notes)}]"
        elif ok and p.get("compile_s") is not None:
            from longattn_cli.models.compiled import describe_breaks

            breaks = describe_breaks(Counter(p.get("graph_break_reasons") or {}), most=1)
            notes.append(f"[{len(notes) + 1}] {p['label']}: compiled in {p['compile_s']:.0f} s; {breaks}")
            status = f"{status} [{len(notes)}]"
        table.add_row(
            name,
            _ms(p.get("time_s")) if ok else "",
            _short((p["time_q3_s"] - p["time_q1_s"]) * 1e3) if ok else "",
            (f"{p['tokens_per_s']:,.0f}" if p["tokens_per_s"] < 9999.5 else _short(p["tokens_per_s"]))
            if ok
            else "",
            _mem(p.get("peak_memory_bytes")) if ok else "",
            _pair(p.get("vs_reference_time"), p.get("vs_reference_memory")),
            _pair(p.get("vs_sdpa_time"), p.get("vs_sdpa_memory")),
            _share(p) if ok else "",
            f"[{STATUS_STYLE.get(p['status'], 'cyan')}]{escape(status)}[/]",
        )
    return Group(table, *(Text(note, style="dim") for note in notes))


def summary_tables(points: list[dict[str, Any]]) -> list[Table]:
    """One table per (scope, mode): a row per candidate, a column per length, cells "time ms / peak MiB"."""
    out = []
    for scope, mode in dict.fromkeys((p["scope"], p["mode"]) for p in points):
        rows = [p for p in points if p["scope"] == scope and p["mode"] == mode]
        lengths = sorted({p["n"] for p in rows})
        what = {"forward": "forward", "train": "forward+backward"}[mode]
        table = _compact(f"{scope} · {what}", "cells: median step ms / peak MiB", collapse_padding=True)
        table.add_column("attention", no_wrap=True)
        for n in lengths:
            table.add_column(f"{n:,}", justify="right", no_wrap=True)
        for label in dict.fromkeys(p["label"] for p in rows):
            cells = {p["n"]: p for p in rows if p["label"] == label}
            table.add_row(escape(label), *(_cell(cells.get(n)) for n in lengths))
        out.append(table)
    return out


def _cell(p: dict[str, Any] | None) -> str:
    if p is None:
        return ""
    if p["status"] != OK:
        return f"[{STATUS_STYLE.get(p['status'], 'cyan')}]{p['status']}[/]"
    return f"{_ms(p['time_s'])} / {_mib(p.get('peak_memory_bytes'))}"


class LiveTable:
    """Progress bar plus the table of the group being measured; finished groups stay printed above."""

    def __init__(self, result: dict[str, Any], total: int, console: Console | None = None):
        self.result = result
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("benchmark", total=total)
        self.group: list[dict[str, Any]] = []
        # Redrawn only between points: a refresh thread would compete with the measured step for the CPU
        # (and, measuring in this process, for the GIL between operators).
        self.live = Live(self._render(), console=self.console, transient=True, auto_refresh=False)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self._flush()
        self.live.__exit__(*exc)
        if self.result["points"]:
            for table in summary_tables(self.result["points"]):
                self.console.print(table)

    def _render(self):
        return Group(group_table(self.group), self.progress) if self.group else self.progress

    def _flush(self):
        if self.group:
            self.console.print(group_table(self.group))
            self.group = []

    def start(self, point: dict[str, Any]) -> None:
        """A point begins: a new group prints the finished one."""
        if self.group and (self.group[0]["mode"], self.group[0]["n"]) != (point["mode"], point["n"]):
            self._flush()
        self.group.append(point)
        self.progress.update(self.task, description=f"{point['label']} · {point['mode']} · n={point['n']:,}")
        self.live.update(self._render(), refresh=True)

    def finish(self, point: dict[str, Any]) -> None:
        """A point ended (measured, failed or skipped)."""
        self.progress.advance(self.task)
        self.live.update(self._render(), refresh=True)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Every point with its raw step times, the options and the machine."""
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


CSV_FIELDS = [
    "label", "kind", "mechanism", "scope", "mode", "n", "batch", "status", "message", "note",
    "time_s", "time_q1_s", "time_q3_s", "time_min_s", "time_max_s", "tokens_per_s", "peak_memory_bytes",
    "memory_method", "reference", "vs_reference_time", "vs_reference_memory", "sdpa_baseline",
    "vs_sdpa_time", "vs_sdpa_memory", "gflop", "gflops", "ceiling_share", "gradient_checkpointing", "compile", "compile_s", "graph_breaks", "settings",
    "times_s",
]  # fmt: skip
MACHINE_FIELDS = ["cpu", "cpu_count", "threads", "memory_gb", "torch", "transformers", "device", "gpu"]


def write_csv(result: dict[str, Any], path: str | Path) -> None:
    """One row per point; the machine's description is repeated on every row (``machine_*`` columns)."""
    fields = CSV_FIELDS + [f"machine_{k}" for k in MACHINE_FIELDS] + ["machine_ceiling_gflops", "dtype"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for p in result["points"]:
            row = {k: p.get(k) for k in CSV_FIELDS}
            row["settings"] = json.dumps(p.get("settings"), sort_keys=True)
            row["times_s"] = json.dumps(p.get("times_s")) if p.get("times_s") is not None else None
            row.update({f"machine_{k}": result["machine"].get(k) for k in MACHINE_FIELDS})
            row["machine_ceiling_gflops"] = (result["machine"].get("ceiling") or {}).get("gflops")
            row["dtype"] = result["options"]["dtype"]
            writer.writerow(row)


def require_matplotlib() -> None:
    """A one-line error, before any measuring, when ``--plot`` is asked for and matplotlib is missing (it is
    a dependency, so only a broken install gets here)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib, which is missing here: pip install matplotlib") from None


# One colour per mechanism family (references share their family's colour, dashed).
FAMILY_COLOURS = {"softmax": "#4c4c4c", "nystrom": "#1f77b4", "yoso": "#d62728", "lsg": "#2ca02c"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def styles(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Line style per label: the mechanism's colour, one marker per variant of it, references dashed."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    colours = dict(FAMILY_COLOURS)  # mechanisms registered elsewhere get the next spare colour, per plot
    extra = iter(("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e"))
    for p in points:
        label = p["label"]
        if label in out:
            continue
        family = p.get("mechanism") or label.split("-")[0]
        if family not in colours:
            colours[family] = next(extra, "#7f7f7f")
        colour = colours[family]
        k = seen.get(family, 0)
        seen[family] = k + 1
        reference = p["kind"] == "reference"
        out[label] = dict(
            color=colour,
            marker=MARKERS[k % len(MARKERS)],
            linestyle="--" if reference else "-",
            markerfacecolor="white" if reference else colour,
        )
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Time and peak memory against length, log-log: a row of two panels per mode, one legend outside the
    axes, every measured length ticked, and the points that did not run listed under the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    points = [p for p in result["points"] if p["status"] == OK]
    modes = list(dict.fromkeys(p["mode"] for p in result["points"]))
    lengths = sorted({p["n"] for p in result["points"]})
    style = styles(result["points"])
    failed = [p for p in result["points"] if p["status"] != OK]
    notes = _missing_notes(failed)
    height = 3.6 * len(modes) + 0.25 * len(notes) + 0.6
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, height), squeeze=False)
    handles: dict[str, Any] = {}
    for row, mode in zip(axes, modes, strict=True):
        for label in style:
            mine = sorted(
                (p for p in points if p["mode"] == mode and p["label"] == label), key=lambda p: p["n"]
            )
            if not mine:
                continue
            ns = [p["n"] for p in mine]
            (line,) = row[0].plot(ns, [p["time_s"] * 1e3 for p in mine], label=label, **style[label])
            handles.setdefault(label, line)
            mem = [(p["n"], p["peak_memory_bytes"] / 2**20) for p in mine if p.get("peak_memory_bytes")]
            if mem:
                row[1].plot(*zip(*mem, strict=True), label=label, **style[label])
        what = {"forward": "forward", "train": "forward+backward"}[mode]
        for ax, ylabel in zip(row, ("time per step (ms)", "peak memory (MiB)"), strict=True):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(lengths))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{n:,}" for n in lengths], rotation=45 if len(lengths) > 5 else 0)
            ax.set_xlabel("sequence length (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{result['options']['scope']} · {what}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    m = result["machine"]
    fig.suptitle(f"longattn benchmark · {m.get('gpu') or m['cpu']} · torch {m['torch']}", fontsize=10)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=8, title="solid: longattn · dashed: reference", title_fontsize=8)  # fmt: skip
    bottom = (0.25 * len(notes) + 0.3) / height if notes else 0.0
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", ha="left", family="monospace")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _missing_notes(failed: list[dict[str, Any]], width: int = 150) -> list[str]:
    """One line per (label, mode, status): the lengths that did not run and why, shortened to fit."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for p in failed:
        grouped.setdefault((p["label"], p["mode"], p["status"]), []).append(p)
    lines = ["not plotted (did not run):"] if grouped else []
    for (label, mode, status), ps in grouped.items():
        ns = ", ".join(f"{p['n']:,}" for p in sorted(ps, key=lambda p: p["n"]))
        why = (ps[0].get("message") or "").splitlines()[0] if ps[0].get("message") else ""
        line = f"  {label} · {mode} · n={ns}: {status}{' — ' + why if why else ''}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return lines
