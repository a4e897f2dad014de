"""Regular files only: what a kernel, pipeline or input path may name.

A FIFO, a character device or a socket blocks (or never ends) when read, so a path that
names one is refused before it is opened; standard input is ``-`` and nothing else.
A path that is too long for the file system, or holds a NUL byte, is refused the same
way, as one line instead of an ``OSError`` from deep inside a reader.
"""

from __future__ import annotations

import errno
import os
import stat

from ._text import shorten


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` must not be opened for reading (the reason, without the path), or None.

    A reason for an existing file that is not a regular file (``is a FIFO (named pipe),
    not a regular file …``), a name too long for the file system, or a NUL byte in it.
    None for a regular file and for a path that cannot be looked at for another reason
    (missing, no permission): opening it gives the usual error. Symbolic links are
    followed; the file is never opened, so a FIFO cannot block.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            return "the name is too long for the file system"
        return None
    except ValueError:  # an embedded NUL byte
        return "not a valid path (it holds a NUL byte)"
    if stat.S_ISREG(mode):
        return None
    return f"is {_kind(mode)}, not a regular file (only '-' reads standard input)"


def check_regular_file(path: str | os.PathLike, error: type[Exception], *, what: str = "file") -> None:
    """Raise ``error("PATH: is a FIFO (named pipe), not a regular file …")`` for what :func:`regular_file_problem` refuses.

    ``what`` names the kind of file in the directory case (``"kernel file"``,
    ``"pipeline file"``, ``"image or array file"``).
    """
    problem = regular_file_problem(path)
    if problem is None:
        return
    if problem.startswith("is a directory"):
        problem = f"is a directory, not {'an' if what[:1] in 'aeiou' else 'a'} {what}"
    raise error(f"{path_text(path)}: {problem}")


def path_text(path: str | os.PathLike) -> str:
    """A path as messages show it: whole, unless it is longer than any real path."""
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return name if len(name) <= 4096 else shorten(name, 60)  # PATH_MAX: a real path is shown whole


__all__ = ["regular_file_problem", "check_regular_file", "path_text"]
