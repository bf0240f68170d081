"""Measuring one benchmark point: build the module, time it, take its peak memory.

A *point* is one (candidate, scope, mode, length) cell of a ``longattn benchmark`` sweep, described by a plain
JSON-able dict so that it can cross a process boundary (see :mod:`longattn_cli.bench.worker`). This module
knows how to build what is measured and how to measure it; which points to run, and what to do with the
results, is :mod:`longattn_cli.bench.sweep`'s business.

What is measured:
    * ``layer`` scope: the attention sublayer as transformers' ``*Attention`` modules define it: q/k/v
      projections, the mechanism, output projection, residual and LayerNorm (no feed-forward block). In
      train mode its input needs a gradient, as inside a model.
    * ``model`` scope: the whole bare encoder (embeddings and every layer; no task head).
    * ``forward`` mode: eval mode under ``torch.no_grad()``. ``train`` mode: train mode (dropout ``dropout``,
      0.1 by default as in BERT and RoBERTa pretraining, on hidden states and attention probabilities),
      forward then ``backward()`` of the mean output; gradients are cleared before each step, untimed, and no
      optimizer step is taken.

Time is wall-clock time per step after ``warmup`` untimed steps, with ``torch.cuda.synchronize()`` around each
step on GPU. Peak memory is that of one extra, untimed step, above what was allocated before it:
``torch.cuda.max_memory_allocated`` after a reset on CUDA; on CPU the torch profiler's record of every
allocation and free made by torch's CPU allocator during the step, summed in time order (so temporaries that
live only inside one operator, such as an attention score matrix, are counted).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from longattn_cli.bench.status import ERROR, OK, OOM, SKIPPED, TIMEOUT, UNAVAILABLE  # noqa: F401
from longattn_cli.devices import is_out_of_memory
from longattn_cli.models.families import family_fields
from longattn_cli.models.modeling import LongAttnConfig, LongAttnLayer, LongAttnModel


class AttentionBlock(nn.Module):
    """The attention half of a :class:`LongAttnLayer`: what transformers calls ``*Attention`` (self + output)."""

    def __init__(self, layer: LongAttnLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layer.attend(x, mask)


def _our_config(spec: dict[str, Any], layers: int) -> LongAttnConfig:
    shape, cand = spec["shape"], spec["candidate"]
    return LongAttnConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        num_hidden_layers=layers,
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=spec["n"] + 2,
        position_offset=2,
        attention=cand["mechanism"],
        attention_settings=cand["settings"],
        **_dropouts(spec),
    )


def _dropouts(spec: dict[str, Any]) -> dict[str, float]:
    p = spec.get("dropout", 0.1)
    attention = spec["candidate"].get("attention_dropout")
    return {"hidden_dropout_prob": p, "attention_probs_dropout_prob": p if attention is None else attention}


def _build_ours(spec: dict[str, Any]) -> tuple[nn.Module, Callable]:
    """Our attention block or encoder, and a function running it on fixed inputs."""
    cand, n, b, dev = spec["candidate"], spec["n"], spec["batch"], torch.device(spec["device"])
    if spec["scope"] == "layer":
        module = AttentionBlock(LongAttnLayer(_our_config(spec, 1)))
        x = _layer_input(spec)
        mask = torch.ones(b, n, dtype=torch.bool, device=dev)  # a real model always passes a mask
        return module, lambda m: m(x, mask)
    if spec.get("model_dir"):
        from longattn_cli.models.checkpoints import load_model

        module = load_model(
            spec["model_dir"],
            head="base",
            attention=cand["mechanism"],
            attention_settings=cand["settings"],
            **_dropouts(spec),
        )
    else:
        module = LongAttnModel(_our_config(spec, spec["shape"]["num_layers"]))
    ids, mask = _token_inputs(spec, module.config.vocab_size)
    return module, lambda m: m(input_ids=ids, attention_mask=mask).last_hidden_state


def _token_inputs(spec: dict[str, Any], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, dev = spec["batch"], spec["n"], torch.device(spec["device"])
    ids = torch.randint(3, vocab_size, (b, n), device=dev)  # ids 0-2 are special tokens in both vocabularies
    return ids, torch.ones(b, n, dtype=torch.long, device=dev)


def _build_reference(spec: dict[str, Any]) -> tuple[nn.Module, Callable]:
    """transformers' ``{family}Model`` (model scope) or its first layer's ``attention`` module (layer scope)."""
    import transformers

    cand, shape, n = spec["candidate"], spec["shape"], spec["n"]
    family = cand["family"]
    kwargs = dict(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        num_hidden_layers=1 if spec["scope"] == "layer" else shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        intermediate_size=shape["intermediate_size"],
        max_position_embeddings=n + 2,
        **_dropouts(spec),
    )
    kwargs.update(cand["config"])
    config_cls = getattr(transformers, f"{family}Config")
    config = config_cls(**family_fields(config_cls.model_type, kwargs))  # ModernBERT names its dropouts
    model = getattr(transformers, f"{family}Model")(config).to(dtype=_dtype(spec))
    ids, mask = _token_inputs(spec, config.vocab_size)
    extra = {}
    if family == "Longformer":  # the first token global, as for a classification or QA head
        extra["global_attention_mask"] = torch.zeros_like(mask)
        extra["global_attention_mask"][:, 0] = 1
    if spec["scope"] == "model":
        return model, lambda m: m(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
    # The layer gets exactly the arguments the model would give it: capture them from the model's own call,
    # stopped as it reaches the layer (so the capture costs the embeddings, not a forward pass).
    module = model.get_submodule(cand.get("layer") or "encoder.layer.0.attention")
    captured: dict[str, Any] = {}

    def grab(_, args, kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise _Captured

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **extra)
    except _Captured:
        pass
    finally:
        handle.remove()
    rest = captured["args"][1:]
    # At the length the model hands its layers: Longformer and BigBird pad to their window or block first.
    x = _layer_input({**spec, "n": captured["args"][0].shape[1]})

    def run(m):
        out = m(x, *rest, **captured["kwargs"])
        return out[0] if isinstance(out, tuple) else out

    return module, run


def _layer_input(spec: dict[str, Any]) -> torch.Tensor:
    """Hidden states into a layer; in train mode they need a gradient, as in a model (where the layer below
    takes it), so the backward computes every projection's input gradient too."""
    dev, shape = torch.device(spec["device"]), spec["shape"]
    x = torch.randn(spec["batch"], spec["n"], shape["hidden_size"], device=dev, dtype=_dtype(spec))
    return x.requires_grad_(spec["mode"] == "train")


