"""Outputs put in place whole or not at all (temporary file + rename), and same-file checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from ..errors import OutputError
from ._common import STDIN


@lru_cache(maxsize=1)
def _umask() -> int:
    # os.umask can only be read by setting it; done once, before any worker threads write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never partial or corrupt.

    The bytes go to a unique temporary file in the same folder (``.NAME.XXXX.tmp``), which
    is then renamed over ``path`` (``os.replace``, atomic on POSIX and Windows). On any
    failure the temporary file is removed. The new file gets the usual permissions
    (0o666 minus the umask), or those of the file it replaces.

    Raises
    ------
    OutputError
        The folder is missing or not writable, the disk is full, ``path`` is a folder…
    """
    target = Path(path)
    folder = target.parent
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{target}: cannot write: {err.strerror or err}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise OutputError(f"{target}: cannot write: {err.strerror or err}") from None
        raise


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True if ``a`` and ``b`` name the same file (hard links and symlinks included).

    ``os.path.samefile`` when both exist, else a comparison of the resolved paths.
    Standard input/output (``"-"``) is never the same file as anything.
    """
    if os.fspath(a) == STDIN or os.fspath(b) == STDIN:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
