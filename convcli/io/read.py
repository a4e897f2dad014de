"""Reading any input: :func:`read_input`, :func:`read_shape`, :func:`read_header`.

:func:`read_input` turns an image (PNG, JPEG, TIFF, BMP, WebP, GIF's first frame; 8- and
16-bit), a ``.npy`` array or a ``.csv``/``.txt`` table, from a path, standard input
(``"-"``) or bytes, into a float32 H×W×C array wrapped in :class:`Loaded`.
:func:`read_shape` gives the (H, W, C) the same input would have, from the file header
(:func:`read_header` also whether it is a 1-D signal).

The format is found from the content (magic numbers), then the suffix; each format is read
by its own module: :mod:`.npy`, :mod:`.text`, :mod:`.tiff`, :mod:`.spng` (the PNG kinds
libspng decodes faster), :mod:`.pillow` (other PNGs, JPEG and the other Pillow formats).
``--mode`` and ``--scale`` are applied by :mod:`.modes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ._common import (
    ARRAY_SUFFIXES,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    MODES,
    SCALES,
    _IMAGE_MAGICS,
    _NPY_MAGIC,
    _PNG_MAGIC,
    _TIFF_MAGICS,
    _check_choice,
    _head,
    _Raw,
    _read_bytes,
    _resolve_source,
)
from .modes import _apply_mode, _check_finite, _mode_name
from .npy import _npy_header, _read_npy
from .pillow import _pillow_channels, _pillow_open, _read_image, _stored_size
from .spng import header_shape as png_header_shape
from .spng import read_png
from .text import _read_text
from .tiff import _read_tiff, _tiff_header_shape

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ._common import Source


@dataclass(frozen=True)
class Loaded:
    """One input, read and converted.

    Attributes
    ----------
    array : numpy.ndarray
        float32, shape (H, W, C); a 1-D signal is (1, L, 1). uint8/uint16 when read with
        ``keep_integers``.
    name : str
        What messages call the input: the path as given, ``<stdin>`` or ``<bytes>``.
    stem : str
        The base for output names (``photo`` for ``photo.png``; ``stdin``; ``input``).
    kind : {'image', 'array', 'signal'}
        ``signal`` for a 1-D array or a table with one row or one column.
    bit_depth : int or None
        8 or 16 for integer images (and unsigned integer arrays: their item size in bits);
        None for float data. ``--scale unit`` divides by ``2**bit_depth - 1``.
    mode : str
        The layout after ``--mode``: ``L``, ``LA``, ``RGB``, ``RGBA`` for 8 bits;
        ``I;16``, ``LA;16``, ``RGB;16``, ``RGBA;16`` for 16 bits; ``F``, ``LA;F``,
        ``RGB;F``, ``RGBA;F`` (``{C}-channel;F`` beyond four) for float data.
    """

    array: np.ndarray
    name: str
    stem: str
    kind: str
    bit_depth: int | None
    mode: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of :attr:`array`."""
        return tuple(self.array.shape)  # type: ignore[return-value]


