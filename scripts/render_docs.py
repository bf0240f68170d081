"""Render the results tables and plots of README.md and docs/ from the result files (``make docs``).

A page holds a rendered block between ``<!-- rendered: NAME -->`` and ``<!-- /rendered -->``; this script
replaces what lies between with the block NAME, built from ``results/``, headed by where it comes from.
``--check`` changes nothing and exits 1 where a page differs from what the result files give (CI runs it)::

    python scripts/render_docs.py            # rewrite the blocks and the plots
    python scripts/render_docs.py --check    # CI: are the committed pages what the results say?
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- rendered: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /rendered -->)", re.S)
LAYER = "results/performance/layer.json"
LAYER_LABELS = (
    "softmax-sdpa-fused", "yoso-lsh", "nystrom", "lsg-norm", "hf-yoso-e", "hf-nystrom", "hf-longformer",
    "hf-bigbird",
)  # fmt: skip


INDEX = "results/index.json"  # the result files the docs show, and on which pages


def _load(path: str):
    """A result file the docs show: listed in :data:`INDEX` (else this stops, naming the file)."""
    shown = json.loads((ROOT / INDEX).read_text())["shown"]
    if path not in shown:
        raise SystemExit(
            f"{path} is not in {INDEX}; list it there with what it is and the command that made it"
        )
    return json.loads((ROOT / path).read_text())


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table: the first column left-aligned, the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def provenance(path: str, data: dict) -> str:
    """Where a table's numbers come from, in one line: the file, date, commit, command, machine, versions."""
    m = data.get("machine") or {}
    if isinstance(m.get("cpu"), str) or not m:
        cpu = m.get("gpu") or m.get("cpu") or "machine not recorded"
    else:
        cpu = str(m)
    parts = [
        f"[`{path}`]({path})",  # relative to the page: render_page fixes it
        data.get("when") or "date not recorded",
        f"commit {data['commit']}" if data.get("commit") else "commit not recorded",
        cpu + (f", {m['threads']} threads" if m.get("threads") else ""),
    ]
    if m.get("torch"):
        parts.append(f"torch {m['torch']}, transformers {m.get('transformers', '?')}")
    if data.get("command"):
        parts.append(f"`{data['command']}`")
    return "Source: " + " · ".join(parts)


def _layer_train(label: str, n: int, points: list[dict]) -> dict | None:
    return next(
        (
            p
            for p in points
            if p["label"] == label and p["n"] == n and p["mode"] == "train" and p["status"] == "ok"
        ),
        None,
    )


def glance(page: Path) -> str:
    """One base-size layer in training at 4,096 and 16,384 tokens against torch's fused SDPA, and the plot."""
    data = _load(LAYER)
    points = data["points"]
    lines = [
        f"![time and memory against length]({_rel(page, 'docs/layer.png')})",  # not under results/
        "",
        "One base-size attention layer (12 heads × 64) in training, forward + backward, with attention dropout",
        f"{data['options']['dropout']}, against softmax through torch's fused SDPA kernel (no dropout: on CPU the",
        "kernel has none); `hf-*` are transformers' own implementations, in the same run:",
        "",
    ]
    rows = []
    for label in LAYER_LABELS:
        cells = [label]
        for n in (4096, 16384):
            p, base = _layer_train(label, n, points), _layer_train("softmax-sdpa-fused", n, points)
            if p is None:
                failed = next(
                    (q for q in points if q["label"] == label and q["n"] == n and q["mode"] == "train"), None
                )
                cells += [failed["status"] if failed else "—", "—"]
            else:
                cells += [
                    f"{p['time_s'] / base['time_s']:.2f}",
                    f"{p['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}",
                ]
        rows.append(cells)
    head = [
        "variant",
        "time ÷ SDPA, 4,096",
        "memory ÷ SDPA, 4,096",
        "time ÷ SDPA, 16,384",
        "memory ÷ SDPA, 16,384",
    ]
    lines += _table(head, rows)
    lines += ["", provenance(LAYER, data)]
    return "\n".join(lines) + "\n"


def listops(page: Path) -> str:
    """The LRA ListOps runs at CPU scale beside the published accuracies."""
    path = "results/lra-cpu/listops.json"
    data = _load(path)
    record, data = (data, data["rows"]) if isinstance(data, dict) else ({}, data)  # older files: rows only
    lines = [
        "LRA ListOps at CPU scale (24,000 training trees of 200–600 tokens; `longattn lra run listops`), test",
        "accuracy in %:",
        "",
    ]
    rows = [
        [
            r["attention"],
            f"{r['accuracy']:.2f}",
            f"{r['majority']:.1f}",
            "—" if r.get("published") is None else f"{r['published']:.2f}",
            f"{r['train_time_s'] / 60:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['peak_memory_mb']:,.0f}",
        ]  # fmt: skip
        for r in data
    ]
    head = [
        "attention",
        "ours",
        "majority class",
        "published (paper scale)",
        "training min",
        "tokens/s",
        "peak MB",
    ]
    lines += _table(head, rows)
    source = provenance(path, record) if record else f"Source: [`{path}`]({path}) · date not recorded"
    lines += ["", f"{source} (runs of `recipes/lra/cpu/`, 2 CPU cores)"]
    return "\n".join(lines) + "\n"


