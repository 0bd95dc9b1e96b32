"""Errors a user may see. Each carries a message meant for people, not a traceback, and
the exit code the command line returns for it (the table is in the README).

| code | meaning |
| ---- | ------- |
| 0    | done |
| 2    | bad input or usage (a file, a folder, an option, a model package) |
| 3    | the database is locked by another process (busy); nothing was lost, try again |
| 4    | the desktop cannot start on this machine (no display, missing system libraries) |
| 5    | the database cannot be opened or used (damaged, read-only, server down, login refused, driver missing) |
| 6    | the disk or a folder refused a write (disk full, a folder missing or read-only) |
| 130  | interrupted (Ctrl+C); the work done so far is kept |
"""

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3
EXIT_NO_DISPLAY = 4  # desktop/qtcheck.py
EXIT_DATABASE = 5
EXIT_STORAGE = 6
EXIT_INTERRUPTED = 130


class HemascanError(Exception):
    """Base class: the CLI prints the message and exits non-zero, no traceback."""

    exit_code = EXIT_BAD_INPUT


class ImageError(HemascanError):
    """An image that cannot be used (corrupt, empty, too large, unsupported)."""


class ModelPackageError(HemascanError):
    """A model package that is missing, malformed, or whose weights do not match its card."""


class DatabaseBusyError(HemascanError):
    """The database is locked by another process for longer than the busy timeout."""

    exit_code = EXIT_BUSY


class DatabaseUnavailableError(HemascanError):
    """The database cannot be opened or used: a damaged or read-only file, a server that is
    down or refuses the login, a driver that is not installed, a schema newer than this
    version of hemascan."""

    exit_code = EXIT_DATABASE


class StorageError(HemascanError):
    """The file system refused: disk full, a folder that is missing or read-only."""

    exit_code = EXIT_STORAGE
