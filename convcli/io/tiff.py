"""TIFF through tifffile: gray and RGB(A) of any sample type read, float32 maps written.

Pillow cannot open float RGB TIFFs and reduces 16-bit RGB ones to 8 bits, so tifffile
reads TIFFs first; what it declines (palette, CMYK, 1-bit, a missing codec) falls back
to :mod:`.pillow`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConvcliError, InputError
from ._common import _check_pixels, _Raw


def _read_tiff(name: str, path: Path | None, data: bytes | None, *, max_pixels: int | None) -> _Raw | None:
    """Gray and RGB(A) TIFFs of any sample type through tifffile; None → let Pillow try.

    Pillow cannot open float RGB TIFFs and reduces 16-bit RGB ones to 8 bits.
    """
    import numpy as np

    page_info = _tiff_page(name, path, data)
    if page_info is None:
        return None
    page, tiff, shape = page_info
    try:
        _check_pixels(name, shape[1], shape[0], max_pixels, shape[2])
        try:
            with _tifffile_log() as problems:
                array = page.asarray()
        except Exception:  # noqa: BLE001 - e.g. a codec tifffile lacks (needs imagecodecs)
            return None
    finally:
        tiff.close()
    if problems:
        # tifffile logs missing or undecodable strips/tiles and returns the array anyway,
        # with those parts never written (whatever the memory held): refuse the pixels.
        raise InputError(f"{name}: corrupt TIFF file: {problems[0].split(': ', 1)[-1]} (strips or tiles)")
    if page.axes == "SYX" and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    elif page.axes == "YX" and array.ndim == 2:
        array = array[:, :, None]
    if array.shape != shape:
        # A damaged IFD (counts, sample numbers) can make tifffile decode another shape
        # than the header declares: never use pixels the header does not account for.
        raise InputError(f"{name}: corrupt TIFF file: the header declares {shape[0]}×{shape[1]}×{shape[2]}, "
                         f"the data decode to shape {tuple(array.shape)}")
    if array.dtype.kind == "u":
        bit_depth: int | None = array.dtype.itemsize * 8
    elif array.dtype.kind in "if":
        bit_depth = None
        array = array.astype(np.float64)
    else:
        return None
    return _Raw(array, "image", bit_depth)


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
    """Collect what tifffile logs (warnings and errors) inside the block, instead of printing it."""
    logger = logging.getLogger("tifffile")
    problems: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            problems.append(" ".join(record.getMessage().split()))

    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield problems
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _tiff_page(name: str, path: Path | None, data: bytes | None) -> tuple[Any, Any, tuple[int, int, int]] | None:
    """(first page, open TiffFile, (H, W, C)) if tifffile should read it, else None (caller closes).

    Anything odd about the first page — tags of the wrong type or count, a missing
    dimension, a zero size — makes it None, so Pillow gets its chance and reports.
    """
    try:
        import tifffile
    except ImportError:  # pragma: no cover - scikit-image depends on it
        return None
    try:
        # Damaged tags are logged by tifffile and skipped; whether the page is usable is decided below.
        with _tifffile_log() as problems:
            tiff = tifffile.TiffFile(io.BytesIO(data) if data is not None else path)
    except Exception:  # noqa: BLE001 - Pillow gets its chance and reports the error
        return None
    try:
        with _tifffile_log() as more:
            page = tiff.pages[0]
            shape = _page_shape(page)
            usable = (shape is not None and int(page.photometric) in (1, 2)  # MINISBLACK, RGB; Pillow does the rest
                      and page.axes in ("YX", "YXS", "SYX") and page.dtype is not None
                      and page.dtype.kind in "uif" and int(getattr(page, "bitspersample", 8)) >= 8)
            layout = _layout_problem(page, problems + more)
    except Exception:  # noqa: BLE001 - a damaged IFD can fail in any tag accessor
        usable, layout = False, _layout_problem(None, problems)
    if layout is not None:
        tiff.close()
        raise InputError(f"{name}: corrupt TIFF file: {layout}")
    if not usable:
        tiff.close()
        return None
    return page, tiff, shape  # type: ignore[return-value]


#: Tags that say where a page's pixels are and how they are laid out. When tifffile could not
#: read one of them, the layout is guesswork — a plane taken as missing, tiles that are never
#: decoded, their memory left as it was — so the file is refused (Pillow's libtiff guesses too).
_LAYOUT_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
                262: "PhotometricInterpretation", 273: "StripOffsets", 277: "SamplesPerPixel",
                278: "RowsPerStrip", 279: "StripByteCounts", 284: "PlanarConfiguration", 322: "TileWidth",
                323: "TileLength", 324: "TileOffsets", 325: "TileByteCounts", 338: "ExtraSamples",
                339: "SampleFormat"}


def _layout_problem(page: Any, problems: list[str]) -> str | None:
    """Why the page's pixel layout cannot be trusted, or None."""
    import math
    import re

    for problem in problems:
        match = re.search(r"TiffTag (\d+)", problem)
        if match and int(match.group(1)) in _LAYOUT_TAGS:
            code = int(match.group(1))
            detail = problem.split(" raised ", 1)[-1]
            return f"its {_LAYOUT_TAGS[code]} tag ({code}) is damaged: {detail}"
    if page is None:
        return None
    if int(page.planarconfig) not in (1, 2):
        return f"PlanarConfiguration {int(page.planarconfig)} (1 or 2 are defined)"
    offsets, counts = page.dataoffsets, page.databytecounts
    needed = math.prod(page.chunked)
    if len(offsets) != needed or len(counts) != needed:
        return (f"{len(offsets)} strip/tile offsets and {len(counts)} byte counts for a page of "
                f"{needed} strips or tiles")
    return None