class _Captured(Exception):
    """Raised by the capturing hook to stop the reference model once the layer's inputs are known."""


def _dtype(spec: dict[str, Any]) -> torch.dtype:
    from longattn_cli.devices import pick_dtype

    return pick_dtype(spec["dtype"])


def build(spec: dict[str, Any]) -> tuple[nn.Module, Callable]:
    """The module a point measures, on its device and dtype, and ``run(module) -> output``."""
    torch.manual_seed(spec.get("seed", 0))
    device = torch.device(spec["device"])
    builder = _build_reference if spec["candidate"]["kind"] == "reference" else _build_ours
    with torch.device(device):
        module, run = builder(spec)
    module = module.to(device=device, dtype=_dtype(spec))
    module.train(spec["mode"] == "train")
    if spec.get("gradient_checkpointing") and spec["scope"] == "model":
        # As training.gradient_checkpointing: each layer's activations recomputed in the backward (the
        # step's FLOP count stays the algorithm's, without the recomputed forward).
        module.gradient_checkpointing_enable()
    if spec.get("compile"):
        from longattn_cli.models.compiled import compile_layers

        if not (spec["scope"] == "model" and compile_layers(module)):
            module.compile()  # one attention block, or a reference model as a whole
    return module, run


def make_step(module: nn.Module, run: Callable, mode: str) -> tuple[Callable, Callable]:
    """(prepare, step): ``prepare`` clears gradients (untimed), ``step`` is one measured step."""
    params = [p for p in module.parameters() if p.requires_grad]

    def prepare():
        for p in params:
            p.grad = None

    if mode == "train":

        def step():
            run(module).float().mean().backward()

    else:

        def step():
            with torch.no_grad():
                run(module)

    return prepare, step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MAX_REPEATS = 200  # cap on the extra steps that ``min_time`` asks for


def time_steps(
    prepare: Callable,
    step: Callable,
    device: torch.device,
    warmup: int,
    repeats: int,
    budget: float | None,
    min_time: float = 0.0,
) -> tuple[list[float], float | None]:
    """Per-step seconds of at least ``repeats`` steps after ``warmup`` untimed ones.

    Short steps are repeated further (up to :data:`MAX_REPEATS`) until the timed steps add up to ``min_time``
    seconds, so that the median of a fast point is not one scheduler hiccup away from a wrong figure.

    Returns:
        (times, over): ``over`` is the projected total seconds when finishing the required steps (plus the
        memory step) would exceed ``budget``, in which case measuring stops early; else None.
    """
    gc.collect()
    gc.disable()  # as timeit does: a collection inside a timed step is noise, not the step's cost
    try:
        return _timed_loop(prepare, step, device, warmup, repeats, budget, min_time)
    finally:
        gc.enable()


def _timed_step(prepare: Callable, step: Callable, device: torch.device) -> float:
    """Seconds of one step, after its untimed ``prepare``, synchronized on both sides."""
    prepare()
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def _timed_loop(prepare, step, device, warmup, repeats, budget, min_time) -> tuple[list[float], float | None]:
    times: list[float] = []
    spent = 0.0
    i = 0
    while True:
        dt = _timed_step(prepare, step, device)
        spent += dt
        if i >= warmup:
            times.append(dt)
        i += 1
        required = max(warmup + repeats - i, 0)
        projected = spent + dt * (required + 1)  # the required steps left, and the memory step
        if budget and projected > budget:
            return times, projected
        if required:
            continue
        extra = (
            sum(times) < min_time and len(times) < MAX_REPEATS and not (budget and projected + dt > budget)
        )
        if not extra:
            return times, None


