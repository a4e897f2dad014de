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