def _page_shape(page: Any) -> tuple[int, int, int] | None:
    """(H, W, C) from the page's tags when they are plain positive integers, else None."""
    values = []
    for value in (page.imagelength, page.imagewidth,
                  getattr(page, "samplesperpixel", 1) if page.axes != "YX" else 1):
        if isinstance(value, bool) or not isinstance(value, (int, _np_integer())):
            return None
        values.append(int(value))
    if min(values) < 1:
        return None
    return tuple(values)  # type: ignore[return-value]


def _np_integer() -> type:
    import numpy as np

    return np.integer


def _tiff_header_shape(name: str, path: Path | None, data: bytes | None) -> tuple[int, int, int] | None:
    page_info = _tiff_page(name, path, data)
    if page_info is None:
        return None
    _page, tiff, shape = page_info
    tiff.close()
    return shape


def encode_tiff(array: Any, *, compression: str = "none") -> bytes:
    """float32 TIFF contents: (H, W) or (H, W, 1) as Pillow mode 'F'; (H, W, C) via tifffile.

    Values are stored unscaled, so a TIFF keeps negative and fractional responses. A
    3-channel array is tagged RGB, others min-is-black with C samples per pixel.
    ``compression`` (none, deflate, zstd; see :data:`TIFF_COMPRESSIONS`) other than none
    writes through tifffile.
    """
    import numpy as np

    from ..errors import OptionError

    if compression not in TIFF_COMPRESSIONS:
        raise OptionError(f"--tiff-compression: {compression!r} is not one of {', '.join(TIFF_COMPRESSIONS)}")
    values = np.ascontiguousarray(array, dtype=np.float32)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    buffer = io.BytesIO()
    if compression != "none":
        import tifffile

        photometric = "rgb" if values.ndim == 3 and values.shape[2] == 3 else "minisblack"
        try:
            tifffile.imwrite(buffer, values, photometric=photometric, compression=TIFF_COMPRESSIONS[compression],
                             planarconfig="contig" if values.ndim == 3 else None, metadata=None)
        except (ImportError, ValueError) as err:
            raise OptionError(f"--tiff-compression {compression}: not available here ({err}); "
                              "install imagecodecs or use deflate") from None
        return buffer.getvalue()
    if values.ndim == 2:
        from PIL import Image

        Image.fromarray(values).save(buffer, format="TIFF")  # float32 2-D → mode 'F'
    else:
        import tifffile

        photometric = "rgb" if values.shape[2] == 3 else "minisblack"
        tifffile.imwrite(buffer, values, photometric=photometric, planarconfig="contig")
    return buffer.getvalue()


