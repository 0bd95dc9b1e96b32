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
| 7    | ``hemascan audit verify``: the audit record does not verify (an event was changed or removed) |
| 8    | refused: this login may not do that (its role), or the case is released (a change needs a reason) |
| 130  | interrupted (Ctrl+C); the work done so far is kept |
"""

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BUSY = 3
EXIT_NO_DISPLAY = 4  # desktop/qtcheck.py
EXIT_DATABASE = 5
EXIT_STORAGE = 6
EXIT_AUDIT_BROKEN = 7  # core/app/commands.py: audit verify
EXIT_REFUSED = 8  # a login's role, or a released case (core/errors.py table)
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


class NotPermittedError(HemascanError):
    """This login may not do that: its role lacks the right (said by hemascan or refused by
    the database's privileges and checks)."""

    exit_code = EXIT_REFUSED


class CaseReleasedError(HemascanError):
    """A plain label on an image or cell of a released case: a change is an amendment, with a reason."""

    exit_code = EXIT_REFUSED


# What an OS error means for a person, by errno (instead of "[Errno 5] Input/output error").
_OS_REASONS = {
    "EIO": "the disk or network share could not be read (input/output error): check the drive or the connection",
    "EACCES": "permission denied: ask for read access to it",
    "EPERM": "the operating system does not allow reading it",
    "ELOOP": "it is a link that points back to itself",
    "ENAMETOOLONG": "its path is longer than the file system allows",
    "ENOENT": "it is no longer there",
    "ESTALE": "the network share holding it was disconnected: open the folder again",
    "ETIMEDOUT": "the network share did not answer in time",
    "ENOTCONN": "the network share is not connected",
    "EMFILE": "too many files are open at once: close other programs and try again",
}


def os_reason(exc: OSError) -> str:
    """One sentence for an OSError, without the errno jargon."""
    import errno

    name = errno.errorcode.get(exc.errno or -1, "")
    return _OS_REASONS.get(name) or (exc.strerror or str(exc)).rstrip(".").lower()
