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
