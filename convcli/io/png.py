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


def _adaptive_scanlines(rows: Any, bpp: int, previous: Any = None) -> Any:
    """Filter type byte + filtered bytes for each row, libpng's minimum-sum heuristic.

    ``previous``: the image's row above the first of ``rows`` (None for the first row of
    the image), so rows filtered band by band come out as those filtered all at once.
    """
    import numpy as np

    height = rows.shape[0]
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    up = np.zeros_like(rows)
    up[1:] = rows[:-1]
    upleft = np.zeros_like(rows)
    upleft[1:, bpp:] = rows[:-1, :-bpp]
    if previous is not None:
        up[0] = previous
        upleft[0, bpp:] = previous[:-bpp]
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


def _scanline_rows(pixels: Any, bits: int) -> Any:
    """(H, W·C·bytes) uint8 rows of H×W×C pixels, 16-bit samples big-endian (PNG's byte order)."""
    import numpy as np

    height, width, channels = pixels.shape
    if bits == 16:
        return pixels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    return np.ascontiguousarray(pixels).reshape(height, width * channels)


class PngSink:
    """How a large PNG is written: row by row through the encoder above, into a temporary file.

    The bytes are exactly those :func:`encode_png` gives for the whole image: the same
    filters (Sub at levels 0–2; at 3–9 each row's best filter, which looks at the row
    above, carried across bands), the same deflate parts (:data:`DEFLATE_PART_BYTES` of
    filtered scanlines, each primed with the 32 KiB before it, compressed on ``workers``
    threads while the next rows arrive), the same 16 MiB IDAT chunks. At most a part of
    scanlines, the parts in flight and one IDAT chunk are held. An image whose scanlines
    fit in one part is deflated as one stream at :meth:`commit`, as the whole-image encoder does.
    """

    def __init__(self, path: Any, height: int, width: int, channels: int, *, bits: int = 8,
                 compress_level: int | None = None, workers: int = 1) -> None:
        import numpy as np

        from .bands import temporary_path

        level = DEFAULT_PNG_COMPRESS_LEVEL if compress_level is None else compress_level
        if not (isinstance(level, int) and 0 <= level <= 9):
            raise OptionError(f"--compress-level: expected 0 to 9, got {compress_level!r}")
        if channels not in (1, 2, 3, 4):
            raise OutputError(f"cannot write {channels} channels as PNG (gray, gray+alpha, RGB or RGBA only); "
                              "use --format tiff or npy")
        from pathlib import Path

        self.path = Path(path)
        self.height, self.width, self.channels, self.bits, self.level = height, width, channels, bits, level
        self._dtype = np.uint8 if bits == 8 else np.uint16
        self._bpp = channels * bits // 8
        self._line = 1 + width * channels * bits // 8
        self._size = height * self._line
        self._single = self._size <= DEFLATE_PART_BYTES
        self._part = bytearray()  # filtered scanlines of the part being filled
        self._primer = b""  # the 32 KiB before it
        self._adler = 1
        self._offset = 0  # scanline bytes handed to parts so far
        self._previous = None  # the last row (for the adaptive filters)
        self._rows = 0
        self._pending: list = []  # compressed parts in flight, in order
        self._idat = bytearray()  # compressed bytes not yet in an IDAT chunk
        self._pool = None
        self._workers = max(1, workers)
        self._temporary = temporary_path(self.path)
        try:
            self._file = open(self._temporary, "wb")  # noqa: SIM115 - closed by commit/discard
            header = struct.pack(">IIBBBBB", width, height, bits, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
            self._file.write(_PNG_MAGIC + _png_chunk(b"IHDR", header))
            if not self._single:
                cmf, flg = 0x78, deflate.header_level_hint(level) << 6
                flg += 31 - ((cmf << 8) + flg) % 31
                self._idat += bytes((cmf, flg))
        except OSError as err:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None

    def write(self, pixels: Any) -> None:
        """The next rows: (rows, W) or (rows, W, C) uint8/uint16 pixels."""
        import numpy as np

        pixels = np.asarray(pixels, dtype=self._dtype).reshape(-1, self.width, self.channels)
        rows = _scanline_rows(pixels, self.bits)
        if self.level <= 2:
            bpp = self._bpp
            scanlines = np.empty((rows.shape[0], self._line), np.uint8)
            scanlines[:, 0] = 1  # Sub
            scanlines[:, 1:1 + bpp] = rows[:, :bpp]
            np.subtract(rows[:, bpp:], rows[:, :-bpp], out=scanlines[:, 1 + bpp:])
        else:
            scanlines = _adaptive_scanlines(rows, self._bpp, self._previous)
            self._previous = rows[-1].copy()
        self._rows += rows.shape[0]
        self._feed(memoryview(np.ascontiguousarray(scanlines)).cast("B"))

    def _feed(self, data: memoryview) -> None:
        if self._single:
            self._part += data
            return
        taken = 0
        while taken < len(data):
            count = min(DEFLATE_PART_BYTES - len(self._part), len(data) - taken)
            self._part += data[taken:taken + count]
            taken += count
            if len(self._part) == DEFLATE_PART_BYTES and self._offset + len(self._part) < self._size:
                self._submit(final=False)

    def _submit(self, *, final: bool) -> None:
        part, primer = bytes(self._part), self._primer
        self._adler = deflate.adler32(part, self._adler)
        self._offset += len(part)
        self._primer = part[-_WINDOW:] if len(part) >= _WINDOW else (primer + part)[-_WINDOW:]
        self._part = bytearray()
        level = self.level

        def compress() -> bytes:
            compressor = deflate.compressor(level, raw=True, zdict=primer)
            return compressor.compress(part) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)

        if self._workers > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="convcli-png")
            self._pending.append(self._pool.submit(compress))
        else:
            self._idat += compress()
        while self._pending and (len(self._pending) > self._workers or self._pending[0].done()):
            self._idat += self._pending.pop(0).result()
        self._flush_idat(final=False)

    def _flush_idat(self, *, final: bool) -> None:
        step = 1 << 24  # as encode_png: IDAT chunks of 16 MiB, the last one shorter
        try:
            while len(self._idat) > step or (final and self._idat):
                self._file.write(_png_chunk(b"IDAT", bytes(self._idat[:step])))
                del self._idat[:step]
        except OSError as err:
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None

    def commit(self) -> None:
        from .bands import put_in_place

        if self._rows != self.height:
            raise ValueError(f"{self.path}: {self._rows} rows written of {self.height}")
        try:
            if self._single:
                compressor = deflate.compressor(self.level, raw=False)
                self._idat += compressor.compress(bytes(self._part)) + compressor.flush()
            else:
                self._submit(final=True)
                while self._pending:
                    self._idat += self._pending.pop(0).result()
                self._idat += struct.pack(">I", self._adler)
            if self._idat:
                self._flush_idat(final=True)
            else:
                self._file.write(_png_chunk(b"IDAT", b""))
            self._file.write(_png_chunk(b"IEND", b""))
            self._file.close()
        except BaseException as err:
            self.discard()
            if isinstance(err, OSError):
                raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        put_in_place(self._temporary, self.path)
        self._temporary = None

    def discard(self) -> None:
        import contextlib

        from .bands import remove_quietly

        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        remove_quietly(self._temporary)
        self._temporary = None
