"""The one user-facing error type: the CLI prints it as `error: ...` and exits 2."""


class VaekitError(Exception):
    """Bad input or bad usage, described in one line that names the file or flag and the problem."""
