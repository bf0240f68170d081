"""What the numbers were measured on: CPU, threads, memory, versions; and the memory a point may take."""

from __future__ import annotations

from typing import Any


def machine(device: str, threads: int | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    import os
    import platform

    import torch
    import transformers

    cpu = _cpu_model()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "memory_gb": _total_memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "gpu": None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def provenance() -> dict[str, Any]:
    """When, from which code and by which command a result file was made: ``when`` (local time, ISO 8601),
    ``commit`` (:func:`source_commit`) and ``command`` (the process's arguments, shell-quoted)."""
    import shlex
    import sys
    import time
    from pathlib import Path

    first = sys.argv[0]
    if first.endswith("__main__.py"):
        head = ["python", "-m", "longattn_cmd"]
    elif first.endswith(".py"):  # a script: the command that reruns it
        head = ["python", first]
    else:
        head = [Path(first).name]  # the console entry point, longattn
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": source_commit(),
        "command": shlex.join(head + sys.argv[1:]),
    }


def provenance_line(threads: int | None = None) -> str:
    """:func:`provenance` and the CPU in one line, to head a script's printed result."""
    import os

    import torch

    cpu = _cpu_model()
    p = provenance()
    return (
        f"# {p['when']} · commit {p['commit']} · {cpu}, {os.cpu_count()} cores, {threads or torch.get_num_threads()} "
        f"threads · torch {torch.__version__} · {p['command']}"
    )


def source_commit() -> str | None:
    """The checkout's short commit, with ``+dirty`` where the tree has uncommitted changes (None outside a
    git checkout): which code a result file's numbers came from."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=root)
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _total_memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return None


def available_memory() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        return None
