"""Benchmark points in a child process, so that a point that runs out of memory or time cannot take the sweep
with it.

The child (``python -m longattn_cli.bench.worker``) reads one JSON point per line on stdin and answers one
JSON line per point on its own copy of stdout (anything else the libraries print goes to stderr). On CPU it
caps its own data size (``RLIMIT_DATA``) at what it holds after start-up plus ``memory_limit`` bytes, so an
oversized point fails with the allocator's "can't allocate memory" (reported as ``OOM``) instead of calling
the kernel's OOM killer onto the machine. The parent kills a child that overruns a point's time budget and
starts a fresh one for the next point.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from longattn_cli.bench.status import ERROR, OOM, TIMEOUT

EOF, SILENT = "eof", "silent"  # what Worker._read returns instead of an answer

# Seconds a child may take to start (import torch) and to build a point's module, on top of its time budget.
START_GRACE_S = 120.0


def _limit_data(extra_bytes: int) -> None:
    """Cap this process's data segment at its current size plus ``extra_bytes`` (Linux; a no-op elsewhere)."""
    try:
        import resource

        with open("/proc/self/status") as f:
            data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
        limit = data_kb * 1024 + extra_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    except (ImportError, OSError, StopIteration, ValueError):
        pass


def serve(threads: int | None, memory_limit: int | None) -> None:
    """The child's loop: one point in, one result out, until stdin closes."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the answers
    import torch

    import longattn_cli  # noqa: F401  (registers the model family; importing it registers the mechanisms)
    from longattn_cli.bench.point import measure

    if threads:
        torch.set_num_threads(threads)
    if memory_limit:
        _limit_data(memory_limit)
    out.write(json.dumps({"event": "ready"}) + "\n")
    out.flush()
    for line in sys.stdin:
        result = measure(json.loads(line))
        out.write(json.dumps(result) + "\n")
        out.flush()


class InProcess:
    """Points measured in this process (``--no-isolate``): no start-up cost, but no memory cap and no hard kill."""

    def __init__(self, threads: int | None = None):
        import torch

        self.saved_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)

    def measure(self, spec: dict[str, Any]) -> dict[str, Any]:
        from longattn_cli.bench.point import measure

        return measure(spec)

    def close(self) -> None:
        """Give torch its thread count back."""
        import torch

        torch.set_num_threads(self.saved_threads)


class Worker:
    """The parent's handle on one child process, restarted after a point kills it."""

    def __init__(
        self, threads: int | None = None, memory_limit: int | None = None, grace: float = START_GRACE_S
    ):
        self.threads, self.memory_limit, self.grace = threads, memory_limit, grace
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "longattn_cli.bench.worker",
            str(self.threads or 0),
            str(self.memory_limit or 0),
        ]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()

    @staticmethod
    def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _read(self, deadline: float | None) -> dict[str, Any] | str:
        """The child's next answer, or ``EOF`` when its output ends, or ``SILENT`` past ``deadline``."""
        try:
            line = self.lines.get(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            return SILENT
        return EOF if line is None else json.loads(line)

    def measure(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run ``spec`` in the child; a hung child is killed (``timeout``), a dead one reported."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
            if not isinstance(self._read(time.monotonic() + max(self.grace, START_GRACE_S)), dict):
                return self._died("the benchmark worker did not start")
        try:
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died between points
            return self._died("the benchmark worker died")
        budget = spec.get("time_budget") or 0.0
        wait = (budget * 1.5 + self.grace) if budget else None
        result = self._read(time.monotonic() + wait if wait else None)
        if isinstance(result, dict):
            return result
        if result == SILENT:  # still running past the budget: kill it
            self.close()
            return {"status": TIMEOUT, "message": f"killed after {wait:.3g} s (budget {budget:g} s)"}
        return self._died("the benchmark worker died")

    def _died(self, what: str) -> dict[str, Any]:
        try:  # its output has ended (or it never answered): give it a moment to be reaped
            self.proc.wait(timeout=10)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            self.proc.kill()
        code = self.proc.wait()
        self.stderr.seek(0)
        tail = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        self.close()
        if hung:
            return {"status": ERROR, "message": f"{what} (no answer; killed)"}
        if code in (-9, 137):  # SIGKILL from elsewhere: on Linux almost always the kernel's OOM killer
            return {"status": OOM, "message": f"{what} (killed by signal 9, out of memory)"}
        return {"status": ERROR, "message": f"{what} (exit code {code}){': ' + tail[-1] if tail else ''}"}

    def close(self) -> None:
        """Stop the child (if any)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.stderr.close()
            self.proc = None


if __name__ == "__main__":
    serve(int(sys.argv[1]) or None, int(sys.argv[2]) or None)
