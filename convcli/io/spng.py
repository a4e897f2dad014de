"""PNGs decoded by libspng (the ``pyspng`` package) where it is faster than Pillow, same pixels.

Measured on 1080p PNGs of a photograph (``benchmarks/CODECS.md``), libspng decodes 8-bit
RGB and RGBA in 0.6× Pillow's time, interlaced ones too, palette images in 0.75×, and
16-bit RGB/RGBA in 0.5× of convcli's exact 16-bit route through Pillow (two decodes, see
:mod:`.pillow`). Gray images decode no faster, and pyspng 0.1 cannot give gray+alpha nor
a palette's transparency: those stay with Pillow, as does every other format.

:func:`read_png` takes a PNG only when all of these hold, and otherwise returns None so
that Pillow reads it (and words any error about a broken file):

- colour type 2 (RGB) or 6 (RGBA) at 8 or 16 bits, or 3 (palette) without a ``tRNS``
  chunk; any interlace;
- ``pyspng`` imports (it is a dependency, but a platform without its wheel still works);
- every chunk's CRC is right up to ``IEND``: pyspng tells libspng to skip the CRC and
  Adler-32 checks, so a corrupt file would otherwise decode to wrong pixels where Pillow
  refuses it;
- libspng decodes it without error.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

from . import deflate
from ._common import _PNG_MAGIC, _check_pixels, _Raw, _read_bytes

_UNSET = object()
_pyspng: Any = _UNSET

#: (colour type, bit depth) pairs libspng decodes here; palette images of any depth.
_TAKEN = {(2, 8), (2, 16), (6, 8), (6, 16), (3, 1), (3, 2), (3, 4), (3, 8)}


def _load_pyspng() -> Any:
    global _pyspng
    if _pyspng is _UNSET:
        try:
            import pyspng
        except ImportError:
            pyspng = None
        _pyspng = pyspng
    return _pyspng


def png_header(head: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's first 33 bytes, or None.

    None also when the IHDR chunk's CRC is wrong: its numbers are not to be trusted (the
    bomb guard would refuse a flipped height), and Pillow words that error.
    """
    if len(head) < 33 or not head.startswith(_PNG_MAGIC) or head[8:16] != b"\0\0\0\rIHDR":
        return None
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def header_shape(path: Path | None, data: bytes | None, head: bytes) -> tuple[int, int, int] | None:
    """(H, W, C) of a PNG :func:`read_png` would decode, from its chunk headers; else None.

    C is what Pillow's route reports too: 3 for RGB and palette images, 4 for RGBA and for
    a palette with a ``tRNS`` chunk (only the chunk headers before the first IDAT are read).
    None for the other kinds and for anything unexpected: Pillow's header reader then
    answers, and words any error.
    """
    header = png_header(head)
    if header is None or (header[3], header[2]) not in _TAKEN:
        return None
    width, height, _depth, colour = header
    if colour != 3:
        return height, width, 3 if colour == 2 else 4
    kinds = _chunk_kinds_before_idat(path, data)
    if kinds is None:
        return None
    return height, width, 4 if b"tRNS" in kinds else 3


def _chunk_kinds_before_idat(path: Path | None, data: bytes | None) -> set[bytes] | None:
    """The chunk types up to the first IDAT, reading 8 bytes a chunk; None if it is not reached."""
    import io

    kinds: set[bytes] = set()
    try:
        with (io.BytesIO(data) if data is not None else open(path, "rb")) as stream:  # type: ignore[arg-type]
            stream.seek(len(_PNG_MAGIC))
            for _ in range(10_000):  # a PNG with more ancillary chunks than this is left to Pillow
                top = stream.read(8)
                if len(top) < 8:
                    return None
                length, kind = struct.unpack(">I4s", top)
                if kind == b"IDAT":
                    return kinds
                kinds.add(kind)
                stream.seek(length + 4, io.SEEK_CUR)
    except OSError:
        return None
    return None


def read_png(name: str, path: Path | None, data: bytes | None, head: bytes, *,
             max_pixels: int | None) -> _Raw | None:
    """The pixels of a PNG libspng should decode (see the module docstring), or None.

    ``head`` is at least the file's first 33 bytes. The decompression-bomb guard runs on
    the header numbers before anything is decoded, as on Pillow's route.

    Returns
    -------
    _Raw or None
        uint8 or uint16 H×W×C, C = 3 (RGB, palette) or 4 (RGBA); None: Pillow's turn.

    Raises
    ------
    InputError
        Over ``max_pixels``, or the file cannot be read.
    """
    header = png_header(head)
    if header is None or (header[3], header[2]) not in _TAKEN:
        return None
    width, height, depth, colour = header
    _check_pixels(name, width, height, max_pixels)
    pyspng = _load_pyspng()
    if pyspng is None:
        return None
    blob = _read_bytes(name, path, data)
    chunks = _chunk_kinds_if_intact(blob)
    if chunks is None or (colour == 3 and b"tRNS" in chunks):
        return None
    try:
        pixels = pyspng.load(blob)  # RGB for palette images, RGBA16 for 16-bit RGB
    except Exception:  # noqa: BLE001 - any libspng failure: Pillow reads it and words the error
        return None
    if depth == 16 and colour == 2:
        pixels = pixels[:, :, :3]  # pyspng gives 16-bit RGB as RGBA with an opaque alpha
    if pixels.shape[:2] != (height, width):
        return None
    return _Raw(pixels, "image", 16 if depth == 16 else 8)


def _chunk_kinds_if_intact(blob: bytes) -> set[bytes] | None:
    """The chunk types of a PNG whose chunks up to IEND all carry the right CRC, else None."""
    view = memoryview(blob)
    kinds: set[bytes] = set()
    pos = len(_PNG_MAGIC)
    while pos + 12 <= len(blob):
        length, kind = struct.unpack_from(">I4s", blob, pos)
        end = pos + 8 + length
        if end + 4 > len(blob):
            return None
        if deflate.crc32(view[pos + 4:end]) != struct.unpack_from(">I", blob, end)[0]:
            return None
        kinds.add(kind)
        if kind == b"IEND":
            return kinds
        pos = end + 4
    return None