def onnx(page: Path) -> str:
    """onnxruntime against torch, forward, per mechanism and length."""
    path = "results/onnx/speed.json"
    data = _load(path)
    size = data["size"]
    lines = [
        f"Forward, batch 1, {size['num_hidden_layers']} layers × {size['hidden_size']} wide, median of "
        f"{data['repeats']}, onnxruntime {data['machine']['onnxruntime']}:",
        "",
    ]
    rows = [
        [
            name,
            f"{r['length']:,}",
            f"{r['torch_s'] * 1e3:,.0f}",
            f"{r['onnxruntime_s'] * 1e3:,.0f}",
            f"{r['onnxruntime_over_torch']:.2f}",
            f"{r['max_abs_diff']:.0e}",
        ]  # fmt: skip
        for name, m in data["mechanisms"].items()
        for r in m["rows"]
    ]
    lines += _table(
        ["mechanism", "tokens", "torch ms", "onnxruntime ms", "onnxruntime ÷ torch", "max \\|Δ\\|"], rows
    )
    lines += ["", provenance(path, data)]
    return "\n".join(lines) + "\n"


def predict(page: Path) -> str:
    """longattn predict against transformers' pipeline."""
    path = "results/predict/throughput.json"
    data = _load(path)
    rate = data["documents_per_s"]
    lines = [
        f"{data['documents']} documents of 100–4,096 tokens, {data['attention']}, batch {data['batch_size']}:",
        "",
        *_table(["", "documents/s"], [[k, f"{v:.2f}"] for k, v in rate.items()]),
        "",
        f"{data['speedup']:.2f}× the pipeline, the same labels on {data['same_labels']} documents.",
        "",
        provenance(path, {**data, "machine": {"cpu": data["machine"], "threads": data["threads"]}}),
    ]
    return "\n".join(lines) + "\n"


def _ok(points: list[dict], label: str, mode: str) -> dict | None:
    return next(
        (x for x in points if x["label"] == label and x["mode"] == mode and x["status"] == "ok"), None
    )


def model_table(path: str):
    """A model-scope ``longattn benchmark`` run: per mechanism and mode, the median step, time and memory ÷
    the fused SDPA's, and the share of the machine's matmul ceiling; with ``--compile``, the compile time and
    graph breaks."""

    def block(page: Path) -> str:
        data = _load(path)
        points, opts = data["points"], data["options"]
        modes = [m for m in ("forward", "train") if any(x["mode"] == m for x in points)]
        compiled = bool(opts.get("compile"))
        head = ["attention"]
        for mode in modes:
            what = "training" if mode == "train" else "forward"
            head += [f"{what} ms", f"{what} ÷ SDPA, time / memory", "% of ceiling"]
        if compiled:
            head += ["compile s (fwd / train)", "graph breaks"]
        rows = []
        for label in dict.fromkeys(x["label"] for x in points):
            row, cells = [f"`{label}`"], [_ok(points, label, m) for m in modes]
            for x in cells:
                row += (
                    [
                        f"{x['time_s'] * 1e3:,.0f}",
                        f"{x['vs_sdpa_time']:.2f} / {x['vs_sdpa_memory']:.2f}",
                        f"{x['ceiling_share'] * 100:.0f}%",
                    ]  # fmt: skip
                    if x and x.get("vs_sdpa_time") is not None
                    else [f"{x['time_s'] * 1e3:,.0f}" if x else "–", "–", "–"]
                )
            if compiled:
                row += [
                    " / ".join(f"{x['compile_s']:.0f}" if x else "–" for x in cells),
                    str(max((x.get("graph_breaks", 0) for x in cells if x), default=0)),
                ]
            rows.append(row)
        shape = opts["shape"]
        lines = [
            f"{opts['lengths'][0]:,} tokens, {shape['num_layers']} layers × {shape['hidden_size']} wide, batch "
            f"{opts['batch']}, dropout {opts['dropout']:g}, median of {opts['repeats']} steps:",
            "",
            *_table(head, rows),
            "",
            provenance(path, data),
        ]
        return "\n".join(lines) + "\n"

    return block


def bf16(page: Path) -> str:
    """bf16 autocast training against fp32, the default pretraining, per mechanism."""
    path = "results/bf16/pretrain-200.json"
    data = _load(path)
    rows = []
    for name, r in data["mechanisms"].items():
        a, b = r["fp32"], r["bf16"]
        rows.append(
            [f"`{name}`", f"{a['train_time_s']:.0f}", f"{b['train_time_s']:.0f}",
             f"{b['train_time_s'] / a['train_time_s']:.2f}", f"{a['peak_memory_mb']:,.0f}",
             f"{b['peak_memory_mb']:,.0f}", f"{b['peak_memory_mb'] / a['peak_memory_mb']:.2f}",
             a["results"]["validation loss"], b["results"]["validation loss"], f"{r['max_loss_gap']:.3f}"]
        )  # fmt: skip
    head = ["attention", "fp32 s", "bf16 s", "÷", "fp32 MB", "bf16 MB", "÷", "validation fp32", "validation bf16",
            "largest loss gap"]  # fmt: skip
    lines = [
        f"The default pretraining, {data['steps']} steps, same data and seed (memory: the process's resident "
        "set):",
        "",
        *_table(head, rows),
        "",
        provenance(path, data),
    ]
    return "\n".join(lines) + "\n"


