"""Helpers shared by the test modules (import as ``from helpers import ...``)."""

import pytest

from longattn_cmd.cli import main


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
