"""TIFF through tifffile: gray and RGB(A) of any sample type read, float32 maps written.

Pillow cannot open float RGB TIFFs and reduces 16-bit RGB ones to 8 bits, so tifffile
reads TIFFs first; what it declines (palette, CMYK, 1-bit, a missing codec) falls back
to :mod:`.pillow`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
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
        _check_pixels(name, shape[1], shape[0], max_pixels)
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


def encode_tiff(array: Any) -> bytes:
    """float32 TIFF contents: (H, W) or (H, W, 1) as Pillow mode 'F'; (H, W, C) via tifffile.

    Values are stored unscaled, so a TIFF keeps negative and fractional responses. A
    3-channel array is tagged RGB, others min-is-black with C samples per pixel.
    """
    import numpy as np

    values = np.ascontiguousarray(array, dtype=np.float32)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    buffer = io.BytesIO()
    if values.ndim == 2:
        from PIL import Image

        Image.fromarray(values).save(buffer, format="TIFF")  # float32 2-D → mode 'F'
    else:
        import tifffile

        photometric = "rgb" if values.shape[2] == 3 else "minisblack"
        tifffile.imwrite(buffer, values, photometric=photometric, planarconfig="contig")
    return buffer.getvalue()
