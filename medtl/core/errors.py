"""The exceptions the command line turns into one line on stderr and an exit code."""


class MedtlError(Exception):
    """A user-facing error: the message names the bad value, where it came from, and the fix."""

    exit_code = 2


class Interrupted(MedtlError):
    """Ctrl-C (or SIGTERM) stopped a run; the message says how to continue it. Exit code 130, as a shell expects."""

    exit_code = 130
