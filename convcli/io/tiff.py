"""TIFF through tifffile: gray and RGB(A) of any sample type read, float32 maps written.

Pillow cannot open float RGB TIFFs and reduces 16-bit RGB ones to 8 bits, so tifffile
reads TIFFs first; what it declines (palette, CMYK, 1-bit, a missing codec) falls back
to :mod:`.pillow`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ._common import _check_pixels, _Raw


def _read_tiff(name: str, path: Path | None, data: bytes | None, *, max_pixels: int | None) -> _Raw | None:
    """Gray and RGB(A) TIFFs of any sample type through tifffile; None → let Pillow try.

    Pillow cannot open float RGB TIFFs and reduces 16-bit RGB ones to 8 bits.
    """
    import numpy as np

    page_info = _tiff_page(name, path, data)
    if page_info is None:
        return None
    page, tiff = page_info
    try:
        _check_pixels(name, int(page.imagewidth), int(page.imagelength), max_pixels)
        try:
            array = page.asarray()
        except Exception:  # noqa: BLE001 - e.g. a codec tifffile lacks (needs imagecodecs)
            return None
    finally:
        tiff.close()
    if page.axes == "SYX":
        array = np.moveaxis(array, 0, -1)
    elif page.axes == "YX":
        array = array[:, :, None]
    if array.dtype.kind == "u":
        bit_depth: int | None = array.dtype.itemsize * 8
    elif array.dtype.kind in "if":
        bit_depth = None
        array = array.astype(np.float64)
    else:
        return None
    return _Raw(array, "image", bit_depth)


def _tiff_page(name: str, path: Path | None, data: bytes | None) -> tuple[Any, Any] | None:
    """(first page, open TiffFile) if tifffile should read it, else None (caller closes)."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - scikit-image depends on it
        return None
    try:
        tiff = tifffile.TiffFile(io.BytesIO(data) if data is not None else path)
    except Exception:  # noqa: BLE001 - Pillow gets its chance and reports the error
        return None
    page = tiff.pages[0]
    if (int(page.photometric) not in (1, 2)  # MINISBLACK, RGB; Pillow handles the rest
            or page.axes not in ("YX", "YXS", "SYX") or page.dtype is None
            or page.dtype.kind not in "uif" or int(getattr(page, "bitspersample", 8)) < 8):
        tiff.close()
        return None
    return page, tiff


def _tiff_header_shape(name: str, path: Path | None, data: bytes | None) -> tuple[int, int, int] | None:
    page_info = _tiff_page(name, path, data)
    if page_info is None:
        return None
    page, tiff = page_info
    tiff.close()
    channels = int(getattr(page, "samplesperpixel", 1)) if page.axes != "YX" else 1
    return (int(page.imagelength), int(page.imagewidth), channels)


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
                        and len(page.dataoffsets) > 0 and _codec_works(page))
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
        segments = list(fh.read_segments(offsets, counts, indices=wanted, lock=fh.lock))

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
            block = self._segment_row(index)
            top = index * self._seg_rows
            parts.append(block[max(start, top) - top:min(stop, top + block.shape[0]) - top])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self._cache = None
        self._tiff.close()


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
#: ``--tiff-compression`` names and tifffile's: zstd needs the imagecodecs package.
TIFF_COMPRESSIONS = {"none": None, "deflate": "zlib", "zstd": "zstd"}


class TiffSink:
    """How a large TIFF is written: float32 tiled BigTIFF, band by band.

    tifffile writes tiles from an iterator, in order; a thread of its own runs that write
    and takes whole rows of tiles from a queue of one, so at most about two rows of tiles
    (2 × 256 rows) are held. The file is written under a temporary name next to ``path``
    and renamed by :meth:`commit`; :meth:`discard` (or a failure) removes it.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], *, compression: str = "none") -> None:
        import queue
        import threading

        import numpy as np

        from ..errors import OptionError
        from .bands import temporary_path

        if compression not in TIFF_COMPRESSIONS:
            raise OptionError(f"--tiff-compression: {compression!r} is not one of {', '.join(TIFF_COMPRESSIONS)}")
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)  # (H, W) or (H, W, C)
        self._channels = self.shape[2] if len(self.shape) == 3 else 1
        self._width = self.shape[1]
        self._rows_done = 0
        self._buffer = np.zeros((TILE, self._width, self._channels), np.float32)
        self._filled = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._cancelled = False
        self._temporary: Path | None = temporary_path(self.path)
        self._compression = TIFF_COMPRESSIONS[compression]
        self._thread = threading.Thread(target=self._run, name="convcli-tiff-writer", daemon=True)
        self._thread.start()

    def _tiles(self):
        import queue

        import numpy as np

        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._cancelled:
                    raise RuntimeError("discarded") from None
                continue
            if item is None:
                return
            for x0 in range(0, self._width, TILE):
                tile = item[:, x0:x0 + TILE]
                if tile.shape[1] < TILE:
                    padded = np.zeros((TILE, TILE, self._channels), np.float32)
                    padded[:, :tile.shape[1]] = tile
                    tile = padded
                yield tile if self._channels > 1 else tile[:, :, 0]

    def _run(self) -> None:
        import tifffile

        try:
            photometric = "rgb" if self._channels == 3 else "minisblack"
            tifffile.imwrite(self._temporary, data=self._tiles(), shape=self.shape, dtype="float32", tile=(TILE, TILE),
                             bigtiff=True, photometric=photometric, planarconfig="contig" if self._channels > 1 else None,
                             compression=self._compression, metadata=None)
        except BaseException as err:  # noqa: BLE001 - reported by commit()
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
        if isinstance(err, OSError):
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        raise OutputError(f"{self.path}: cannot write the TIFF: {type(err).__name__}: {err}") from None

    def write(self, band) -> None:
        import numpy as np

        band = band.reshape(band.shape[0], self._width, self._channels)
        taken = 0
        while taken < band.shape[0]:
            count = min(TILE - self._filled, band.shape[0] - taken)
            self._buffer[self._filled:self._filled + count] = band[taken:taken + count]
            self._filled += count
            taken += count
            if self._filled == TILE:
                self._put(self._buffer)
                self._buffer = np.empty_like(self._buffer)  # the writer thread still reads the one it got
                self._filled = 0
        self._rows_done += band.shape[0]

    def commit(self) -> None:
        from .bands import put_in_place

        if self._rows_done != self.shape[0]:
            raise ValueError(f"{self.path}: {self._rows_done} rows written of {self.shape[0]}")
        if self._filled:
            self._buffer[self._filled:] = 0
            self._put(self._buffer)
        self._put(None)
        self._thread.join()
        if self._error is not None:
            self.discard()
            self._raise()
        put_in_place(self._temporary, self.path)
        self._temporary = None

    def discard(self) -> None:
        from .bands import remove_quietly

        self._cancelled = True
        self._thread.join(timeout=10)
        remove_quietly(self._temporary)
        self._temporary = None
