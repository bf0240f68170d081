"""The roofline: each point's arithmetic by its mechanism's own count, its rate against the matmul ceiling
measured in the same run, and the ratio columns (÷ SDPA, ÷ the transformers reference)."""

from __future__ import annotations

from typing import Any

from longattn_cli.bench.candidates import FUSED, SDPA_BASELINES, TRAIN_BASELINES
from longattn_cli.bench.references import REFERENCES
from longattn_cli.bench.status import OK


def algorithm_flops(spec: dict[str, Any]) -> float | None:
    """Floating-point operations one step of a point needs by the algorithms' own counts (None: not counted).

    The mechanism's count (``Attention.flops``, per head and sequence) times heads and batch, plus the layer's
    projections, counted alike for every candidate: q, k, v and output, 8·n·C² forward; at model scope also
    the feed-forward block, 4·n·C·I, in every layer. A backward step costs twice its forward (both gradients
    of every product), except where the mechanism counts its own.
    """
    from longattn_cli.attention import get_mechanism, make_settings

    cand, shape, n = spec["candidate"], spec["shape"], spec["n"]
    settings = dict(cand["settings"])
    if cand["kind"] == "reference":  # the reference's own config wins where it names one of our settings
        settings.update({k: v for k, v in cand.get("config", {}).items() if k in settings})
    c, heads = shape["hidden_size"], shape["num_heads"]
    own = next((r.flops for r in REFERENCES.get(cand["mechanism"], []) if r.label == cand["label"]), None)
    if cand["kind"] == "reference" and own is not None:
        counted = own(n, c // heads, spec["scope"])
    else:
        counted = get_mechanism(cand["mechanism"]).flops(
            make_settings(cand["mechanism"], settings), n, c // heads
        )
    if counted is None:
        return None
    fwd, bwd = (x * heads for x in counted)
    dense = 8.0 * n * c * c + (4.0 * n * c * shape["intermediate_size"] if spec["scope"] == "model" else 0.0)
    fwd, bwd = fwd + dense, bwd + 2 * dense
    layers = shape["num_layers"] if spec["scope"] == "model" else 1
    return spec["batch"] * layers * (fwd + bwd if spec["mode"] == "train" else fwd)


def roofline(point: dict[str, Any], flop: float | None, ceiling: float | None) -> None:
    """Fill ``gflop`` (the step's count), ``gflops`` (achieved) and ``ceiling_share`` of a measured point."""
    point["gflop"] = None if flop is None else flop / 1e9
    point["gflops"] = point["ceiling_share"] = None
    if flop is not None and point["status"] == OK and point.get("time_s"):
        point["gflops"] = flop / point["time_s"] / 1e9
        if ceiling:
            point["ceiling_share"] = point["gflops"] / ceiling


def best_ceiling(result: dict[str, Any], again: dict[str, Any]) -> None:
    """The ceiling is measured before and after the sweep; on a shared machine one reading can be low, so
    the higher one is the ceiling, and every point's share is taken against it."""
    first = result["machine"]["ceiling"]
    readings = [r.get("gflops") for r in (first, again) if r.get("gflops")]
    if not readings:
        return
    best = dict(first if first.get("gflops") == max(readings) else again, readings_gflops=readings)
    best["method"] = f"{best.get('method', '')}; the higher of the readings before and after the sweep"
    result["machine"]["ceiling"] = best
    for p in result["points"]:
        if p.get("gflops"):
            p["ceiling_share"] = p["gflops"] / best["gflops"]


def compute_ratios(points: list[dict[str, Any]]) -> None:
    """Fill ``vs_reference_*`` (ours ÷ the paired transformers implementation) and ``vs_sdpa_*`` (÷ the SDPA
    baseline) for time and memory, from points of the same run, scope, mode and length."""
    done = {(p["mode"], p["n"], p["label"]): p for p in points if p["status"] == OK}
    # softmax-sdpa is the train baseline only where it is the fused one (--dropout 0: no FUSED candidate)
    train = TRAIN_BASELINES if any(p["label"] == FUSED for p in points) else ("softmax-sdpa",)
    for p in points:
        for key in (
            "vs_reference_time",
            "vs_reference_memory",
            "vs_sdpa_time",
            "vs_sdpa_memory",
            "reference",
            "sdpa_baseline",
        ):
            p[key] = None
        if p["status"] != OK:
            continue
        if p["kind"] == "ours":
            for ref in REFERENCES.get(p["mechanism"], []):
                theirs = done.get((p["mode"], p["n"], ref.label))
                if theirs is not None:
                    p["reference"] = ref.label
                    p["vs_reference_time"], p["vs_reference_memory"] = _ratio(p, theirs)
                    break
        for label in train if p["mode"] == "train" else SDPA_BASELINES:
            base = done.get((p["mode"], p["n"], label))
            if base is not None:
                p["sdpa_baseline"] = label
                p["vs_sdpa_time"], p["vs_sdpa_memory"] = _ratio(p, base)
                break


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None]:
    t = a["time_s"] / b["time_s"] if b["time_s"] else None
    ma, mb = a.get("peak_memory_bytes"), b.get("peak_memory_bytes")
    return t, (ma / mb if ma is not None and mb else None)
