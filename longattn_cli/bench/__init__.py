"""``longattn benchmark``: the sweep, one measured point, the worker process, and the report (tables, files,
plot). The quick sweep's presets are :mod:`longattn_cmd.options`, which the command's help quotes."""
