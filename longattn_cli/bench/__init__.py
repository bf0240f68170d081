"""``longattn benchmark``: the sweep, one measured point, the worker process, and the report (tables, files,
plot)."""
