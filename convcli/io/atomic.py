"""Outputs put in place whole or not at all (temporary file + rename), and same-file checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

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

    The bytes go to a unique temporary file in the same folder (``.NAME.PID-XXXX.tmp``,
    PID being this process's id), which is then renamed over ``path`` (``os.replace``,
    atomic on POSIX and Windows). On any failure the temporary file is removed; if the
    process is killed (``kill -9``, power loss) before the rename, ``path`` keeps its old
    content or stays absent, and the temporary file is left for :func:`sweep_stale` (a
    later batch removes those whose process is gone). The new file gets the usual
    permissions (0o666 minus the umask), or those of the file it replaces.

    Raises
    ------
    OutputError
        The folder is missing or not writable, the disk is full, ``path`` is a folder…
        The message ends with the OS's reason; :attr:`OutputError.errno` keeps its number.
    """
    target = Path(path)
    folder = target.parent
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp")
    except OSError as err:
        raise OutputError.from_os(str(target), err) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        give_mode_of(temporary, target)
        os.replace(temporary, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise OutputError.from_os(str(target), err) from None
        raise


def give_mode_of(temporary: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Give the temporary file the mode of the file it replaces, or a new file's (0666 less the umask)."""
    try:
        mode = Path(target).stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    os.chmod(temporary, mode)


def make_folder(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` and its parents if missing; an OS error becomes an :class:`OutputError`."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError.from_os(str(folder), err) from None


def temporary_owner(entry: str, names: set[str] | frozenset[str]) -> int | None:
    """The process id in a temporary file name :func:`write_atomic` made for one of ``names``.

    ``.NAME.PID-XXXXXXXX.tmp`` gives PID; 0 for the older ``.NAME.XXXXXXXX.tmp`` form; None if
    ``entry`` is not a temporary file of one of ``names``.
    """
    if not (entry.startswith(".") and entry.endswith(".tmp")):
        return None
    name, _, tail = entry[1:-4].rpartition(".")
    if name not in names:
        return None
    pid, dash, _ = tail.partition("-")
    return int(pid) if dash and pid.isdigit() else 0


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is someone else's
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended but not been reaped (Linux: state Z or X in /proc/PID/stat).

    A ``-j`` worker killed after its parent is reparented; in a container whose first process
    does not reap, it stays a zombie, which signal 0 still finds: it writes nothing more.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False  # no /proc (macOS): trust signal 0
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]  # the field after "(comm)"
    return state in (b"Z", b"X")


def sweep_stale(folder: str | os.PathLike[str], names: set[str] | frozenset[str]) -> int:
    """Remove temporary and claim files for ``names`` in ``folder`` whose process is gone.

    What a ``kill -9`` or a power cut leaves behind. A temporary file of a live process
    (another convcli writing into the same folder right now), or a claim it holds, is never
    touched. Returns the number removed.
    """
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        pid = temporary_owner(entry, names)
        if pid and not process_alive(pid):
            path = os.path.join(folder, entry)
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):  # a zarr array being written
                    import shutil

                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
        elif entry.startswith(".") and entry.endswith(".claim") and entry[1:-6] in names:
            # A claim file whose holder was killed: nobody holds its lock, so take it and remove it.
            path = Path(folder) / entry
            descriptor = _lock(path)
            if descriptor is not None and descriptor >= 0:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += 1
                os.close(descriptor)
    return removed


def claim_path(output: str | os.PathLike[str]) -> Path:
    """The claim file of an output: ``.NAME.claim`` next to it (hidden, so never an input)."""
    output = Path(output)
    return output.parent / f".{output.name}.claim"


@contextlib.contextmanager
def claim(output: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold the claim on producing ``output`` (and the other outputs of its input) while inside.

    Yields True when this process holds the claim, False when another process (or another
    worker) holds it right now. The claim is an exclusive ``flock`` on :func:`claim_path`:
    the kernel drops it when its holder exits, however it exits (``kill -9`` included), so a
    claim is never stale. The file is removed on release; a holder checks after locking that
    the file it locked is still the one at the path (another holder may have removed it in
    between), and retries otherwise. Where a claim cannot be taken at all (no ``fcntl``, a
    read-only or missing folder, a file system without locks) it yields True: the work goes
    on unclaimed and the write itself reports the folder's problem.
    """
    path = claim_path(output)
    descriptor = _lock(path)
    if descriptor is None or descriptor < 0:
        yield descriptor is None
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(descriptor)


def _lock(path: Path) -> int | None:
    """A descriptor holding the lock on ``path``; -1 if another holds it; None if locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return -1
        except OSError:
            os.close(descriptor)
            return None
        try:
            mine, there = os.fstat(descriptor), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)  # the holder before us removed the file we locked: lock the new one


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
