"""Errors a user may see. Each carries a message meant for people, not a traceback."""


class HemascanError(Exception):
    """Base class: the CLI prints the message and exits non-zero, no traceback."""


class ImageError(HemascanError):
    """An image that cannot be used (corrupt, empty, too large, unsupported)."""


class ModelPackageError(HemascanError):
    """A model package that is missing, malformed, or whose weights do not match its card."""


class DatabaseBusyError(HemascanError):
    """The database is locked by another process for longer than the busy timeout."""
