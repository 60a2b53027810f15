"""The one exception type the command line turns into a one-line message and exit code 2."""


class MedtlError(Exception):
    """A user-facing error: the message names the bad value, where it came from, and the fix."""

    exit_code = 2
