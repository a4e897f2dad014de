"""Images Pillow decodes: PNG, JPEG, BMP, WebP, GIF, and TIFFs tifffile leaves to it.

Images are opened lazily (header only) by :func:`_pillow_open`, so sizes are known, and
the decompression-bomb guard applied, before any pixel is decoded.

16-bit colour PNGs
    Pillow (up to at least 13) has no 16-bit RGB mode: it decodes 16-bit RGB, RGBA and
    gray+alpha PNGs to 8 bits by keeping each sample's high byte. Its PNG decoder still
    inflates and unfilters the full 16-bit rows in C; only the final unpacking drops the
    low byte. :func:`_png16_colour` therefore decodes such a file twice with two unpackers
    of the same width — ``RGB;16B`` (high bytes) and ``RGB;16L`` (which, fed big-endian
    data, picks the low bytes) — and joins them, exactly and at C speed, interlaced files
    included. Gray+alpha is decoded once as 32-bit ``RGBA``, i.e. the raw four bytes. For
    writing, :func:`convcli.io.png.encode_png` has a small vectorised PNG encoder for
    16-bit colour.
"""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._common import _check_pixels, _Raw

# Pillow's rawmodes for 16-bit colour PNGs, and the unpacker that yields the low bytes.
_PNG16_LOW_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}


@contextlib.contextmanager
def _pillow_open(name: str, path: Path | None, data: bytes | None) -> Iterator[Any]:
    """Open lazily (header only); yields None if Pillow does not recognise the format.

    Pillow's own decompression-bomb check is switched off for the open: ours, with the
    user's ``--max-pixels``, runs right after it on the same header numbers.
    """
    from PIL import Image, UnidentifiedImageError

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(io.BytesIO(data) if data is not None else path)
    except UnidentifiedImageError:
        im = None
    except Image.DecompressionBombError as err:  # only if another thread re-enabled it
        raise InputError(f"{name}: refused by Pillow's decompression-bomb check: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise InputError(f"{name}: corrupt image header: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    try:
        yield im
    finally:
        if im is not None:
            im.close()


def _pillow_channels(im: Any) -> int:
    """Channels :func:`_pillow_array` gives for this (lazily opened) image under keep."""
    mode = im.mode
    if mode in ("P", "PA"):
        return 4 if mode == "PA" or "transparency" in im.info else 3
    if mode in ("LA", "La"):
        return 2
    if mode in ("RGBA", "RGBa"):
        return 2 if _png_rawmode(im) == "LA;16B" else 4
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return 1
    return 3  # RGB, RGBX, CMYK, YCbCr, LAB, HSV → RGB


def _png_rawmode(im: Any) -> str | None:
    if im.format != "PNG" or len(im.tile) != 1:
        return None
    args = im.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) else args
    return rawmode if isinstance(rawmode, str) else None


def _read_image(name: str, path: Path | None, data: bytes | None, *, max_pixels: int | None) -> _Raw | None:
    with _pillow_open(name, path, data) as im:
        if im is None:
            return None
        _check_pixels(name, im.size[0], im.size[1], max_pixels)
        try:
            return _pillow_array(im, name, path, data)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere in a decoder
            if im.format == "JPEG" and "truncated" in str(err):
                return _truncated_jpeg(name, path, data, err)
            raise InputError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from None


def _truncated_jpeg(name: str, path: Path | None, data: bytes | None, err: Exception) -> _Raw:
    """A JPEG whose data ends early, decoded as libjpeg completes it, with an InputWarning.

    Pillow raises "image file is truncated" unless ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is set; then libjpeg ends the scan with a fake end-of-image marker and fills the rows
    it has no data for, as djpeg, ImageMagick and libvips do (they warn "Premature end of
    JPEG file"). convcli does the same and says so, in one warning line.
    """
    import warnings

    from PIL import ImageFile

    from ..errors import InputWarning

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with _pillow_open(name, path, data) as im:
            raw = _pillow_array(im, name, path, data)
    except InputError:
        raise
    except Exception as again:  # noqa: BLE001 - not even the start of the scan decodes
        raise InputError(f"{name}: cannot decode image ({type(again).__name__}: {again})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    warnings.warn(InputWarning("truncated JPEG data: the decoder filled in the missing part of the image"),
                  stacklevel=2)
    return raw


