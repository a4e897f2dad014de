"""Exceptions raised by the library and the exit statuses the CLI maps them to.

The library never imports Click: it raises :class:`ConvcliError` subclasses whose
message is already the one line a user should read, and ``cli.py`` turns them into
exit statuses.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit statuses of the ``convcli`` command."""

    OK = 0
    INPUT_FAILED = 1  # an input could not be processed; the others still were
    USAGE = 2  # bad options, bad kernel files, a layer that cannot work at all
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


#: Control characters as a message shows them: a file named ``a\nb.png`` must not break the
#: one-line contract (nor move a terminal's cursor with ``\r`` or an escape sequence).
_CONTROL = {**{code: f"\\x{code:02x}" for code in (*range(32), *range(127, 160))},
            0x2028: "\\u2028", 0x2029: "\\u2029", 9: "\\t", 10: "\\n", 13: "\\r"}


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``…): always one line."""
    return text.translate(_CONTROL)


class ConvcliError(Exception):
    """Base class of every error a user can cause; ``str(err)`` is one line.

    Control characters in the message (from a file name, a YAML key…) are shown escaped.
    """

    exit_status: ExitStatus = ExitStatus.USAGE

    def __str__(self) -> str:
        return one_line(super().__str__())


class OptionError(ConvcliError, ValueError):
    """An option or argument value is invalid (stride 0, unknown padding…)."""


class KernelError(ConvcliError, ValueError):
    """A kernel file or inline kernel is malformed, unsafe or inconsistent."""


class GeometryError(ConvcliError, ValueError):
    """A layer cannot produce any output for the given input shape."""


class InputError(ConvcliError):
    """An input image or array could not be read or processed."""

    exit_status = ExitStatus.INPUT_FAILED


def is_disk_full(number: int | None) -> bool:
    """Whether an OS error number says the file system (or the user's quota) is full."""
    import errno

    return number in (errno.ENOSPC, errno.EDQUOT)


class OutputError(ConvcliError):
    """An output could not be written (it would overwrite an input, disk full…)."""

    exit_status = ExitStatus.INPUT_FAILED
    #: The ``errno`` of the operating-system error behind it (ENOSPC, EROFS, EACCES…), or None.
    errno: int | None = None

    @classmethod
    def from_os(cls, what: str, err: OSError) -> "OutputError":
        """``WHAT: cannot write: <the OS's reason>``, keeping the OS error's number."""
        error = cls(f"{what}: cannot write: {err.strerror or err}")
        error.errno = err.errno
        return error

    @property
    def disk_full(self) -> bool:
        """The file system is full (or the user's quota is): nothing more can be written there."""
        return is_disk_full(self.errno)


class InputWarning(UserWarning):
    """An input was read, but not as it is written (a truncated JPEG the decoder completed…).

    The CLI prints it as one ``convcli: FILE: warning: …`` line; the library issues it with
    :func:`warnings.warn`.
    """
