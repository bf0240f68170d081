"""What became of one benchmark point (no heavy imports: the sweep checks its options before torch loads)."""

OK, OOM, TIMEOUT, SKIPPED, UNAVAILABLE, ERROR = "ok", "OOM", "timeout", "skipped", "unavailable", "error"