class TiffRegionReader:
    """How a TIFF is read by region: only the tiles or strips of the rows asked for.

    Tiled and striped TIFF and BigTIFF of one image plane with interleaved samples
    (gray, gray+alpha, RGB, RGBA; any sample type tifffile decodes, any compression it
    has a codec for). The tiles of one row of tiles are decoded together on the
    engine's threads (codecs release the GIL), and the last row of tiles is kept, so
    bands that do not end on a tile boundary do not decode it twice.
    """

    def __init__(self, name: str, path: Path) -> None:
        import numpy as np
        import tifffile

        self.name = name
        self._tiff = tifffile.TiffFile(path)
        page = self._tiff.pages[0]
        self._page = page
        self.kind = "image"
        length, width = int(page.imagelength), int(page.imagewidth)
        samples = int(getattr(page, "samplesperpixel", 1)) if page.axes != "YX" else 1
        self.shape = (length, width, samples)
        dtype = page.dtype
        self.bit_depth = dtype.itemsize * 8 if dtype.kind == "u" else None
        # Float and signed samples are float64 until --mode, as read_input has them.
        self.dtype = dtype if dtype.kind == "u" else np.dtype(np.float64)
        self._stored = dtype
        if page.is_tiled:
            self._seg_rows, self._seg_cols = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_rows, self._seg_cols = int(page.rowsperstrip or length), width
            self._seg_rows = min(self._seg_rows, length)
        self._across = -(-width // self._seg_cols)
        self._cache: tuple[int, Any] | None = None  # (first row, decoded rows of one segment row)
        # Stored as they are (no compression, predictor or bit packing, native byte order):
        # a row of segments is then read in one piece.
        self._segment_bytes = self._seg_rows * self._seg_cols * samples * dtype.itemsize
        self._plain = (int(page.compression) == 1 and int(getattr(page, "predictor", 1)) == 1
                       and int(getattr(page, "fillorder", 1)) == 1 and int(page.bitspersample) == dtype.itemsize * 8
                       and (dtype.itemsize == 1 or self._tiff.byteorder == "<") and int(page.planarconfig) == 1)

    @staticmethod
    def supports(path: Path) -> bool:
        """Whether the file's first page can be read by region (else it is decoded whole)."""
        try:
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                return (int(page.photometric) in (1, 2) and page.axes in ("YX", "YXS")
                        and page.dtype is not None and page.dtype.kind in "uif"
                        and int(getattr(page, "bitspersample", 8)) >= 8 and int(page.imagedepth) == 1
                        and len(page.dataoffsets) > 0 and _segments_match(page) and _codec_works(page))
        except Exception:  # noqa: BLE001 - read_input reports what is wrong with the file
            return False

    def _segment_row(self, index: int) -> Any:
        """Rows of segment row ``index`` (a row of tiles, or one strip), decoded: (rows, W, C)."""
        import numpy as np

        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        page, fh = self._page, self._tiff.filehandle
        h, w, c = self.shape
        top = index * self._seg_rows
        rows = min(self._seg_rows, h - top)
        out = np.empty((rows, w, c), dtype=self._stored)
        first = index * self._across
        wanted = list(range(first, first + self._across))
        offsets = [page.dataoffsets[i] for i in wanted]
        counts = [page.databytecounts[i] for i in wanted]
        if self._plain and all(offsets[k + 1] == offsets[k] + counts[k] for k in range(len(offsets) - 1)) \
                and all(count == self._segment_bytes for count in counts):
            # Uncompressed segments one after the other: one read and one copy for the row.
            with fh.lock:
                fh.seek(offsets[0])
                data = fh.read(sum(counts))
            tiles = np.frombuffer(data, dtype=self._stored).reshape(self._across, self._seg_rows, self._seg_cols, c)
            out[...] = tiles.transpose(1, 0, 2, 3).reshape(self._seg_rows, -1, c)[:rows, :w]
            if self.dtype != self._stored:
                out = out.astype(self.dtype)
            self._cache = (index, out)
            return out
        # One read a segment: tifffile's read_segments, given an empty segment before one that
        # runs past the end of the file, returned bytes from elsewhere for the latter (tifffile
        # 2026.3.3), where the whole-image read decodes them from their own offset.
        segments = []
        with fh.lock:
            for offset, count, i in zip(offsets, counts, wanted):
                if not offset or not count:
                    segments.append((None, i))
                    continue
                fh.seek(offset)
                segments.append((fh.read(count), i))

        def decode(item) -> None:
            data, segment = item
            pixels, position, _shape = page.decode(data, segment, jpegtables=page.jpegtables)
            x0 = position[3]
            width = min(self._seg_cols, w - x0)
            if pixels is None:  # an empty segment: zeros, as tifffile reads it
                out[:, x0:x0 + width] = 0
            else:
                out[:, x0:x0 + width] = pixels.reshape(pixels.shape[1:])[:rows, :width].reshape(rows, width, c)

        if len(segments) > 1 and page.compression != 1:
            from concurrent.futures import ThreadPoolExecutor

            from ..engine import get_threads

            with ThreadPoolExecutor(max_workers=get_threads()) as pool:
                list(pool.map(decode, segments))
        else:
            for item in segments:
                decode(item)
        if self.dtype != self._stored:
            out = out.astype(self.dtype)
        self._cache = (index, out)
        return out

    def read(self, start: int, stop: int) -> Any:
        import numpy as np

        first, last = start // self._seg_rows, (stop - 1) // self._seg_rows
        parts = []
        for index in range(first, last + 1):
            try:
                block = self._segment_row(index)
            except (ConvcliError, MemoryError):
                raise
            except Exception as err:  # noqa: BLE001 - a codec's error on damaged data (zlib.error, …)
                # The damaged tile or strip row, not the band asked for: the same line whatever
                # the bands (a local stream and a cluster's band tasks cut them differently).
                top = index * self._seg_rows
                bottom = min(top + self._seg_rows, self.shape[0])
                raise InputError(f"{self.name}: corrupt TIFF file: rows {top}–{bottom} do not decode: "
                                 f"{type(err).__name__}: {err}") from None
            top = index * self._seg_rows
            parts.append(block[max(start, top) - top:min(stop, top + block.shape[0]) - top])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self._cache = None
        self._tiff.close()


def _segments_match(page: Any) -> bool:
    """Whether the page's layout tags are numbers, with one integer offset and byte count for each tile or strip.

    A damaged IFD (a tile width of 0, byte counts stored as bytes, fewer offsets than
    segments) is read whole, as tifffile makes of it, never by region from entries that
    do not describe the segments the region reader would read.
    """
    # Tags the reader takes as numbers (a damaged one may be a tuple or bytes).
    for name in ("compression", "predictor", "fillorder", "bitspersample", "planarconfig", "samplesperpixel",
                 "rowsperstrip", "tilelength", "tilewidth"):
        value = getattr(page, name, 1)
        if isinstance(value, (tuple, list, bytes, str)):
            return False
    if int(getattr(page, "samplesperpixel", 1)) < 1:  # 0 samples: tifffile's whole read fails on it too
        return False
    offsets, counts = page.dataoffsets, page.databytecounts
    if not isinstance(offsets, tuple) or not isinstance(counts, tuple):
        return False
    if not all(isinstance(v, int) for v in (*offsets, *counts)):
        return False
    if 0 in counts and int(page.compression) == 1:
        return False  # tifffile's whole read of such a page takes segments from elsewhere than their offsets
    if any(offset == 0 and count for offset, count in zip(offsets, counts)):
        return False  # data "at" offset 0, the file's header: damaged (the whole read refuses it)
    length, width = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled:
        rows, cols = int(page.tilelength), int(page.tilewidth)
        if rows <= 0 or cols <= 0:
            return False
        expected = -(-length // rows) * -(-width // cols)
    else:
        rows = int(page.rowsperstrip or length)
        # Half a tile layout (TileLength without TileWidth), or an empty strip: tifffile's whole
        # read takes such a page otherwise than by its byte counts (or refuses it).
        if rows <= 0 or int(page.tilelength or 0) or int(page.tilewidth or 0) or 0 in counts:
            return False
        expected = -(-length // min(rows, length))
        cols = width
    if not len(offsets) == len(counts) == expected:
        return False
    if int(page.compression) == 1:
        # Uncompressed segments shorter than their pixels are truncated (a 708-byte file whose
        # one strip of 420 bytes declared 5×8323079 RGB floats was read as 500 MB of zeros):
        # read whole, where the decoder refuses them.
        sample = int(getattr(page, "samplesperpixel", 1)) * (int(page.bitspersample) // 8)
        for index, count in enumerate(counts):
            seg_rows = rows if page.is_tiled else min(rows, length - index * rows)
            if count < seg_rows * cols * sample:
                return False
    return True


def _codec_works(page: Any) -> bool:
    """Whether tifffile can decode this page's segments (a codec may need imagecodecs)."""
    try:
        fh = page.parent.filehandle
        data, index = next(iter(fh.read_segments([page.dataoffsets[0]], [page.databytecounts[0]], indices=[0],
                                                 lock=fh.lock)))
        page.decode(data, index, jpegtables=page.jpegtables)
        return True
    except Exception:  # noqa: BLE001
        return False


#: Side of the square tiles of a streamed TIFF (TIFF wants multiples of 16; libvips and
#: GDAL use 256 as well).
TILE = 256
#: ``--tiff-compression`` names and tifffile's: zstd needs the imagecodecs package to be
#: written by tifffile (the whole-image path) and numcodecs (installed with zarr) here.
TIFF_COMPRESSIONS = {"none": None, "deflate": "zlib", "zstd": "zstd"}
_COMPRESSION_CODES = {"none": 1, "deflate": 8, "zstd": 50000}  # TIFF's Compression tag values


class TiffSink:
    """How a large TIFF is written: a float32 tiled BigTIFF, band by band.

    :meth:`write` only files the band away (it keeps a reference: the caller must not
    change the array afterwards); each time 256 rows are there, a writer thread of its
    own cuts them into 256×256 tiles, one small reused tile at a time, and appends each
    to the file (compressed with deflate or zstd if asked) right after cutting it, while
    it is in the cache — as libvips and libtiff do; writing whole rows of tiles from a
    large buffer made the kernel's copy into the page cache several times dearer. So
    computing the next bands and writing these overlap. :meth:`commit` writes the
    directory (tags, tile offsets and byte counts) at the end, points the header at it
    and renames the temporary file to ``path``. The tags are those of the whole-image
    TIFF: one float32 sample per channel (IEEE sample format), RGB photometric for 3
    channels, min-is-black otherwise with the others as extra samples.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], *, compression: str = "none") -> None:
        import queue
        import threading

        from ..errors import OptionError, OutputError
        from .bands import temporary_path

        if compression not in TIFF_COMPRESSIONS:
            raise OptionError(f"--tiff-compression: {compression!r} is not one of {', '.join(TIFF_COMPRESSIONS)}")
        self._encode = _tile_encoder(compression)
        self._thread: threading.Thread | None = None
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)  # (H, W) or (H, W, C)
        self._compression = compression
        self._channels = self.shape[2] if len(self.shape) == 3 else 1
        self._width = self.shape[1]
        self._across = -(-self._width // TILE)
        self._rows_done = 0
        self._pieces: list = []  # (rows, W, C) arrays not yet handed to the writer
        self._held = 0  # rows in them
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # rows of tiles waiting for the writer
        self._error: BaseException | None = None
        self._offsets: list[int] = []
        self._counts: list[int] = []
        self._temporary: Path | None = temporary_path(self.path)
        try:
            self._file = open(self._temporary, "r+b", buffering=0)  # noqa: SIM115 - closed by commit/discard
            self._file.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))  # BigTIFF header; IFD offset set at commit
        except OSError as err:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        self._end = 16
        self._thread = threading.Thread(target=self._run, name="convcli-tiff-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import numpy as np

        tile = np.zeros((TILE, TILE, self._channels), np.float32)
        try:
            while True:
                pieces = self._queue.get()
                if pieces is None:
                    return
                for tx in range(self._across):
                    x0 = tx * TILE
                    x1 = min(self._width, x0 + TILE)
                    row = 0
                    for piece in pieces:
                        tile[row:row + len(piece), :x1 - x0] = piece[:, x0:x1]
                        row += len(piece)
                    if row < TILE:
                        tile[row:] = 0
                    if x1 - x0 < TILE:
                        tile[:, x1 - x0:] = 0
                    data = memoryview(tile).cast("B") if self._encode is None else self._encode(tile)
                    self._file.write(data)
                    self._offsets.append(self._end)
                    self._counts.append(len(data))
                    self._end += len(data)
        except BaseException as err:  # noqa: BLE001 - reported by write() or commit()
            self._error = err

    def _put(self, item) -> None:
        import queue

        while True:
            if self._error is not None:
                self._raise()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise()

    def _raise(self) -> None:
        from ..errors import OutputError

        err = self._error
        self.discard()
        if isinstance(err, OSError):
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        raise OutputError(f"{self.path}: cannot write the TIFF: {type(err).__name__}: {err}") from None

    def write(self, band) -> None:
        band = band.reshape(band.shape[0], self._width, self._channels)
        taken = 0
        while taken < band.shape[0]:
            count = min(TILE - self._held, band.shape[0] - taken)
            self._pieces.append(band[taken:taken + count])
            self._held += count
            taken += count
            if self._held == TILE:
                self._put(self._pieces)
                self._pieces, self._held = [], 0
        self._rows_done += band.shape[0]

    def commit(self) -> None:
        from .bands import put_in_place

        if self._rows_done != self.shape[0]:
            raise ValueError(f"{self.path}: {self._rows_done} rows written of {self.shape[0]}")
        if self._held:
            self._put(self._pieces)
            self._pieces, self._held = [], 0
        self._put(None)
        self._thread.join()
        if self._error is not None:
            self._raise()
        try:
            self._file.write(self._directory())
            self._file.seek(8)
            self._file.write(struct.pack("<Q", self._end))
            self._file.close()
        except OSError as err:
            self._error = err
            self._raise()
        put_in_place(self._temporary, self.path)
        self._temporary = None

    def _directory(self) -> bytes:
        """The image file directory at offset ``self._end``: its entries, then the arrays they point to."""
        channels = self._channels
        photometric = 2 if channels == 3 else 1
        extra = channels - (3 if photometric == 2 else 1)
        entries = [  # (tag, type, values): 3 SHORT, 4 LONG, 16 LONG8
            (256, 4, [self._width]), (257, 4, [self.shape[0]]), (258, 3, [32] * channels),
            (259, 3, [_COMPRESSION_CODES[self._compression]]), (262, 3, [photometric]), (277, 3, [channels]),
            (284, 3, [1]), (322, 3, [TILE]), (323, 3, [TILE]), (324, 16, self._offsets), (325, 16, self._counts),
        ]
        if extra > 0:
            entries.append((338, 3, [0] * extra))  # extra samples, unspecified
        entries.append((339, 3, [3] * channels))  # IEEE floating point
        formats = {3: "H", 4: "I", 16: "Q"}
        ifd_size = 8 + 20 * len(entries) + 8
        arrays = b""
        body = struct.pack("<Q", len(entries))
        for tag, kind, values in entries:
            payload = struct.pack(f"<{len(values)}{formats[kind]}", *values)
            if len(payload) <= 8:
                value = payload.ljust(8, b"\0")
            else:
                value = struct.pack("<Q", self._end + ifd_size + len(arrays))
                arrays += payload
            body += struct.pack("<HHQ", tag, kind, len(values)) + value
        return body + struct.pack("<Q", 0) + arrays

    def discard(self) -> None:
        import contextlib
        import threading

        from .bands import remove_quietly

        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            with contextlib.suppress(Exception):
                while self._thread.is_alive():
                    try:
                        self._queue.put(None, timeout=0.2)
                        break
                    except Exception:  # noqa: BLE001 - full: the writer is busy
                        continue
            self._thread.join(timeout=30)
        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        remove_quietly(self._temporary)
        self._temporary = None


def _tile_encoder(compression: str):
    """bytes of a tile for the Compression tag: None (stored), deflate (zlib), zstd (numcodecs)."""
    if compression == "none":
        return None
    if compression == "deflate":
        import zlib

        return lambda tile: zlib.compress(tile.tobytes(), 6)
    try:
        from numcodecs import Zstd
    except ImportError:  # pragma: no cover - installed with zarr
        from ..errors import OptionError

        raise OptionError("--tiff-compression zstd: needs the numcodecs package (pip install numcodecs)") from None
    codec = Zstd(level=3)
    return lambda tile: bytes(codec.encode(tile.tobytes()))