def read_input(source: Source, *, mode: str = "keep", scale: str = "raw",
               max_pixels: int | None = DEFAULT_MAX_PIXELS, keep_integers: bool = False) -> Loaded:
    """Read an image or numeric array as float32 H×W×C.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        A file path, ``"-"`` for standard input, or the file's bytes. The format is found
        from the content: ``.npy`` by its magic number, images by Pillow (TIFF by tifffile
        first, so 16-bit colour and float TIFFs keep their values), ``.csv``/``.txt`` by
        suffix, and text as the last try for standard input and unknown suffixes.
    mode : {'keep', 'gray', 'rgb', 'rgba'}
        ``keep``: the file's channels (palette → RGB, or RGBA if the palette has a
        transparent entry; 1-bit → 0/255 gray; CMYK/YCbCr → RGB). ``gray``: ITU-R 601-2
        luma with Pillow's own fixed-point formula ``(19595·R + 38470·G + 7471·B + 2**15)
        >> 16`` — identical to ``convert('L')`` for 8 bits, and applied as-is to 16-bit
        integer values; float data gets ``0.299·R + 0.587·G + 0.114·B`` unrounded; alpha
        is dropped. ``rgb``: gray is repeated, alpha dropped (as Pillow, no compositing).
        ``rgba``: adds an opaque alpha (``2**bit_depth - 1``, or 1.0 for float data).
    scale : {'raw', 'unit'}
        ``raw`` keeps pixel values (0..255, 0..65535) as the seeds use them; ``unit``
        divides integer data by its type's maximum. Float data is never rescaled.
    max_pixels : int or None
        Images whose header declares more than this many pixels (width × height) are
        refused before any pixel is decoded (decompression-bomb guard). None: no limit.
    keep_integers : bool
        With ``scale='raw'``, leave 8- and 16-bit integer pixels as uint8/uint16 (the
        engine converts them; for a 2-D kernel it sums the channels as integers first,
        which saves a float32 copy of every channel). Float data is float32 as always.

    Returns
    -------
    Loaded
        ``array`` is float32 (H, W, C) (uint8/uint16 with ``keep_integers``): C is 1
        (gray), 2 (gray+alpha), 3 or 4 for images under ``keep``; a 2-D array is (H, W, 1);
        a 1-D array or a one-row/one-column table is a signal (1, L, 1); a 3-D ``.npy`` is
        used as (H, W, C).

    Raises
    ------
    InputError
        Missing or unreadable file, not an image/array, corrupt or truncated image, image
        over ``max_pixels``, non-numeric or ragged table, empty or 0-/4-D array, NaN/Inf
        values (convcli refuses them rather than produce NaN maps), or a ``--mode`` that
        does not fit the channel count.
    OptionError
        ``mode`` or ``scale`` not one of the names above.

    Notes
    -----
    EXIF orientation is not applied: pixels are used in file order, as Keras'
    ``load_img``, ImageMagick's ``-convolve`` and libvips do.
    """
    import numpy as np

    _check_choice("--mode", mode, MODES)
    _check_choice("--scale", scale, SCALES)
    zarr_raw = _zarr_raw(source)
    if zarr_raw is not None:
        name, stem = os.fspath(source), Path(source).stem  # type: ignore[arg-type]
        raw = zarr_raw
    else:
        name, stem, path, data = _resolve_source(source)
        raw = _read_raw(name, path, data, max_pixels=max_pixels)
    array, bit_depth = _apply_mode(raw.array, raw.bit_depth, mode, name)
    if keep_integers and scale == "raw" and array.dtype in (np.uint8, np.uint16):
        return Loaded(array=array, name=name, stem=stem, kind=raw.kind, bit_depth=bit_depth,
                      mode=_mode_name(array.shape[2], bit_depth))
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes Inf, refused just below
        out = array.astype(np.float32)
    if scale == "unit" and bit_depth is not None:
        out /= np.float32(2**bit_depth - 1)
    if array.dtype.kind == "f":  # integer pixels are finite by construction
        _check_finite(out, name)
    return Loaded(array=np.ascontiguousarray(out), name=name, stem=stem, kind=raw.kind,
                  bit_depth=bit_depth, mode=_mode_name(out.shape[2], bit_depth))


def read_shape(source: Source) -> tuple[int, int, int]:
    """(H, W, C) that :func:`read_input` with ``mode='keep'`` would return, from the header.

    Images are opened lazily (Pillow reads the header only; TIFF through tifffile's page
    tags), ``.npy`` files through their header, ``.csv``/``.txt`` by reading them (they
    are small). A 16-bit RGB PNG reports C=3, a palette image 3 (4 with transparency).
    skimage is never imported.

    Raises
    ------
    InputError
        As :func:`read_input` for missing, unreadable or unrecognised inputs.
    """
    return read_header(source)[0]


