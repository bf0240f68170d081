"""bf16 autocast training on the CPU against fp32: the default pretraining (`longattn pretrain`, 4,096-token
blocks of CPython's docs) for ``--steps`` steps per mechanism, once with ``training.mixed_precision=no`` and
once with ``bf16``, same data and seed, each in its own process, alone on the machine. Records the training
time, tokens/s, peak memory (the process's resident set), the validation loss at the end and the largest gap
between the two loss curves (logged every 10 steps). Measured, not tested::

    python scripts/bf16_training.py --json results/bf16/pretrain-200.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MECHANISMS = ("nystrom", "lsg", "yoso", "softmax")


def run(mechanism: str, precision: str, steps: int, out: Path) -> dict:
    # nystrom: the default recipe's own (with its 9-wide convolution); the others by name, default settings.
    chosen = [] if mechanism == "nystrom" else [f"model.attention={mechanism}"]
    args = [
        sys.executable, "-m", "longattn_cmd", "pretrain", *chosen, f"training.mixed_precision={precision}",
        f"training.max_steps={steps}", f"training.output_dir={out}", "training.log_every=10",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    summary = json.loads((out / "summary.json").read_text())
    curve = {
        row["step"]: row["loss"]
        for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "loss" in row and "step" in row
    }
    return {
        "train_time_s": summary["train_time_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "peak_memory_mb": summary["peak_memory_mb"],
        "results": summary.get("results", {}),
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    parser.add_argument("--json", default=None, help="Also write the result here.")
    args = parser.parse_args()

    from longattn_cli.bench.machine import machine, provenance
    from longattn_cli.devices import cpu_native_bf16

    result = {
        **provenance(),
        "machine": {**machine("cpu", None), "native_bf16": cpu_native_bf16()},
        "steps": args.steps,
        "mechanisms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mechanism in args.mechanisms.split(","):
            runs = {p: run(mechanism, p, args.steps, Path(tmp) / f"{mechanism}-{p}") for p in ("no", "bf16")}
            fp32, bf16 = runs["no"], runs["bf16"]
            row = {"fp32": fp32, "bf16": bf16}
            if "curve" in fp32 and "curve" in bf16:
                steps = sorted(set(fp32["curve"]) & set(bf16["curve"]))
                row["max_loss_gap"] = max(abs(fp32["curve"][s] - bf16["curve"][s]) for s in steps)
                row["time_ratio"] = bf16["train_time_s"] / fp32["train_time_s"]
                row["memory_ratio"] = bf16["peak_memory_mb"] / fp32["peak_memory_mb"]
            result["mechanisms"][mechanism] = row
            print(
                json.dumps({mechanism: {k: v for k, v in row.items() if k not in ("fp32", "bf16")}}),
                flush=True,
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