def _pillow_array(im: Any, name: str, path: Path | None, data: bytes | None) -> _Raw:
    """Decode every pixel (``load`` forces it, so truncation is caught here).

    A TIFF comes back in its stored order, as tifffile reads it and the header says: Pillow
    turns it by its Orientation tag while loading, which is undone here (convcli applies no
    orientation; an LZW TIFF with Orientation 5 decoded 7×5 where its header said 5×7).
    """
    # (read before loading: Pillow drops the tag once it has turned the pixels)
    orientation = getattr(im, "tag_v2", {}).get(274) if im.format == "TIFF" else None
    turned = isinstance(orientation, int) and 2 <= orientation <= 8
    width, height = im.size  # as Pillow reports it: turned for 5-8
    stored = (width, height) if turned and orientation >= 5 else (height, width)
    mode = im.mode
    raw = _pillow_pixels(im, name, path, data)
    if turned:
        raw = _Raw(_unturn(raw.array, orientation), raw.kind, raw.bit_depth)
        if raw.array.shape[:2] != stored:
            # Pillow 13 turns palette TIFFs of Orientation 5-8 but keeps the unturned size:
            # pixels that cannot be put back in their stored order are refused.
            raise InputError(f"{name}: a {mode} TIFF with Orientation {orientation}, which Pillow decodes turned "
                             f"in a way that cannot be undone ({raw.array.shape[0]}×{raw.array.shape[1]} for "
                             f"{stored[0]}×{stored[1]}); save it without the Orientation tag")
    return raw


def _stored_size(im: Any) -> tuple[int, int]:
    """(width, height) as stored: an opened TIFF whose Orientation is 5-8 reports them swapped."""
    orientation = getattr(im, "tag_v2", {}).get(274) if im.format == "TIFF" else None
    width, height = im.size
    return (height, width) if isinstance(orientation, int) and 5 <= orientation <= 8 else (width, height)


def _unturn(array: Any, orientation: int) -> Any:
    """The inverse of the transpose Pillow applies to a TIFF of this Orientation (2-8)."""
    import numpy as np

    if orientation == 2:  # Pillow: FLIP_LEFT_RIGHT
        out = array[:, ::-1]
    elif orientation == 3:  # ROTATE_180
        out = array[::-1, ::-1]
    elif orientation == 4:  # FLIP_TOP_BOTTOM
        out = array[::-1]
    elif orientation == 5:  # TRANSPOSE
        out = array.transpose(1, 0, 2)
    elif orientation == 6:  # ROTATE_270 (clockwise), undone counter-clockwise
        out = np.rot90(array, 1)
    elif orientation == 7:  # TRANSVERSE
        out = array[::-1, ::-1].transpose(1, 0, 2)
    else:  # 8: ROTATE_90 (counter-clockwise), undone clockwise
        out = np.rot90(array, -1)
    return np.ascontiguousarray(out)


def _pillow_pixels(im: Any, name: str, path: Path | None, data: bytes | None) -> _Raw:
    import numpy as np

    rawmode = _png_rawmode(im)
    if rawmode in _PNG16_LOW_RAWMODE:
        return _Raw(_png16_colour(im, rawmode, path, data), "image", 16)
    # What the header said, before decoding: a tRNS chunk after the image data (out of order)
    # is only seen by load(), and read_shape, which reads the header only, must agree with us.
    header_transparency = "transparency" in im.info
    if im.format == "TIFF":  # libtiff prints its diagnostics to descriptor 2 itself
        from .._noise import c_library_stderr

        with c_library_stderr("TIFF"):
            im.load()
    else:
        im.load()
    mode = im.mode
    if mode.startswith("I;16"):
        return _Raw(np.asarray(im).astype(np.uint16)[:, :, None], "image", 16)
    if mode in ("I", "F"):
        return _Raw(np.asarray(im).astype(np.float64 if mode == "I" else np.float32)[:, :, None],
                    "image", None)
    target = {"1": "L", "L": "L", "P": "RGBA" if header_transparency else "RGB", "PA": "RGBA",
              "LA": "LA", "La": "LA", "RGB": "RGB", "RGBA": "RGBA", "RGBa": "RGBA"}.get(mode, "RGB")
    if mode != target:
        im = im.convert(target)
    array = np.asarray(im)
    if array.ndim == 2:
        array = array[:, :, None]
    return _Raw(array, "image", 8)


def _png16_colour(im: Any, rawmode: str, path: Path | None, data: bytes | None) -> Any:
    """Exact 16-bit samples of an RGB/RGBA/gray+alpha PNG (see the module docstring)."""
    from PIL import Image
    import numpy as np

    blob = data if data is not None else path.read_bytes()  # type: ignore[union-attr]

    def decode(unpacker: str) -> Any:
        with Image.open(io.BytesIO(blob)) as fresh:
            tile = fresh.tile[0]
            fresh.tile = [tile._replace(args=unpacker) if hasattr(tile, "_replace")
                          else (tile[0], tile[1], tile[2], unpacker)]
            fresh.load()
            return np.asarray(fresh).astype(np.uint16)

    low_mode = _PNG16_LOW_RAWMODE[rawmode]
    if rawmode == "LA;16B":
        # 32-bit RGBA unpacking copies the four bytes L-hi, L-lo, A-hi, A-lo unchanged.
        quad = decode(low_mode)
        return (quad[:, :, 0::2] << 8) | quad[:, :, 1::2]
    im.load()
    high = np.asarray(im).astype(np.uint16)
    return (high << 8) | decode(low_mode)
