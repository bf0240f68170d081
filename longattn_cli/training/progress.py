"""What a training run shows and records: a rich progress bar, ``metrics.jsonl``, TensorBoard, a summary table.

Only the main process reports; the others stay silent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    """Progress bar (loss, learning rate, tokens/s, ETA), metric lines and the closing table.

    Args:
        active: report at all (the main process).
        output_dir: where ``metrics.jsonl`` (and ``tensorboard/``) go.
        total: the run's last step.
        start: the step the run starts (or resumes) at.
        log_every: steps between metric lines.
    """

    def __init__(self, active: bool, output_dir: Path, total: int, start: int, log_every: int):
        self.active, self.total, self.start, self.log_every = active, total, start, log_every
        self.console = Console(stderr=True)
        self.path = output_dir / "metrics.jsonl"
        self.began = time.perf_counter()
        self.tokens = 0
        self.last: dict[str, Any] = {}
        self.progress = None
        self.tensorboard = None

    def __enter__(self):
        if not self.active:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")
        try:  # TensorBoard only when installed
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))
        except ImportError:
            pass
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} · lr {task.fields[lr]} · {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=self.total, completed=self.start, loss="-", lr="-", tps="-"
        )
        return self

    def __exit__(self, *exc):
        if self.active:
            self.progress.stop()
            self.file.close()
            if self.tensorboard:
                self.tensorboard.close()

    def step(
        self,
        step: int,
        loss: float,
        lr: float,
        tokens: int,
        grad_norm: float | None,
        epoch: float,
        padding: float | None = None,
    ) -> None:
        """Record one optimizer step (``tokens``: all processes' real tokens in it; ``padding``: the share of
        its token slots that were padding)."""
        self.tokens += tokens
        elapsed = time.perf_counter() - self.began
        tps = self.tokens / max(elapsed, 1e-9)
        self.last = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": tps, "epoch": epoch}
        if padding is not None:
            self.last["padding"] = round(padding, 4)
        if not self.active:
            return
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tps=f"{tps:,.0f}")
        if step % self.log_every == 0 or step == self.total:
            line = dict(self.last, grad_norm=grad_norm, elapsed_s=round(elapsed, 3))
            self._write(line)

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self._write({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.progress.console.print(f"step {step}: {shown}")

    def note(self, message: str) -> None:
        if self.active:
            (self.progress.console if self.progress else self.console).print(message)

    def _write(self, line: dict[str, Any]) -> None:
        self.file.write(json.dumps({"time": round(time.time(), 3), **line}) + "\n")
        self.file.flush()
        if self.tensorboard:
            for k, v in line.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tensorboard.add_scalar(k, v, line["step"])

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self.began, 1e-9)

    def summary(self, rows: dict[str, Any]) -> None:
        """The closing table, on stdout."""
        if not self.active:
            return
        table = Table(title="run summary", title_justify="left", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for k, v in rows.items():
            table.add_row(k, f"{v:,.4g}" if isinstance(v, float) else str(v))
        Console().print(table)
