"""How PNGs are written: convcli's own encoder (numpy filters + ISA-L or zlib), 8 and 16 bits.

Pillow cannot write 16-bit colour and is 2–3× slower at level 1, so PNG files are built
here: scanlines filtered with numpy (:func:`_png_bytes`), deflated in parallel parts the
way pigz does (:func:`_deflate`) by the library :mod:`.deflate` picks (ISA-L, else zlib),
wrapped in PNG chunks. Reading PNGs is :mod:`.spng`'s and Pillow's job (:mod:`.pillow`).
"""

from __future__ import annotations

import struct
import threading
import zlib
from typing import Any

from ..errors import OptionError, OutputError
from . import deflate
from ._common import _PNG_MAGIC

#: ``--compress-level`` for PNG output (zlib's 0..9 scale, mapped onto ISA-L by
#: :mod:`.deflate`). Level 1 is ISA-L's level 1: on a 1080p Sobel map of a photograph the
#: whole encode takes 11 ms for 927 kB, level 6 (zlib, adaptive filters, Pillow's default)
#: 243 ms for 801 kB. Batches of maps are written far more often than they are archived.
DEFAULT_PNG_COMPRESS_LEVEL = 1


def encode_png(array: Any, *, bits: int | None = None, compress_level: int | None = None,
               workers: int = 1) -> bytes:
    """PNG file contents for gray, gray+alpha, RGB or RGBA pixels, 8 or 16 bits.

    Parameters
    ----------
    array : numpy.ndarray
        uint8 or uint16, (H, W) or (H, W, C) with C in 1..4.
    bits : {8, 16} or None
        Must agree with the dtype when given; None takes it from the dtype.
    compress_level : int or None
        0..9 on zlib's scale (0 stores, 9 smallest), mapped onto ISA-L or zlib as the
        table in :mod:`.deflate` says; None is :data:`DEFAULT_PNG_COMPRESS_LEVEL` (1: fast).
    workers : int
        Threads that deflate the parts of a large image (see :func:`_deflate`). The
        bytes written do not depend on it.

    Notes
    -----
    Written here with numpy and ISA-L (zlib without it), not Pillow (which cannot write
    16-bit colour and is 2–3× slower at level 1): see :func:`_png_bytes` for the filters.

    Raises
    ------
    OptionError
        ``compress_level`` outside 0..9.
    OutputError
        A channel count PNG cannot hold (use tiff or npy).
    ValueError
        dtype not uint8/uint16, or not matching ``bits``.
    """
    import numpy as np

    pixels = np.asarray(array)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    expected = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(pixels.dtype)
    if expected is None or (bits is not None and bits != expected):
        raise ValueError(f"encode_png: expected uint8 (bits=8) or uint16 (bits=16) pixels, "
                         f"got {pixels.dtype} with bits={bits}")
    level = DEFAULT_PNG_COMPRESS_LEVEL if compress_level is None else compress_level
    if not (isinstance(level, int) and 0 <= level <= 9):
        raise OptionError(f"--compress-level: expected 0 to 9, got {compress_level!r}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.ndim not in (2, 3) or channels > 4:
        raise OutputError(f"cannot write an array of shape {pixels.shape} as PNG (gray, gray+alpha, RGB "
                          "or RGBA only); use --format tiff or npy")
    return _png_bytes(pixels if pixels.ndim == 3 else pixels[:, :, None], expected, level, workers)


def _png_bytes(pixels: Any, bits: int, level: int, workers: int = 1) -> bytes:
    """A PNG of H×W×C (C in 1..4) uint8/uint16 pixels, filtered with numpy and deflated.

    Fast levels (0–2) filter every row with PNG's Sub filter — the recipe of fast PNG
    encoders — and deflate with ISA-L (:mod:`.deflate`; zlib's RLE strategy without it);
    both release the GIL, so maps encode in parallel threads. Levels 3–9 pick, for each
    row, the filter (None, Sub, Up, Average or Paeth) that minimises the sum of absolute signed bytes — libpng's heuristic, computed for all
    rows at once — for smaller files.
    """
    import numpy as np

    height, width, channels = pixels.shape
    if bits == 16:
        rows = pixels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    else:
        rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    bpp = channels * bits // 8  # PNG filters work on bytes, one pixel back
    if level <= 2:
        scanlines = _scanline_buffer(height, rows.shape[1] + 1)
        scanlines[:, 0] = 1  # Sub
        scanlines[:, 1:1 + bpp] = rows[:, :bpp]
        # uint8 subtraction wraps, which is exactly PNG's modulo-256 filter arithmetic.
        np.subtract(rows[:, bpp:], rows[:, :-bpp], out=scanlines[:, 1 + bpp:])
    else:
        scanlines = _adaptive_scanlines(rows, bpp)
    compressed = _deflate(scanlines.data, level, workers)
    step = 1 << 24  # several IDAT chunks keep each one well under PNG's 2**31 - 1 limit
    idats = b"".join(_png_chunk(b"IDAT", compressed[i:i + step]) for i in range(0, max(len(compressed), 1), step))
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, bits, color_type, 0, 0, 0)
    return _PNG_MAGIC + _png_chunk(b"IHDR", header) + idats + _png_chunk(b"IEND", b"")