def peak_memory(prepare: Callable, step: Callable, device: torch.device) -> tuple[int | None, str]:
    """Bytes allocated by one step above what was allocated before it, and the method used."""
    prepare()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated"
    return _cpu_peak(step), "torch.profiler CPU allocator events"


def _cpu_peak(step: Callable) -> int | None:
    """Peak of the running sum of the CPU allocator's allocations and frees during ``step`` (None when the
    profiler cannot record them, e.g. while another profiler is active)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except (RuntimeError, AttributeError):
        return None
    events = [e for e in events if str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:  # nbytes is positive for an allocation, negative for a free
        live += e.nbytes()
        peak = max(peak, live)
    return peak


class _quiet_stderr:
    """Silence the profiler's C++ start/stop lines written straight to file descriptor 2."""

    def __enter__(self):
        import os
        import sys

        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        import os

        os.dup2(self.saved, 2)
        os.close(self.saved)


def summarize(times: list[float], tokens: int) -> dict[str, Any]:
    """Median, quartiles and extremes of the step times, and tokens per second at the median."""
    ordered = sorted(times)
    q1, q3 = (
        (statistics.quantiles(ordered, n=4, method="inclusive")[i] for i in (0, 2))
        if len(ordered) > 1
        else (ordered[0],) * 2
    )
    median = statistics.median(ordered)
    return {
        "time_s": median,
        "time_q1_s": q1,
        "time_q3_s": q3,
        "time_min_s": ordered[0],
        "time_max_s": ordered[-1],
        "times_s": times,
        "tokens_per_s": tokens / median if median > 0 else math.inf,
    }


def ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """This machine's dense matmul rate on the run's device, dtype and threads: the roofline's ceiling.

    A square product (2,048 on CPU, 8,192 on GPU) into a preallocated output, 2 untimed and 5 timed; the
    ceiling is the best of the 5 (what the hardware can do), the median shows the noise.
    """
    device, dtype = torch.device(spec["device"]), _dtype(spec)
    size = 8192 if device.type == "cuda" else 2048
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, generator=gen).to(dtype) for _ in range(2))
    out = torch.empty_like(a)
    rates = []
    for i in range(7):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        if i >= 2:
            rates.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return {
        "gflops": max(rates),
        "gflops_median": statistics.median(rates),
        "method": f"torch.mm {size}×{size} {str(dtype).removeprefix('torch.')}, best of 5",
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one point; never raises for out-of-memory, a blown time budget or a failing module.

    A spec ``{"ceiling": True, ...}`` measures the machine's ceiling instead (:func:`ceiling`).

    Returns:
        ``{"status": ok|OOM|timeout|error, ...}`` with the statistics of :func:`summarize`, ``peak_memory_bytes``
        and ``memory_method`` when ``ok``; ``message`` otherwise.
    """
    if spec.get("ceiling"):
        return ceiling(spec)
    device = torch.device(spec["device"])
    try:
        module, run = build(spec)
        prepare, step = make_step(module, run, spec["mode"])
        compiled = _first_compiled_step(prepare, step, device) if spec.get("compile") else {}
        times, over = time_steps(
            prepare,
            step,
            device,
            spec["warmup"],
            spec["repeats"],
            spec.get("time_budget"),
            spec.get("min_time", 0.0),
        )
        if over is not None:
            return {
                "status": TIMEOUT,
                "message": f"~{over:.1f} s projected, budget {spec['time_budget']:g} s",
            }
        peak, method = peak_memory(prepare, step, device)
    except Exception as exc:  # noqa: BLE001 - a point reports its failure, the sweep goes on
        kind = OOM if is_out_of_memory(exc) else ERROR
        return {"status": kind, "message": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = summarize(times, spec["batch"] * spec["n"])
    out.update(status=OK, peak_memory_bytes=peak, memory_method=method)
    if compiled:
        compiled["compile_s"] = max(compiled.pop("first_step_s") - out["time_s"], 0.0)
        out.update(compiled)
    return out


def _first_compiled_step(prepare: Callable, step: Callable, device: torch.device) -> dict[str, Any]:
    """The first step of a compiled module (compilation included) and the graph breaks it met."""
    from longattn_cli.models.compiled import graph_breaks, reset_graph_breaks

    reset_graph_breaks()
    first = _timed_step(prepare, step, device)
    breaks = graph_breaks()
    return {"first_step_s": first, "graph_breaks": sum(breaks.values()), "graph_break_reasons": dict(breaks)}
