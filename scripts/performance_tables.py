"""Markdown tables for the README's Performance section, from ``longattn benchmark --json`` files.

    python scripts/performance_tables.py results/performance/layer.json [results/performance/model.json ...]

One table per (file, mode): a row per candidate, a column per length, cells ``ms · MiB · %pk`` (median step,
peak memory, share of the machine's matmul ceiling), or the status of a point that did not run; then the
time and memory ratios to the run's SDPA baseline (``÷SDPA``, named under the table).
"""

from __future__ import annotations

import json
import sys


def _ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _mib(b: int | None) -> str:
    return "–" if b is None else f"{b / 2**20:,.0f}"


def cell(p: dict | None) -> str:
    if p is None:
        return ""
    if p["status"] != "ok":
        return p["status"]
    share = p.get("ceiling_share")
    pk = "" if share is None else f" · {share * 100:.0f}%" if share >= 0.0995 else f" · {share * 100:.1f}%"
    half = (p["time_q3_s"] - p["time_q1_s"]) / 2 * 1e3
    spread = f"{half:,.0f}" if half >= 10 else f"{half:.2g}"
    return f"{_ms(p['time_s'])} ±{spread} · {_mib(p.get('peak_memory_bytes'))}{pk}"


def ratio(p: dict | None) -> str:
    if p is None or p["status"] != "ok" or p.get("vs_sdpa_time") is None:
        return "" if p is None or p["status"] == "ok" else p["status"]
    mem = p.get("vs_sdpa_memory")
    return f"{p['vs_sdpa_time']:.2f} / {'–' if mem is None else f'{mem:.2f}'}"


def tables(path: str) -> str:
    data = json.loads(open(path).read())
    points, out = data["points"], []
    m = data["machine"]
    ceiling = (m.get("ceiling") or {}).get("gflops")
    out.append(
        f"<!-- {path}: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}, "
        f"ceiling {ceiling:.0f} GFLOP/s ({(m.get('ceiling') or {}).get('method')}) -->"
    )
    for mode in dict.fromkeys(p["mode"] for p in points):
        rows = [p for p in points if p["mode"] == mode]
        lengths = sorted({p["n"] for p in rows})
        labels = list(dict.fromkeys(p["label"] for p in rows))
        by = {(p["label"], p["n"]): p for p in rows}
        what = {"forward": "Forward", "train": "Forward + backward"}[mode]
        head = "| attention | " + " | ".join(f"{n:,}" for n in lengths) + " |"
        rule = "| --- | " + " | ".join("---:" for _ in lengths) + " |"
        out += [f"\n{what} (median ms ±half the IQR · peak MiB · % of the ceiling):\n", head, rule]
        out += [
            f"| `{lab}` | " + " | ".join(cell(by.get((lab, n))) for n in lengths) + " |" for lab in labels
        ]
        base = {p.get("sdpa_baseline") for p in rows} - {None}
        out += [f"\n{what}, time / memory ÷ `{', '.join(sorted(base))}`:\n", head, rule]
        out += [
            f"| `{lab}` | " + " | ".join(ratio(by.get((lab, n))) for n in lengths) + " |" for lab in labels
        ]
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(tables(p) for p in sys.argv[1:]))
