"""The memory levers' table: a base-size encoder's training step per mechanism, plain, with gradient
checkpointing and in bf16, from the ``longattn benchmark`` JSON files that ``scripts/performance.sh`` writes
(``levers-{4k,16k}-{plain,checkpointed,bf16}.json``)::

    python scripts/memory_levers.py results/performance
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEVERS = {"plain": "fp32", "checkpointed": "fp32, checkpointed", "bf16": "bf16"}


def cell(point: dict | None) -> str:
    if point is None:
        return "–"
    if point["status"] != "ok":
        return point["status"]
    ms = point["time_s"] * 1e3
    mib = (point.get("peak_memory_bytes") or 0) / 2**20
    return f"{ms / 1e3:,.1f} s · {mib:,.0f} MiB"


def table(directory: Path, length: str) -> list[str]:
    runs = {}
    for lever in LEVERS:
        f = directory / f"levers-{length}-{lever}.json"
        if f.exists():
            runs[lever] = {p["label"]: p for p in json.loads(f.read_text())["points"]}
    if not runs:
        return []
    labels = list(next(iter(runs.values())))
    first = next(iter(next(iter(runs.values())).values()))
    layers = json.loads((directory / f"levers-{length}-plain.json").read_text())["options"]["shape"][
        "num_layers"
    ]
    lines = [
        f"Training step, base width, {layers} layers, n = {first['n']:,} (median · peak):",
        "",
        "| attention | " + " | ".join(LEVERS[x] for x in runs) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    for label in labels:
        lines.append(f"| `{label}` | " + " | ".join(cell(runs[x].get(label)) for x in runs) + " |")
    return lines + [""]


def main(argv: list[str]) -> int:
    directory = Path(argv[0] if argv else "results/performance")
    for length in ("4k", "16k"):
        print("\n".join(table(directory, length)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
