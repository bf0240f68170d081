"""The work behind ``longattn data listops`` and ``longattn data text``, with progress and a summary."""

from __future__ import annotations

from pathlib import Path

from longattn_cli.errors import UserError


def _refuse_nonempty(out: str) -> None:
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"output {out!r} exists and is not an empty directory; choose another --out")


def listops(out, train, validation, test, min_length, max_length, max_depth, max_args, seed) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from longattn_cli.lra.listops import ListOpsSpec, write

    try:
        spec = ListOpsSpec(train, validation, test, min_length, max_length, max_depth, max_args, seed)
    except ValueError as exc:
        raise UserError(f"listops: {exc}") from None
    _refuse_nonempty(out)
    total = train + validation + test
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    ) as bar:
        task = bar.add_task("generating ListOps trees", total=total)
        write(spec, out, progress=lambda: bar.advance(task))
    Console().print(f"ListOps: {train}/{validation}/{test} samples and the tokenizer written to {out}")


def text(out, source) -> None:
    from rich.console import Console

    from longattn_cli.lra.text import write

    _refuse_nonempty(out)
    write(out, source)
    Console().print(f"LRA Text: splits and the byte-level tokenizer written to {out}")
