"""``longattn benchmark``: time and peak memory of every attention mechanism against sequence length.

The sweep measures *candidates* (our mechanisms, one per labelled setting from each mechanism's
``benchmark_variants()``, and with ``--reference`` transformers' own implementations) at every length, in one or
both modes (forward; forward+backward), in one scope (one attention layer, or a whole model). This module plans
the points and runs them; what is measured is :mod:`longattn_cli.bench.candidates` (with transformers'
references in :mod:`longattn_cli.bench.references`), how one point is built and measured
:mod:`longattn_cli.bench.point`, the arithmetic and ratios :mod:`longattn_cli.bench.roofline`, the tables,
files and plot :mod:`longattn_cli.bench.report`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from longattn_cli.bench.candidates import Candidate, select_candidates
from longattn_cli.bench.machine import available_memory, machine, provenance
from longattn_cli.bench.roofline import algorithm_flops, best_ceiling, compute_ratios, roofline
from longattn_cli.bench.status import OOM, SKIPPED, TIMEOUT, UNAVAILABLE
from longattn_cli.errors import UserError
from longattn_cmd.options import MODEL_SIZES, BenchmarkOptions

MODES = {"forward": ("forward",), "train": ("train",), "both": ("forward", "train")}  # --mode: what runs

# Encoder shapes for --scope model (BERT's and RoBERTa's sizes; tiny is for tests and smoke runs).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}
assert tuple(PRESETS) == MODEL_SIZES  # --model-size's choices are declared with the option
VOCAB_SIZE = 50265  # RoBERTa's; the vocabulary only sizes the embedding table, which is not timed apart


def model_shape(opts: BenchmarkOptions) -> tuple[dict[str, int], str | None]:
    """The encoder shape measured, and the resolved checkpoint directory (``--model``) if any."""
    if opts.model:
        from longattn_cli.hub import resolve
        from longattn_cli.models.checkpoints import import_config

        directory = resolve(opts.model)
        fixed = [f"--{n.replace('_', '-')}" for n in ("heads", "head_dim", "layers") if getattr(opts, n)]
        if fixed:
            raise UserError(
                f"{', '.join(fixed)} cannot be combined with --model: the checkpoint fixes the shape"
            )
        config = import_config(directory)
        limit = config.max_sequence_length
        too_long = [n for n in opts.lengths if n > limit]
        if too_long and opts.scope == "model":
            raise UserError(
                f"--lengths {too_long[0]} is above the {limit} positions of {opts.model}; use lengths up to {limit}"
            )
        shape = dict(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
        )
        return shape, str(directory)
    shape = dict(PRESETS[opts.model_size], vocab_size=VOCAB_SIZE)
    heads = opts.heads or shape["num_heads"]
    head_dim = opts.head_dim or shape["hidden_size"] // shape["num_heads"]
    shape.update(num_heads=heads, hidden_size=heads * head_dim, num_layers=opts.layers or shape["num_layers"])
    if opts.heads or opts.head_dim:
        shape["intermediate_size"] = 4 * shape["hidden_size"]
    return shape, None


def plan(
    opts: BenchmarkOptions,
    candidates: list[Candidate],
    shape: dict[str, int],
    model_dir: str | None,
    device: str,
):
    """Every point of the sweep, in run order: mode, then length, then candidate."""
    for mode in MODES[opts.mode]:
        for n in opts.lengths:
            for cand in (c for c in candidates if mode in c.modes):
                spec = dict(
                    scope=opts.scope,
                    mode=mode,
                    n=n,
                    batch=opts.batch,
                    shape=shape,
                    model_dir=model_dir,
                    candidate=cand.spec(n),
                    dtype=opts.dtype,
                    device=device,
                    warmup=opts.warmup,
                    repeats=opts.repeats,
                    min_time=opts.min_time,
                    dropout=opts.dropout,
                    gradient_checkpointing=opts.gradient_checkpointing,
                    compile=opts.compile,
                    time_budget=opts.time_budget or None,
                    seed=opts.seed,
                )
                yield cand, spec


def run(
    opts: BenchmarkOptions,
    json_path: str | None = None,
    csv_path: str | None = None,
    plot_path: str | None = None,
) -> dict[str, Any]:
    """Run the sweep with a live table, then write the requested files.

    Returns:
        ``{"when", "commit", "command", "machine": {...}, "options": {...}, "points": [...]}``, one point per (mode, length, candidate).
    """
    from longattn_cli.bench import report

    opts.check()
    if plot_path:
        report.require_matplotlib()
    candidates = select_candidates(
        opts.attention, opts.settings, opts.reference, opts.dropout, opts.reference_models
    )
    from longattn_cli.devices import pick_device, pick_dtype  # torch: after the checks that need none

    pick_dtype(opts.dtype)
    device = str(pick_device(opts.device))
    shape, model_dir = model_shape(opts)
    result = {
        **provenance(),
        "machine": machine(device, opts.threads),
        "options": _options_record(opts, shape, device),
        "points": [],
    }
    runner = _runner(opts, device)
    interrupted = False
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C keeps what was measured
    ceiling = {"ceiling": True, "device": device, "dtype": opts.dtype}
    try:
        result["machine"]["ceiling"] = runner.measure(ceiling)
        _sweep(result, list(plan(opts, candidates, shape, model_dir, device)), runner, device)
        best_ceiling(result, runner.measure(ceiling))
    except KeyboardInterrupt:  # keep what was measured: the files are written, then the CLI exits 130
        interrupted = result["interrupted"] = True
    finally:
        runner.close()
    if json_path:
        report.write_json(result, json_path)
    if csv_path:
        report.write_csv(result, csv_path)
    if plot_path:
        report.plot(result, plot_path)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _sweep(result: dict[str, Any], specs: list, runner, device: str) -> None:
    """Measure every point in order, appending to ``result["points"]``, with the live table."""
    from longattn_cli.bench import report

    stopped: dict[tuple[str, str], str] = {}  # (label, mode) → the status that ended its sweep
    with report.LiveTable(result, len(specs)) as live:
        for cand, spec in specs:
            point = _point_record(spec)
            live.start(point)
            key = (cand.label, spec["mode"])
            why = (
                cand.reference.unavailable(cand.settings, spec["n"], device.split(":")[0])
                if cand.reference
                else None
            )
            if why:
                point.update(status=UNAVAILABLE, message=why)
            elif key in stopped:
                point.update(status=SKIPPED, message=f"{stopped[key]} at a shorter length")
            else:
                point.update(runner.measure(spec))
                if point["status"] in (TIMEOUT, OOM):
                    stopped[key] = point["status"]
            roofline(point, algorithm_flops(spec), result["machine"]["ceiling"].get("gflops"))
            result["points"].append(point)
            compute_ratios(result["points"])
            live.finish(point)


def _runner(opts: BenchmarkOptions, device: str):
    """Measure in a child process (default) or in this one (``--no-isolate``: faster start, no hard kill)."""
    from longattn_cli.bench.worker import InProcess, Worker

    if not opts.isolate:
        return InProcess(opts.threads)
    limit = None
    if device == "cpu":
        avail = available_memory()
        limit = (
            int(opts.memory_limit_gb * 2**30)
            if opts.memory_limit_gb
            else (int(avail * 0.9) if avail else None)
        )
    return Worker(opts.threads, limit)


def _point_record(spec: dict[str, Any]) -> dict[str, Any]:
    cand = spec["candidate"]
    return {
        "label": cand["label"],
        "kind": cand["kind"],
        "mechanism": cand["mechanism"],
        "settings": cand.get("config") if cand["kind"] == "reference" else cand["settings"],
        "scope": spec["scope"],
        "mode": spec["mode"],
        "n": spec["n"],
        "batch": spec["batch"],
        "dtype": spec["dtype"],
        "gradient_checkpointing": bool(spec.get("gradient_checkpointing")),
        "compile": bool(spec.get("compile")),
        "status": "running",
        **({"note": cand["note"]} if cand.get("note") else {}),
    }


def _options_record(opts: BenchmarkOptions, shape: dict[str, int], device: str) -> dict[str, Any]:
    out = dataclasses.asdict(opts)
    out.update(shape=shape, device=device)
    return out
