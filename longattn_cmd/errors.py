"""User-facing errors: one line on stderr and exit code 2, never a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (a bad value, a missing file, an offline hub id).

    The CLI prints ``error: <message>`` on one line and exits with code 2. The message names the bad value
    and what would be valid.

    ``everywhere``: every process of a distributed run raises the same error at the same point (a decision
    taken on all-reduced values, such as a non-finite loss); only the main process prints it.
    """

    def __init__(self, message: str, *, everywhere: bool = False):
        super().__init__(message)
        self.everywhere = everywhere
