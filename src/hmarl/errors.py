"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class HmarlError(Exception):
    """Base class for problems caused by input or configuration, not by a bug."""


class DataError(HmarlError):
    """Bad input data; the message names file, column, symbol and row where known."""


class StepError(HmarlError):
    """A pipeline step could not run (missing input, failed upstream check, ...)."""