MODEL_4K = "results/performance/model-4k.json"
MODEL_4K_COMPILED = "results/performance/model-4k-compiled.json"
MODEL_16K = "results/performance/model-16k-2layers.json"


def recipe_keys(kind: str):
    """Every key of a ``kind`` recipe with its default and what it does: ``--print-recipe``'s output."""

    def block(page: Path) -> str:
        import os

        from longattn_cli.training.config import describe, load_recipe

        before = os.environ.get("LONGATTN_CACHE")
        os.environ["LONGATTN_CACHE"] = "~/.cache/longattn"  # the default as written, not this machine's path
        try:
            text = describe(load_recipe(kind, None, {}, complete=False))
        finally:
            if before is None:
                del os.environ["LONGATTN_CACHE"]
            else:
                os.environ["LONGATTN_CACHE"] = before
        return f"`longattn {kind} --print-recipe`:\n\n```yaml\n{text.rstrip()}\n```\n"

    return block


BLOCKS = {
    "glance": glance,
    "listops": listops,
    "onnx": onnx,
    "predict": predict,
    "model-4k": model_table(MODEL_4K),
    "model-4k-compiled": model_table(MODEL_4K_COMPILED),
    "model-16k": model_table(MODEL_16K),
    "bf16": bf16,
    "recipe-pretrain": recipe_keys("pretrain"),
    "recipe-finetune": recipe_keys("finetune"),
}
SOURCES = {  # the result file each block reads
    "glance": LAYER,
    "listops": "results/lra-cpu/listops.json",
    "onnx": "results/onnx/speed.json",
    "predict": "results/predict/throughput.json",
    "model-4k": MODEL_4K,
    "model-4k-compiled": MODEL_4K_COMPILED,
    "model-16k": MODEL_16K,
    "bf16": "results/bf16/pretrain-200.json",
}


def index_problems() -> list[str]:
    """Where results/index.json's pages differ from the pages that show each file."""
    shown: dict[str, set[str]] = {}
    for page in pages():
        for match in BLOCK.finditer((ROOT / page).read_text()):
            if match["name"] in SOURCES:
                shown.setdefault(SOURCES[match["name"]], set()).add(str(page))
    listed = {k: set(v["pages"]) for k, v in json.loads((ROOT / INDEX).read_text())["shown"].items()}
    return [f"{INDEX}: {path} is shown in {sorted(shown.get(path, ()))}, listed for {sorted(listed.get(path, ()))}"
            for path in sorted(set(shown) | set(listed)) if shown.get(path) != listed.get(path)]  # fmt: skip


def _rel(page: Path, target: str) -> str:
    """``target`` (relative to the repository) as a link from ``page``."""
    import os

    return os.path.relpath(ROOT / target, (ROOT / page).parent)


def render_page(page: Path, text: str) -> str:
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"{page}: unknown rendered block {name!r}; known: {', '.join(BLOCKS)}")
        return match.group(1) + BLOCKS[name](page) + match.group(4)

    text = BLOCK.sub(fill, text)
    # The provenance links point from the repository root; from a page in docs/ they need its relative path.
    return re.sub(
        r"\[`(results/[^`]+)`\]\((results/[^)]+)\)", lambda m: f"[`{m[1]}`]({_rel(page, m[2])})", text
    )


def layer_plot(path: Path) -> None:
    from longattn_cli.bench.report import plot

    data = _load(LAYER)
    data["points"] = [p for p in data["points"] if p["label"] in LAYER_LABELS]
    plot(data, path)


PLOTS = {"docs/layer.png": layer_plot}


def pages() -> list[Path]:
    return [Path("README.md"), *sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="Change nothing; exit 1 where a page is stale.")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = (ROOT / page).read_text()
        new = render_page(page, text)
        if new != text:
            stale.append(str(page))
            if not args.check:
                (ROOT / page).write_text(new)
    if args.check:
        missing = [p for p in PLOTS if not (ROOT / p).is_file()]
        for problem in index_problems():
            print(problem, file=sys.stderr)
            stale.append(INDEX)
        if stale or missing:
            print(
                f"stale: {', '.join(stale + missing)}; run `make docs` and commit the result", file=sys.stderr
            )
            return 1
        print("the rendered pages match the result files")
        return 0
    for path, draw in PLOTS.items():
        draw(ROOT / path)
    print(f"rendered {len(stale)} page(s) and {len(PLOTS)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
