"""Where a base model's training step goes: the whole step against the sum of its parts.

Builds the encoder ``longattn benchmark --scope model`` measures (base size, token ids through the
embeddings, batch 1, dropout 0), records every layer's input from one forward pass, then times each part of
every layer on its own input, forward and backward (the backward takes a random output gradient): the q/k/v
projections, the attention mechanism on that layer's own q, k, v, the output projection with its residual
and norm, and the feed-forward block with its residual and norm; then the embeddings, an AdamW step over
every parameter, and the whole step as the benchmark times it (forward, backward of the mean output). Each
figure is the median of ``--repeats`` after one untimed run, all in one process. Measured, not tested::

    python scripts/profile_model.py --attention yoso-lsh,softmax-sdpa --length 4096 --json results/profile/model-4k.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

PARTS = ("embeddings", "projections", "mechanism", "attention output", "feed-forward")


def _timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd_bwd(fn, inputs: list[torch.Tensor], mode: str):
    """A step of ``fn(*inputs)`` (one output or a tuple of them): forward only (no_grad), or forward and
    backward of fixed random gradients into the inputs that need one and the parameters."""
    gen = torch.Generator().manual_seed(0)
    grads = None

    def step():
        nonlocal grads
        if mode == "forward":
            with torch.no_grad():
                fn(*inputs)
            return
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        if grads is None:
            grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        torch.autograd.backward(outs, grads)
        for x in inputs:
            x.grad = None

    return step


def profile(label: str, n: int, repeats: int, layers: int | None) -> dict:
    from longattn_cli.bench.candidates import select_candidates
    from longattn_cli.bench.point import build, make_step, time_steps
    from longattn_cli.bench.sweep import PRESETS, VOCAB_SIZE

    cand = next(c for c in select_candidates(label, {}, False, dropout=0.0) if c.label == label)
    shape = dict(PRESETS["base"], vocab_size=VOCAB_SIZE)
    shape["num_layers"] = layers or shape["num_layers"]
    out: dict = {"label": label, "n": n}
    for mode in ("forward", "train"):
        spec = {
            "candidate": cand.spec(n), "scope": "model", "mode": mode, "n": n, "batch": 1, "device": "cpu",
            "dtype": "float32", "shape": shape, "dropout": 0.0,
        }  # fmt: skip
        model, run = build(spec)
        prepare, step = make_step(model, run, mode)
        whole = statistics.median(time_steps(prepare, step, torch.device("cpu"), 1, repeats, None)[0])
        inputs: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_pre_hook(lambda _, args, inputs=inputs: inputs.append(args[0].detach()))
            for layer in model.layers
        ]
        with torch.no_grad():
            run(model)
        for h in hooks:
            h.remove()
        ids = torch.randint(3, model.config.vocab_size, (1, n))
        mask = torch.ones(1, n, dtype=torch.bool)
        parts = dict.fromkeys(PARTS, 0.0)
        embed = functools.partial(model.embeddings, mask=mask)
        parts["embeddings"] = _timed(_fwd_bwd(embed, [ids], mode), repeats)
        for layer, x in zip(model.layers, inputs, strict=True):
            x = x.clone().requires_grad_(mode == "train")
            with torch.no_grad():
                q, k, v = (
                    layer._heads(layer.query(x)),
                    layer._heads(layer.key(x)),
                    layer._heads(layer.value(x)),
                )
                a = layer.attention(q, k, v, mask)
                b_, n_, c_ = x.shape
                a = a.transpose(1, 2).reshape(b_, n_, c_)
                mid = layer.attend(x, mask)
            q, k, v, a, mid = (t.detach().clone().requires_grad_(mode == "train") for t in (q, k, v, a, mid))
            parts["projections"] += _timed(_fwd_bwd(_projections(layer), [x], mode), repeats)
            mechanism = functools.partial(layer.attention, mask=mask)
            parts["mechanism"] += _timed(_fwd_bwd(mechanism, [q, k, v], mode), repeats)
            parts["attention output"] += _timed(_fwd_bwd(_output(layer), [a, x], mode), repeats)
            parts["feed-forward"] += _timed(_fwd_bwd(layer.feed_forward, [mid], mode), repeats)
        total = sum(parts.values())
        row = {"step_s": whole, "parts_s": parts, "sum_s": total}
        if mode == "train":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            row["adamw_s"] = _timed(opt.step, repeats)
        out[mode] = row
        del model
    return out


def _projections(layer):
    """q, k and v of one layer, each with its own gradient in the backward."""
    return lambda x: (layer.query(x), layer.key(x), layer.value(x))


def _output(layer):
    """The attention output projection with its residual and norm, as ``attend`` ends."""
    return lambda a, x: layer.attention_norm(x + layer.attention_output(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attention", default="yoso-lsh,softmax-sdpa")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="Encoder layers (default: base's 12).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from longattn_cli.bench.machine import machine, provenance, provenance_line

    print(provenance_line(args.threads))
    results = [
        profile(lab.strip(), args.length, args.repeats, args.layers) for lab in args.attention.split(",")
    ]
    for mode in ("forward", "train"):
        print(f"\n{mode}, {args.length} tokens (s)")
        print(f"{'part':<18}" + "".join(f"{r['label']:>14}" for r in results))
        for part in PARTS:
            print(f"{part:<18}" + "".join(f"{r[mode]['parts_s'][part]:>14.2f}" for r in results))
        for key, name in (("sum_s", "sum of parts"), ("step_s", "whole step")):
            print(f"{name:<18}" + "".join(f"{r[mode][key]:>14.2f}" for r in results))
        if mode == "train":
            print(f"{'(AdamW step)':<18}" + "".join(f"{r[mode]['adamw_s']:>14.2f}" for r in results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {**provenance(), "machine": machine("cpu", args.threads), "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
