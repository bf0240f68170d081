"""Stopping a run cleanly: SIGINT and SIGTERM become a flag the training loop reads at the next step boundary
(every process of a distributed run stops at the same step: the flag travels in the step's all-reduce)."""

from __future__ import annotations

import signal


class Stop:
    """SIGINT/SIGTERM set a flag that the loop reads at the next step boundary; a second Ctrl-C aborts."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        # A second Ctrl-C aborts; a SIGTERM after the first signal is ignored, because launchers (torchrun)
        # answer Ctrl-C by sending SIGTERM to workers that are already saving.
        if self.signal is not None:
            if signum == signal.SIGINT and self.signal == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal = signum
