"""Training throughput of ``longattn pretrain`` per mechanism, next to a plain transformers ``Trainer`` run.

Tokens/s of a base-size model at 4,096 tokens for each mechanism, measured on the same machine in the same
session as transformers' ``Trainer`` training the same softmax model (a ``RobertaForMaskedLM`` with
the same shape, tokenizer, packed blocks and batch size). Each side runs ``--steps`` optimizer steps; the first
``--warmup`` steps are left out of the rate. Measured, not tested::

    python scripts/train_throughput.py                       # base size, 4,096 tokens, every registered mechanism
    python scripts/train_throughput.py --size small --steps 6   # the default recipe's shape (quick)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512},
}
# Settings of the efficient mechanisms as in their published 4,096-token models.
SETTINGS = {
    "softmax": {},
    # The published training configuration: LSH forward and the weighted-LSH backward (lsh_backward).
    "yoso": {"use_expectation": False, "hash_code_len": 8, "num_hash": 32, "lsh_backward": True},
    "nystrom": {"num_landmarks": 64, "conv_kernel_size": 65},
    "lsg": {"block_size": 128, "sparse_block_size": 128, "sparsity_factor": 2, "num_global_tokens": 1},
}


def ours(mechanism: str, args, work: Path) -> float:
    """tokens/s of ``longattn pretrain`` (from metrics.jsonl, after the warm-up steps)."""
    out = work / f"ours-{mechanism}"
    over = [f"model.{k}={v}" for k, v in SIZES[args.size].items()]
    over += [
        f"model.attention={mechanism}",
        f"data.max_length={args.max_length}",
        f"training.max_steps={args.steps}",
        f"training.batch_size={args.batch_size}",
        "training.save_every=null",
        f"training.output_dir={out}",
        f"data.cache_dir={work / 'cache'}",
    ]
    over += [f"model.attention_settings.{k}={v}" for k, v in SETTINGS.get(mechanism, {}).items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "longattn_cmd", "pretrain", *over], check=True, env=env, cwd=ROOT)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    first, last = lines[args.warmup - 1], lines[-1]
    tokens = (last["step"] - first["step"]) * args.batch_size * args.max_length
    return tokens / (last["elapsed_s"] - first["elapsed_s"])


def trainer(args, work: Path) -> float:
    """tokens/s of transformers' Trainer on RobertaForMaskedLM of the same shape and data."""
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        RobertaConfig,
        RobertaForMaskedLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok_dir = next((work / "cache" / "tokenizers").iterdir())
    blocks = next((work / "cache" / "processed").iterdir())
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    data = datasets.load_from_disk(str(blocks))
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=args.max_length + 2,
        attention_probs_dropout_prob=0.0,
        **SIZES[args.size],
    )
    torch.manual_seed(0)
    model = RobertaForMaskedLM(config)

    class Clock(TrainerCallback):
        times: list[float] = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    clock = Clock()
    targs = TrainingArguments(
        output_dir=str(work / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3,
        warmup_steps=4,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(
        model=model,
        args=targs,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer),
        callbacks=[clock],
    ).train()
    t = clock.times
    return (len(t) - args.warmup) * args.batch_size * args.max_length / (t[-1] - t[args.warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="base")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mechanisms", nargs="*", default=None, help="default: every registered mechanism")
    args = parser.parse_args()
    from longattn_cli.bench.machine import provenance_line

    print(provenance_line(getattr(args, "threads", None)))
    sys.path.insert(0, str(ROOT))
    from longattn_cli.attention import available

    mechanisms = args.mechanisms or available()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rates = {f"longattn {m}": ours(m, args, work) for m in mechanisms}
        rates["transformers Trainer (RoBERTa, softmax)"] = trainer(args, work)
    print(
        f"\ntokens/s, {args.size} size, {args.max_length} tokens, batch {args.batch_size}, "
        f"steps {args.warmup + 1}-{args.steps} (torch threads: {__import__('torch').get_num_threads()})"
    )
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:10.1f}")


if __name__ == "__main__":
    main()
