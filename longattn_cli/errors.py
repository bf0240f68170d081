"""User-facing errors: one line on stderr and exit code 2, never a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (a bad value, a missing file, an offline hub id).

    The CLI prints ``error: <message>`` on one line and exits with code 2. The message names the bad value
    and what would be valid.
    """
