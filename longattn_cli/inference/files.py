"""The files the inference commands write: the output path checked before any work, and the rows a
partly written file already holds (for ``--resume``), read without loading the file into memory."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from longattn_cli.errors import UserError


def check_output(
    out: str | Path, formats: tuple[str, ...], overwrite: bool, resume: bool | None = None
) -> Path:
    """``out`` as a path, refused in one line when its extension is not one of ``formats``, when it exists and
    neither ``overwrite`` nor ``resume`` allows that (``resume`` None: the command cannot resume), or when
    its folder does not exist."""
    out = Path(out)
    if out.suffix.lower() not in formats:
        listed = ", ".join(formats[:-1]) + " or " + formats[-1]
        raise UserError(f"--out {str(out)!r}: the file's extension says the format; use {listed}")
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; pass one")
    if out.exists() and not (overwrite or resume):
        hint = (
            "--overwrite to replace it"
            if resume is None
            else "--resume to continue it or --overwrite to replace it"
        )
        raise UserError(f"--out {str(out)!r} exists; pass {hint}")
    if not out.parent.exists():
        raise UserError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    return out


def drop_torn_line(path: Path, chunk: int = 1 << 16) -> None:
    """Cut a last line that an abrupt end left without its newline (it is written again); reads only the
    file's tail."""
    with path.open("r+b") as f:
        end = f.seek(0, os.SEEK_END)
        at = end
        while at > 0:
            start = max(at - chunk, 0)
            f.seek(start)
            block = f.read(at - start)
            if start + len(block) == end and block.endswith(b"\n"):
                return  # whole
            newline = block.rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return
            at = start
        f.truncate(0)


def rows_done(out: Path) -> int:
    """Whole rows already in ``out`` (0 when it does not exist): JSONL lines that end in a newline, CSV
    records after the header, Parquet rows."""
    if not out.exists():
        return 0
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(out).metadata.num_rows
    if suffix == ".jsonl":
        with out.open("rb") as f:
            return sum(1 for line in f if line.endswith(b"\n") and line.strip())
    with out.open(newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def csv_header(out: Path) -> list[str] | None:
    """The column names of a CSV file's first record (None for an empty file)."""
    with out.open(newline="") as f:
        return next(csv.reader(f), None)