_local = threading.local()


def _scanline_buffer(height: int, width: int) -> Any:
    """This thread's uint8 scratch for filtered scanlines, reused by every map it encodes.

    The deflater copies what it compresses into its own output, so the buffer is free again
    when :func:`_png_bytes` returns; a fresh one per map costs its page faults every time
    (64 maps of 1080p: 133 MB). Buffers above 16 MB (a 4K colour map) are not kept.
    """
    import numpy as np

    size = height * width
    flat = getattr(_local, "scanlines", None)
    if flat is None or flat.size < size:
        flat = np.empty(size, np.uint8)
        if size <= 16 << 20:
            _local.scanlines = flat
    return flat[:size].reshape(height, width)


#: Bytes of filtered scanlines per independently deflated part of one PNG (see :func:`_deflate`).
DEFLATE_PART_BYTES = 1 << 20
_WINDOW = 1 << 15  # deflate's window: each part is primed with the 32 KiB before it


def _deflate(data: memoryview, level: int, workers: int = 1) -> bytes:
    """A zlib stream of ``data``, deflated in parts of :data:`DEFLATE_PART_BYTES` on ``workers`` threads.

    pigz's method: each part is raw deflate primed with the 32 KiB before it (so matches
    may reach back across the cut, as in one stream) and ends on a byte boundary with a
    sync flush; the last part ends the stream. The parts, between zlib's two-byte header
    and the Adler-32 of all the data, are one valid zlib stream. ISA-L and zlib release
    the GIL, so the parts of one large map compress on several cores. The cuts depend on
    the size alone, so the bytes are the same whatever ``workers`` is.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    cuts = list(range(0, size, DEFLATE_PART_BYTES)) or [0]
    if len(cuts) == 1:
        compressor = deflate.compressor(level, raw=False)
        return compressor.compress(view) + compressor.flush()

    def part(k: int) -> bytes:
        start = cuts[k]
        end = cuts[k + 1] if k + 1 < len(cuts) else size
        primer = bytes(view[max(0, start - _WINDOW):start])
        compressor = deflate.compressor(level, raw=True, zdict=primer)
        body = compressor.compress(view[start:end])
        return body + compressor.flush(zlib.Z_FINISH if end == size else zlib.Z_SYNC_FLUSH)

    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(cuts))) as pool:
            bodies = list(pool.map(part, range(len(cuts))))
    else:
        bodies = [part(k) for k in range(len(cuts))]
    # zlib header: deflate with a 32 KiB window (0x78), then the level hint and check bits.
    cmf, flg = 0x78, deflate.header_level_hint(level) << 6
    flg += 31 - ((cmf << 8) + flg) % 31
    return bytes((cmf, flg)) + b"".join(bodies) + struct.pack(">I", deflate.adler32(view))


def _adaptive_scanlines(rows: Any, bpp: int) -> Any:
    """Filter type byte + filtered bytes for each row, libpng's minimum-sum heuristic."""
    import numpy as np

    height = rows.shape[0]
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    up = np.zeros_like(rows)
    up[1:] = rows[:-1]
    upleft = np.zeros_like(rows)
    upleft[1:, bpp:] = rows[:-1, :-bpp]
    # Paeth: the neighbour closest to left + up - upleft; ties prefer left, then up.
    a, b, c = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    del a, b, c, pa, pb, pc
    average = (left >> 1) + (up >> 1) + (left & up & 1)  # floor((left + up) / 2) in 8 bits
    signed_size = np.abs(np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int16)).astype(np.uint8)
    best = rows.copy()
    best_kind = np.zeros(height, np.uint8)
    best_cost = signed_size[best].sum(axis=1, dtype=np.uint64)
    for kind, predictor in ((1, left), (2, up), (3, average), (4, paeth)):
        candidate = rows - predictor
        cost = signed_size[candidate].sum(axis=1, dtype=np.uint64)
        better = cost < best_cost
        best[better] = candidate[better]
        best_kind[better] = kind
        best_cost = np.minimum(cost, best_cost)
    return np.concatenate([best_kind[:, None], best], axis=1)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", deflate.crc32(payload, deflate.crc32(kind))))
