"""Helpers shared by the test modules (import as ``from helpers import ...``)."""

import pytest

from longattn_cli.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``longattn ARGV`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


# A tiny from-scratch pretraining run on short blocks (model shape, block length, batch), as overrides.
TINY_PRETRAIN = [
    "model.hidden_size=32",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.intermediate_size=48",
    "model.vocab_size=400",
    "data.max_length=64",
    "training.batch_size=2",
    "data.validation_split=0",
]


def save_perturbed(model, out, tokenizer_dir) -> None:
    """Save a transformers ``model`` to ``out`` with its LayerNorm and bias values shifted at random (so that a
    wrongly mapped key cannot hide behind ones and zeros) and the tokenizer files of ``tokenizer_dir``."""
    import shutil

    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy(f, out / f.name)
