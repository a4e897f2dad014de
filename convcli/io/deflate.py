"""The deflate library behind PNG output: ISA-L (the ``isal`` package) when importable, else zlib.

PNG's IDAT data is a zlib stream; any conforming deflate encoder makes a file every PNG
reader takes. Intel's ISA-L compresses the filtered scanlines of a feature map 3–5× faster
than zlib's level 1 and to smaller files (``benchmarks/CODECS.md``: a 1080p Sobel map of a
photograph, 0.24–0.39× zlib's time and 928 kB against 1031 kB; libdeflate, the runner-up,
0.52–0.65× for 918 kB). Without ``isal`` (a
platform with no wheel) zlib does the same job, slower: the files differ in their bytes,
never in their pixels.

``--compress-level`` keeps zlib's 0..9 scale (0 stores, 9 is smallest) and is mapped onto
the libraries as follows:

=====  ==========================  =====================================================
level  deflate                     why
=====  ==========================  =====================================================
0      zlib level 0 (stored)       no compression, as zlib and libpng mean by 0
1      ISA-L level 1 (default)     fastest useful level, smaller than zlib's level 1
2      ISA-L level 2
3–5    ISA-L level 3               PNG's adaptive row filters start at 3 (:mod:`.png`)
6–9    zlib at that level          the smallest files, for archiving: zlib's lazy matching
                                   beats ISA-L's best by 3–5 % on maps
=====  ==========================  =====================================================

Without ISA-L, levels 1–5 are zlib's own (1 and 2 with the RLE strategy, which suits
Sub-filtered rows). :func:`backend_name` tells which library level 1 uses.
"""

from __future__ import annotations

import zlib
from typing import Any

_UNSET = object()
_isal: Any = _UNSET


def _isal_zlib() -> Any:
    """``isal.isal_zlib``, or None when it cannot be imported (imported once, on first use)."""
    global _isal
    if _isal is _UNSET:
        try:
            from isal import isal_zlib
        except ImportError:
            isal_zlib = None
        _isal = isal_zlib
    return _isal


def backend_name(level: int = 1) -> str:
    """``'isal'`` or ``'zlib'``: the library that deflates at ``level``."""
    return "isal" if _isal_level(level) is not None else "zlib"


def _isal_level(level: int) -> int | None:
    if not 1 <= level <= 5 or _isal_zlib() is None:
        return None
    return min(level, 3)


def compressor(level: int, *, raw: bool, zdict: bytes = b"") -> Any:
    """A compressor object for ``--compress-level`` ``level``: zlib stream, or raw deflate.

    Either library's object has ``compress(data)`` and ``flush(mode)`` with zlib's
    ``Z_SYNC_FLUSH``/``Z_FINISH`` meaning, and both release the GIL while they work.
    ``zdict`` primes the window with the bytes before a part (see :func:`convcli.io.png._deflate`).
    """
    wbits = -15 if raw else 15
    fast = _isal_level(level)
    if fast is not None:
        isal_zlib = _isal_zlib()
        if zdict:
            return isal_zlib.compressobj(fast, isal_zlib.DEFLATED, wbits, 9, isal_zlib.Z_DEFAULT_STRATEGY, zdict)
        return isal_zlib.compressobj(fast, isal_zlib.DEFLATED, wbits)
    # zlib's RLE strategy suits Sub-filtered rows (the fast levels); lazy matching the rest.
    strategy = zlib.Z_RLE if 1 <= level <= 2 else zlib.Z_DEFAULT_STRATEGY
    if zdict:
        return zlib.compressobj(level, zlib.DEFLATED, wbits, 9, strategy, zdict)
    return zlib.compressobj(level, zlib.DEFLATED, wbits, 9, strategy)


def crc32(data: Any, value: int = 0) -> int:
    """CRC-32 as :func:`zlib.crc32`; ISA-L's is ~80× faster (0.01 ms a MB against 0.9)."""
    isal_zlib = _isal_zlib()
    return (isal_zlib or zlib).crc32(data, value)


def adler32(data: Any, value: int = 1) -> int:
    """Adler-32 as :func:`zlib.adler32`; ISA-L's is ~4× faster."""
    isal_zlib = _isal_zlib()
    return (isal_zlib or zlib).adler32(data, value)


def header_level_hint(level: int) -> int:
    """The FLEVEL bits of the zlib header (RFC 1950: 0 fastest .. 3 slowest; informative only)."""
    if _isal_level(level) is not None:
        return 0 if level == 1 else 1
    return 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
