"""``longattn_cli.errors.UserError``: the one user-facing error, defined in :mod:`longattn_cmd.errors` so that the
command line can name it without importing the library."""

from longattn_cmd.errors import UserError

__all__ = ["UserError"]
