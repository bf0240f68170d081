"""Real tokens per second and padding of fine-tuning with and without ``training.group_by_length``.

On ListOps trees of long-tailed lengths (built with ``longattn data listops``), the CPU-scale LRA softmax
recipe trains for ``--steps`` steps twice, grouped and not; each run reports the real (unpadded) tokens per
second after the first step and the mean share of each step's token slots that were padding. Measured, not
tested::

    python scripts/length_grouping.py                 # 60 steps each, batch 8
    python scripts/length_grouping.py --steps 200 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--attention", default="softmax")
    args = parser.parse_args()
    from longattn_cli.bench.machine import provenance_line

    print(provenance_line(getattr(args, "threads", None)))
    cli = [sys.executable, "-m", "longattn_cmd"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "listops"
        subprocess.run(
            [*cli, "data", "listops", "--out", str(data), "--train", "3000", "--validation", "50", "--test", "50",
             "--min-length", "20", "--max-length", "2000"],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        lengths = sorted(len(json.loads(x)["text"].split()) for x in (data / "train.jsonl").open())
        q = [lengths[int(f * (len(lengths) - 1))] for f in (0.1, 0.5, 0.9, 0.99)]
        rows = {}
        for group in ("false", "true"):
            out = Path(tmp) / f"run-{group}"
            subprocess.run(
                [*cli, "finetune", "--recipe", "recipes/lra/cpu/listops-softmax.yaml",
                 f"model.tokenizer={data / 'tokenizer'}", f"model.attention={args.attention}",
                 f"data.source={data / 'train.jsonl'}", f"data.validation={data / 'validation.jsonl'}",
                 f"data.test={data / 'test.jsonl'}", "data.max_length=2048", f"data.cache_dir={Path(tmp) / 'cache'}",
                 f"training.output_dir={out}", f"training.max_steps={args.steps}", "training.eval_every=null",
                 f"training.batch_size={args.batch_size}", f"training.group_by_length={group}", "training.log_every=1"],
                check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            first, last = lines[0], lines[-1]
            done = [x["tokens_per_s"] * x["elapsed_s"] for x in (first, last)]  # real tokens so far
            rate = (done[1] - done[0]) / (last["elapsed_s"] - first["elapsed_s"])
            rows[group] = (rate, sum(x["padding"] for x in lines) / len(lines))
    print(f"\nListOps train lengths (words): p10 {q[0]}, median {q[1]}, p90 {q[2]}, p99 {q[3]}")
    print(f"{args.attention}, batch {args.batch_size}, {args.steps} steps (rate after step 1)")
    for group, (rate, pad) in rows.items():
        print(f"  group_by_length={group:5s}  real tokens/s {rate:8.0f}   padding per step {pad:6.1%}")


if __name__ == "__main__":
    main()
