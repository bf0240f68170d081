"""``make demo``: an offline round trip (tiny RoBERTa checkpoint → longattn → fill-mask)."""

from __future__ import annotations

import sys
from pathlib import Path

from longattn_cli.testing import tiny_reference, train_bpe_tokenizer


def main(out: str = "runs/demo") -> None:
    root = Path(out)
    train_bpe_tokenizer(root / "tokenizer")
    tiny_reference("roberta", root / "roberta-tiny", tokenizer_dir=root / "tokenizer")
    print(f"tiny random RoBERTa checkpoint written to {root / 'roberta-tiny'}")
    from longattn_cmd.cli import main as cli

    cli(
        [
            "fill-mask",
            "The <mask> statement ends a loop.",
            "--model",
            str(root / "roberta-tiny"),
            "--top-k",
            "3",
        ]
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