def read_header(source: Source) -> tuple[tuple[int, int, int], str]:
    """(H, W, C) as :func:`read_shape`, and the :attr:`Loaded.kind` :func:`read_input` would give.

    The kind is ``signal`` for a 1-D array or a one-row/one-column table (``shape``
    then gives it Keras' Conv1D meaning), ``image`` or ``array`` otherwise.
    """
    if _is_zarr_source(source):
        from .zarr_array import ZarrRegionReader

        reader = ZarrRegionReader(os.fspath(source), Path(source))  # type: ignore[arg-type]
        try:
            return reader.shape, reader.kind
        finally:
            reader.close()
    name, _stem, path, data = _resolve_source(source)
    head = _head(name, path, data)
    if head.startswith(_NPY_MAGIC):
        return _npy_header(name, path, data)
    if path is None or path.suffix.lower() not in (".csv", ".txt", ".npy"):
        if head.startswith(_TIFF_MAGICS):
            shape = _tiff_header_shape(name, path, data)
            if shape is not None:
                return shape, "image"
        if head.startswith(_PNG_MAGIC):  # the kinds libspng reads: no Pillow import
            shape = png_header_shape(path, data, _head(name, path, data, 33))
            if shape is not None:
                return shape, "image"
        with _pillow_open(name, path, data) as im:
            if im is not None:
                width, height = _stored_size(im)
                return (height, width, _pillow_channels(im)), "image"
    raw = _read_raw(name, path, data, max_pixels=None)
    return tuple(raw.array.shape), raw.kind  # type: ignore[return-value]


def _is_zarr_source(source: Source) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)) or os.fspath(source) == "-":
        return False
    from .zarr_array import is_zarr

    return os.path.isdir(source) and is_zarr(Path(source))  # isdir: False for a name too long


def _zarr_raw(source: Source) -> _Raw | None:
    """A zarr array folder read whole (its rows all at once), or None for any other input."""
    if not _is_zarr_source(source):
        return None
    from .zarr_array import ZarrRegionReader

    reader = ZarrRegionReader(os.fspath(source), Path(source))  # type: ignore[arg-type]
    try:
        return _Raw(reader.read(0, reader.shape[0]), reader.kind, reader.bit_depth)
    finally:
        reader.close()


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True if the file's suffix is one :func:`read_input` reads (for directory listings)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES


def _read_raw(name: str, path: Path | None, data: bytes | None, *, max_pixels: int | None) -> _Raw:
    """Dispatch on content (magic numbers), then suffix; text is the last resort."""
    head = _head(name, path, data)
    suffix = path.suffix.lower() if path is not None else ""
    if not head:
        raise InputError(f"{name}: empty file")
    if head.startswith(_NPY_MAGIC):
        return _read_npy(name, _read_bytes(name, path, data))
    if suffix == ".npy":
        raise InputError(f"{name}: not a .npy file (no NUMPY magic number)")
    if suffix in (".csv", ".txt"):
        return _read_text(name, _read_bytes(name, path, data), comma=True if suffix == ".csv" else None)
    if head.startswith(_TIFF_MAGICS):
        raw = _read_tiff(name, path, data, max_pixels=max_pixels)
        if raw is not None:
            return raw
    if head.startswith(_PNG_MAGIC):  # libspng first where it is faster; else Pillow
        raw = read_png(name, path, data, _head(name, path, data, 33), max_pixels=max_pixels)
        if raw is not None:
            return raw
    raw = _read_image(name, path, data, max_pixels=max_pixels)
    if raw is not None:
        return raw
    for magic, format_name in _IMAGE_MAGICS:
        if head.startswith(magic) and (format_name != "WebP" or head[8:12] == b"WEBP"):
            raise InputError(f"{name}: corrupt {format_name} file (Pillow cannot read its header)")
    if suffix in IMAGE_SUFFIXES or not _looks_like_text(head):
        raise InputError(f"{name}: not an image Pillow can read, nor a .npy or numeric text file")
    return _read_text(name, _read_bytes(name, path, data), comma=None)


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # The head may cut a multi-byte character; the full check happens when parsing.
        head = head[:-3]
    return b"\x00" not in head and all(b >= 9 for b in head)
