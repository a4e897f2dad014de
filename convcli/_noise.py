"""Standard error carries convcli's own lines only: library warnings are silenced or translated.

tifffile logs through :mod:`logging` (dozens of lines for one TIFF with odd tags), Pillow
and numpy through :mod:`warnings` (corrupt EXIF, ``overflow encountered in matmul``…). None
of that text reaches standard error: :func:`silence_libraries` (run by the CLI and by every
batch worker) drops it for the whole process, and :func:`translated` collects, for one
input, the warnings that matter as one short line each, which the batch prints as
``convcli: FILE: warning: …`` when the input succeeds (a failed input has its one error line).

What matters:

- :class:`~convcli.errors.InputWarning` — convcli's own, e.g. a truncated JPEG the decoder
  completed (:mod:`convcli.io.pillow`);
- numpy's ``overflow``/``invalid value`` in the layer arithmetic: the maps hold Inf or NaN.

Everything else (tifffile's notes on tags it skips, Pillow's metadata warnings) is dropped:
it does not change the pixels convcli uses.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

from .errors import InputWarning

#: Loggers of libraries that report through :mod:`logging` rather than :mod:`warnings`.
LIBRARY_LOGGERS = ("tifffile", "PIL")

_OVERFLOW = ("overflow encountered", "invalid value encountered")


def silence_libraries(*, loggers: bool = True) -> None:
    """Drop every Python warning and (with ``loggers``) library log record in this process.

    The CLI calls it with ``loggers=False`` at start-up, so ``convcli --help`` does not
    import :mod:`logging`; the loggers are quieted where images are read
    (:func:`translated`, ``shape IMAGE``).
    """
    warnings.simplefilter("ignore")
    if loggers:
        quiet_library_loggers()


def quiet_library_loggers() -> None:
    """No record of :data:`LIBRARY_LOGGERS` reaches logging's last-resort handler (standard error)."""
    import logging

    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False  # nothing reaches logging's last-resort handler (standard error)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())


@contextlib.contextmanager
def translated() -> Iterator[list[str]]:
    """Collect, as short lines, the warnings that matter raised inside the block (see the module docstring).

    The list is filled when the block ends; the same line is kept once.
    """
    notes: list[str] = []
    quiet_library_loggers()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield notes
        finally:
            for line in _lines(caught):
                if line not in notes:
                    notes.append(line)


def _lines(caught: list[warnings.WarningMessage]) -> Iterator[str]:
    overflow = False
    for item in caught:
        message = str(item.message)
        if issubclass(item.category, InputWarning):
            yield message
        elif issubclass(item.category, RuntimeWarning) and message.startswith(_OVERFLOW):
            overflow = True
    if overflow:
        yield "float32 overflow while computing the maps: they hold Inf or NaN values"


@contextlib.contextmanager
def c_library_stderr(library: str) -> Iterator[None]:
    """Keep what a C library prints straight to the standard-error descriptor off it.

    libtiff (inside Pillow) writes its diagnostics with ``fprintf(stderr, …)``
    (``ZIPDecode: Decoding error at scanline 0, …``), below Python's :mod:`warnings` and
    :mod:`logging`. For the block, descriptor 2 points at a temporary file; afterwards what was
    written becomes one :class:`~convcli.errors.InputWarning` naming ``library``, so a
    successful input reports it as its one warning line and a failed input as nothing more
    than its error line. Lines with terminal control characters (a progress bar redrawn
    meanwhile) are not the library's and are dropped.
    """
    import os
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (embedded use): nothing to keep off
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 16).decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and "\x1b" not in line and "\r" not in line]
        if lines:
            more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
            warnings.warn(InputWarning(f"the {library} decoder reported: {lines[0][:200]}{more}"),
                          stacklevel=3)


__all__ = ["LIBRARY_LOGGERS", "c_library_stderr", "silence_libraries", "translated"]
