"""Files ⇄ arrays: images and numeric arrays in, feature maps out.

Reading
    :func:`read_input` turns an image (PNG, JPEG, TIFF, BMP, WebP, GIF's first frame; 8- and
    16-bit), a ``.npy`` array or a ``.csv``/``.txt`` table, from a path, standard input
    (``"-"``) or bytes, into a float32 H×W×C array wrapped in :class:`Loaded`.
    :func:`read_shape` gives the (H, W, C) the same input would have, from the file header
    (:func:`read_header` also whether it is a 1-D signal).

Writing
    :func:`to_display` maps float feature maps to uint8/uint16 pixels (SPEC's
    ``--normalize`` modes), :func:`encode_png`, :func:`encode_tiff` and :func:`encode_npy`
    turn arrays into file contents, :func:`write_atomic` puts them in place without ever
    leaving a partial file, :func:`montage` draws a labelled grid and
    :func:`format_map_rows` prints a map the way the seeds print it.

Nothing heavy is imported at module level: numpy, Pillow and tifffile load inside the
functions that use them, so ``convcli --help`` and ``convcli shape`` stay fast.

16-bit colour PNGs
    Pillow (up to at least 13) has no 16-bit RGB mode: it decodes 16-bit RGB, RGBA and
    gray+alpha PNGs to 8 bits by keeping each sample's high byte. Its PNG decoder still
    inflates and unfilters the full 16-bit rows in C; only the final unpacking drops the
    low byte. :func:`read_input` therefore decodes such a file twice with two unpackers of
    the same width — ``RGB;16B`` (high bytes) and ``RGB;16L`` (which, fed big-endian data,
    picks the low bytes) — and joins them, exactly and at C speed, interlaced files
    included. Gray+alpha is decoded once as 32-bit ``RGBA``, i.e. the raw four bytes. For
    writing, :func:`encode_png` has a small vectorised PNG encoder for 16-bit colour.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

from .errors import InputError, OptionError, OutputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    Source = Union[str, "os.PathLike[str]", bytes]

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_PNG_COMPRESS_LEVEL", "IMAGE_SUFFIXES", "ARRAY_SUFFIXES",
    "MODES", "SCALES", "NORMALIZE_MODES", "STDIN", "Loaded", "read_input", "read_shape", "read_header",
    "is_supported", "to_display", "encode_png", "encode_tiff", "encode_npy", "write_atomic",
    "same_file", "montage", "format_map_rows",
]

#: Largest width×height decoded by default: Pillow's own ``Image.MAX_IMAGE_PIXELS``
#: (1024·1024·1024 // 4 // 3), i.e. about 256 MiB of 24-bit RGB.
DEFAULT_MAX_PIXELS = 89_478_485
#: zlib level for PNG output. Level 1 is about 5× faster than Pillow's default 6 on
#: feature maps for files ~15 % larger; it is also OpenCV's default. Batches of maps are
#: written far more often than they are archived.
DEFAULT_PNG_COMPRESS_LEVEL = 1
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp",
                            ".dib", ".webp", ".gif"})
ARRAY_SUFFIXES = frozenset({".npy", ".csv", ".txt"})
MODES = ("keep", "gray", "rgb", "rgba")
SCALES = ("raw", "unit")
NORMALIZE_MODES = ("minmax", "clip", "abs", "offset")
STDIN = "-"

_NPY_MAGIC = b"\x93NUMPY"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Pillow reports a damaged header as "cannot identify"; these say which format it was.
_IMAGE_MAGICS = ((_PNG_MAGIC, "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                 (b"RIFF", "WebP")) + tuple((magic, "TIFF") for magic in _TIFF_MAGICS)
# Pillow's rawmodes for 16-bit colour PNGs, and the unpacker that yields the low bytes.
_PNG16_LOW_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}
_LAYOUTS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


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


@dataclass(frozen=True)
class _Raw:
    """An input decoded to its native dtype (uint8/uint16/float), H×W×C, before --mode."""

    array: Any
    kind: str
    bit_depth: int | None


# --------------------------------------------------------------------------- reading


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
    name, _stem, path, data = _resolve_source(source)
    head = _head(name, path, data)
    if head.startswith(_NPY_MAGIC):
        return _npy_header(name, path, data)
    if path is None or path.suffix.lower() not in (".csv", ".txt", ".npy"):
        if head.startswith(_TIFF_MAGICS):
            shape = _tiff_header_shape(name, path, data)
            if shape is not None:
                return shape, "image"
        with _pillow_open(name, path, data) as im:
            if im is not None:
                return (im.size[1], im.size[0], _pillow_channels(im)), "image"
    raw = _read_raw(name, path, data, max_pixels=None)
    return tuple(raw.array.shape), raw.kind  # type: ignore[return-value]


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True if the file's suffix is one :func:`read_input` reads (for directory listings)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES


def _check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise OptionError(f"{option}: {value!r} is not one of {', '.join(choices)}")


def _resolve_source(source: Source) -> tuple[str, str, Path | None, bytes | None]:
    """(name, stem, path or None, bytes or None); standard input is read here, whole."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", "input", None, bytes(source)
    if os.fspath(source) == STDIN:
        return "<stdin>", "stdin", None, sys.stdin.buffer.read()
    path = Path(source)
    name = os.fspath(source)
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if path.is_dir():
        raise InputError(f"{name}: is a directory, not an image or array file")
    return name, path.stem, path, None


def _head(name: str, path: Path | None, data: bytes | None, size: int = 16) -> bytes:
    if data is not None:
        return data[:size]
    try:
        with open(path, "rb") as fh:  # type: ignore[arg-type]
            return fh.read(size)
    except OSError as err:
        raise InputError(f"{name}: cannot read: {err.strerror or err}") from None


def _read_bytes(name: str, path: Path | None, data: bytes | None) -> bytes:
    if data is not None:
        return data
    try:
        return path.read_bytes()  # type: ignore[union-attr]
    except OSError as err:
        raise InputError(f"{name}: cannot read: {err.strerror or err}") from None


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


# --- numeric arrays


def _array_shape(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], str]:
    """SPEC §1 shape rules for arrays: the (H, W, C) and kind, or InputError."""
    ndim = len(shape)
    if ndim == 0:
        raise InputError(f"{name}: holds a single number (a 0-D array); expected 1-D, 2-D or 3-D")
    if ndim > 3:
        hint = "; drop the batch axis (a[0])" if shape[0] == 1 else ""
        raise InputError(f"{name}: {ndim}-D array of shape {shape}; expected 1-D (L), 2-D (H, W) "
                         f"or 3-D (H, W, C){hint}")
    if 0 in shape:
        raise InputError(f"{name}: empty array of shape {shape}")
    if ndim == 1:
        return (1, shape[0], 1), "signal"
    if ndim == 2:
        if shape[0] == 1 or shape[1] == 1:
            return (1, shape[0] * shape[1], 1), "signal"
        return (shape[0], shape[1], 1), "array"
    return (shape[0], shape[1], shape[2]), "array"


def _read_npy(name: str, blob: bytes) -> _Raw:
    import numpy as np

    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{name}: cannot read .npy: {err}") from None
    kind_char = array.dtype.kind
    if kind_char not in "biuf":
        raise InputError(f"{name}: .npy of dtype {array.dtype}; expected numbers (bool, int, uint or float)")
    shape, kind = _array_shape(name, array.shape)
    bit_depth = array.dtype.itemsize * 8 if kind_char == "u" else None
    if kind_char == "b":
        array = array.astype(np.uint8)
    return _Raw(array.reshape(shape), kind, bit_depth)


def _npy_header(name: str, path: Path | None, data: bytes | None) -> tuple[tuple[int, int, int], str]:
    from numpy.lib import format as npformat

    fh = io.BytesIO(data) if data is not None else open(path, "rb")  # type: ignore[arg-type]
    try:
        with fh:
            version = npformat.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, _dtype = npformat.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _fortran, _dtype = npformat.read_array_header_2_0(fh)
            else:  # a format version without a public header reader: load it
                raw = _read_npy(name, _read_bytes(name, path, data))
                return tuple(raw.array.shape), raw.kind  # type: ignore[return-value]
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{name}: cannot read .npy header: {err}") from None
    return _array_shape(name, tuple(shape))


def _read_text(name: str, blob: bytes, *, comma: bool | None) -> _Raw:
    """A table of numbers: ``comma=True`` for .csv, None to use commas if there are any.

    Blank lines and ``#`` comments are skipped. Line and column numbers in messages are
    1-based, as an editor shows them.
    """
    import warnings

    import numpy as np

    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{name}: not a UTF-8 text file (byte {err.start})") from None
    if comma is None:
        comma = "," in text
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on empty input; we raise below
            table = np.loadtxt(io.StringIO(text), delimiter="," if comma else None, comments="#",
                               ndmin=2, dtype=np.float64)
    except ValueError as err:
        _diagnose_text(name, text, comma)
        raise InputError(f"{name}: cannot parse numbers: {err}") from None
    if table.size == 0:
        raise InputError(f"{name}: no numbers in the file")
    shape, kind = _array_shape(name, table.shape)
    return _Raw(table.reshape(shape), kind, None)


def _diagnose_text(name: str, text: str, comma: bool) -> None:
    """Find the first ragged row or non-numeric cell and raise its InputError.

    Runs only after numpy's fast parser failed, so its per-cell Python loop costs
    nothing on good files.
    """
    width = None
    first_line = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        cells = [cell.strip() for cell in content.split(",")] if comma else content.split()
        if width is None:
            width, first_line = len(cells), lineno
        elif len(cells) != width:
            raise InputError(f"{name}: ragged rows: line {lineno} has {len(cells)} values, "
                             f"line {first_line} has {width}")
        for column, cell in enumerate(cells, start=1):
            try:
                float(cell)
            except ValueError:
                what = "an empty cell" if not cell else f"{cell!r} is not a number"
                raise InputError(f"{name}: line {lineno}, column {column}: {what}") from None


# --- images


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


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{name}: {width}×{height} = {width * height:,} pixels is more than the limit "
                         f"of {max_pixels:,} (decompression-bomb guard); raise it with --max-pixels")


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
            raise InputError(f"{name}: cannot decode image ({type(err).__name__}: {err})") from None


def _pillow_array(im: Any, name: str, path: Path | None, data: bytes | None) -> _Raw:
    """Decode every pixel (``load`` forces it, so truncation is caught here)."""
    import numpy as np

    rawmode = _png_rawmode(im)
    if rawmode in _PNG16_LOW_RAWMODE:
        return _Raw(_png16_colour(im, rawmode, path, data), "image", 16)
    im.load()
    mode = im.mode
    if mode.startswith("I;16"):
        return _Raw(np.asarray(im).astype(np.uint16)[:, :, None], "image", 16)
    if mode in ("I", "F"):
        return _Raw(np.asarray(im).astype(np.float64 if mode == "I" else np.float32)[:, :, None],
                    "image", None)
    target = {"1": "L", "L": "L", "P": "RGBA" if "transparency" in im.info else "RGB", "PA": "RGBA",
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


# --- conversions


def _apply_mode(array: Any, bit_depth: int | None, mode: str, name: str) -> tuple[Any, int | None]:
    """``--mode`` on native values (integers stay integers, so gray matches Pillow)."""
    import numpy as np

    channels = array.shape[2]
    if mode == "keep":
        return array, bit_depth
    if channels > 4:
        raise InputError(f"{name}: --mode {mode} needs 1 to 4 channels (gray, gray+alpha, RGB, RGBA); "
                         f"the input has {channels}")
    color = array[:, :, :3] if channels >= 3 else array[:, :, :1]
    if mode == "gray":
        if channels < 3:
            return array[:, :, :1], bit_depth
        if array.dtype.kind == "u":
            rgb = color.astype(np.int64)
            luma = (rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000) >> 16
            return luma.astype(array.dtype)[:, :, None], bit_depth
        rgb = color.astype(np.float64)
        return (rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114)[:, :, None], bit_depth
    if channels < 3:
        color = np.repeat(color, 3, axis=2)
    if mode == "rgb":
        return color, bit_depth
    if channels in (2, 4):
        alpha = array[:, :, -1:]
    else:
        opaque = 2**bit_depth - 1 if bit_depth is not None else 1.0
        alpha = np.full(array.shape[:2] + (1,), opaque, dtype=array.dtype)
    return np.concatenate([color, alpha], axis=2), bit_depth


def _mode_name(channels: int, bit_depth: int | None) -> str:
    layout = _LAYOUTS.get(channels, f"{channels}-channel")
    if bit_depth == 8:
        return layout
    if bit_depth is None:
        return "F" if channels == 1 else f"{layout};F"
    return f"I;{bit_depth}" if channels == 1 else f"{layout};{bit_depth}"


def _check_finite(array: Any, name: str) -> None:
    import numpy as np

    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        y, x, c = (int(v) for v in bad[0])
        raise InputError(f"{name}: {len(bad)} non-finite values (NaN/Inf, or beyond float32's range), "
                         f"the first at row {y}, column {x}, channel {c}; convcli needs finite numbers")


# --------------------------------------------------------------------------- writing


def to_display(maps: Any, *, normalize: str = "minmax", bits: int = 8, name: str = "feature map") -> Any:
    """Map float values to pixels for a PNG (SPEC's ``--normalize`` modes).

    Parameters
    ----------
    maps : array_like
        One map (H, W) or one picture (H, W, C). A 3-D input is normalised as a whole (one
        min/max, one max|x|), so a depthwise RGB result keeps its colour balance; pass maps
        one at a time for per-map scaling.
    normalize : {'minmax', 'clip', 'abs', 'offset'}
        With ``top = 2**bits - 1``: ``minmax`` maps [min, max] to [0, top] (a constant map
        gives 0); ``clip`` keeps the values, clipped to [0, top]; ``abs`` maps |x| to
        [0, top] by its maximum (all zeros give 0); ``offset`` maps 0 to mid-grey and
        ±max|x| to 0 and top (all zeros give mid-grey: 128, or 32768 for 16 bits).
    bits : {8, 16}
        Output type: uint8 or uint16.
    name : str
        What an error message calls the map.

    Returns
    -------
    numpy.ndarray
        uint8 or uint16 of the input's shape. Values are ``rint(x·a + b)`` (half to
        even), with ``a`` and ``b`` computed in float64 and applied in float32.

    Raises
    ------
    OptionError
        Unknown ``normalize`` or ``bits``.
    OutputError
        NaN or Inf in the maps (they have no pixel value; use tiff or npy output).
    """
    import numpy as np

    values = np.asarray(maps, dtype=np.float32)
    if values.ndim < 2:
        values = values.reshape(1, -1)
    whole = values.reshape(values.shape[0], values.shape[1], -1)
    # One picture: its channels share one scale, so flatten them into a single plane.
    plane = whole.reshape(whole.shape[0], -1, 1)
    return to_display_planes(plane, normalize=normalize, bits=bits, names=[name])[0].reshape(values.shape)


def channel_extrema(array: Any) -> tuple[Any, Any]:
    """Each channel's (min, max) of a C-contiguous H×W×C array, in one vectorised sweep each.

    Reducing an (H·W, C) array over its long axis runs numpy's inner loop over only C
    values; viewing it as (H·W / k, k·C) rows makes the inner loop k·C long (3–4× faster).
    """
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1, array.shape[-1])
    channels = flat.shape[1]
    fold = max(1, 1024 // channels)
    whole = flat.shape[0] // fold * fold
    wide = flat[:whole].reshape(-1, fold * channels)
    low = wide.min(axis=0).reshape(fold, channels).min(axis=0) if whole else np.full(channels, np.inf, flat.dtype)
    high = wide.max(axis=0).reshape(fold, channels).max(axis=0) if whole else np.full(channels, -np.inf, flat.dtype)
    if whole < flat.shape[0]:
        low = np.minimum(low, flat[whole:].min(axis=0))
        high = np.maximum(high, flat[whole:].max(axis=0))
    return low, high


def to_display_planes(block: Any, *, normalize: str = "minmax", bits: int = 8,
                      names: Sequence[str] | None = None, low: Any = None, high: Any = None) -> Any:
    """:func:`to_display` of each channel of an H×W×k block on its own, as k contiguous planes.

    Returns uint8/uint16 of shape (k, H, W). The block may be a strided view of a layer's
    H×W×F output (``output[:, :, f0:f1]``): it is read once, band by band, instead of once
    per map, and each plane comes out contiguous for the PNG encoder.

    Each channel is mapped by ``rint(x·a + b)`` clipped to [0, top], with ``a`` and ``b``
    computed in float64 from the channel's min/max (or max|x|) and applied in float32.
    ``low`` and ``high``, when given, are the channels' minima and maxima, computed by the
    caller in one pass over a contiguous output (faster than reducing a strided view).
    """
    import numpy as np

    normalize = getattr(normalize, "value", normalize)
    _check_choice("--normalize", normalize, NORMALIZE_MODES)
    if bits not in (8, 16):
        raise OptionError(f"bits: expected 8 or 16, got {bits!r}")
    values = np.asarray(block)
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    height, width, count = values.shape
    dtype = np.uint8 if bits == 8 else np.uint16
    top = float(2**bits - 1)
    out = np.empty((count, height, width), dtype)
    if values.size == 0:
        out[...] = 0
        return out
    low = np.asarray(values.min(axis=(0, 1)) if low is None else low, dtype=np.float64)
    high = np.asarray(values.max(axis=(0, 1)) if high is None else high, dtype=np.float64)
    broken = ~(np.isfinite(low) & np.isfinite(high))
    if broken.any():
        channel = int(np.argmax(broken))
        plane = values[:, :, channel]
        bad = int(plane.size - np.isfinite(plane).sum())
        label = names[channel] if names is not None and channel < len(names) else f"map {channel}"
        raise OutputError(f"{label}: {bad} NaN/Inf values cannot be shown as pixels; use --format tiff or npy")
    absolute = False
    if normalize == "minmax":
        span = high - low
        scale = np.divide(top, span, out=np.zeros_like(span), where=span > 0)
        offset = -low * scale
    elif normalize == "clip":
        scale, offset = np.ones(count), np.zeros(count)
    else:
        peak = np.maximum(np.abs(low), np.abs(high))
        if normalize == "abs":
            absolute = True
            scale = np.divide(top, peak, out=np.zeros_like(peak), where=peak > 0)
            offset = np.zeros(count)
        else:  # offset: 0 at mid-grey, ±peak at the ends
            scale = np.divide(top / 2.0, peak, out=np.zeros_like(peak), where=peak > 0)
            offset = np.full(count, top / 2.0)
    scale32, offset32 = scale.astype(np.float32), offset.astype(np.float32)
    # x·a + b lies in [0, top] but for float32 rounding, at most (|x·a| + |b|)·2**-22; while
    # that is below ½, rint lands in [0, top] and the clip can be skipped (a third of the
    # time). Only ``clip`` and a minmax map whose range is tiny next to its values need it.
    reach = np.maximum(np.abs(low), np.abs(high)) * np.abs(scale) + np.abs(offset)
    need_clip = normalize == "clip" or bool(np.any(reach >= 2.0**20))
    band = max(1, (1 << 18) // max(1, width * count))  # ~1 MB of float32 at a time: stays in cache
    flat = values.flags.c_contiguous
    if flat:
        # Whole rows at once against the factors repeated along a row: broadcasting a short
        # (k,) vector makes numpy run an inner loop of k elements, several times slower.
        scale32, offset32 = np.tile(scale32, width), np.tile(offset32, width)
        scratch = np.empty((min(band, height), width * count), np.float32)
    for row in range(0, height, band):
        part = values[row:row + band]
        rows = part.shape[0]
        if flat:
            scaled = scratch[:rows]
            source = part.reshape(rows, width * count)
            if absolute:
                np.abs(source, out=scaled)
                scaled *= scale32
            else:
                np.multiply(source, scale32, out=scaled)
        else:
            scaled = np.abs(part) if absolute else part.copy()
            scaled *= scale32
        scaled += offset32
        np.rint(scaled, out=scaled)
        if need_clip:
            np.clip(scaled, 0.0, top, out=scaled)
        # Cast first: transposing 1- or 2-byte pixels moves a quarter of the bytes.
        pixels = scaled.astype(dtype).reshape(rows, width, count)
        out[:, row:row + rows, :] = np.moveaxis(pixels, 2, 0)
    return out


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
        zlib level 0..9; None is :data:`DEFAULT_PNG_COMPRESS_LEVEL` (1: fast).
    workers : int
        Threads that deflate the parts of a large image (see :func:`_deflate`). The
        bytes written do not depend on it.

    Notes
    -----
    Written here with numpy and zlib, not Pillow (which cannot write 16-bit colour and is
    2–3× slower at level 1): see :func:`_png_bytes` for the filters.

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
    """A PNG of H×W×C (C in 1..4) uint8/uint16 pixels, filtered and deflated with numpy + zlib.

    Fast levels (0–2) filter every row with PNG's Sub filter and deflate with zlib's RLE
    strategy — the recipe of fast PNG encoders: 2–3× faster than Pillow's level 1 at about
    the same size on feature maps, and zlib releases the GIL, so maps encode in parallel
    threads. Levels 3–9 pick, for each row, the filter (None, Sub, Up, Average or Paeth)
    that minimises the sum of absolute signed bytes — libpng's heuristic, computed for all
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
        strategy = zlib.Z_RLE
    else:
        scanlines = _adaptive_scanlines(rows, bpp)
        strategy = zlib.Z_DEFAULT_STRATEGY
    compressed = _deflate(scanlines.data, level, strategy, workers)
    step = 1 << 24  # several IDAT chunks keep each one well under PNG's 2**31 - 1 limit
    idats = b"".join(_png_chunk(b"IDAT", compressed[i:i + step]) for i in range(0, max(len(compressed), 1), step))
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, bits, color_type, 0, 0, 0)
    return _PNG_MAGIC + _png_chunk(b"IHDR", header) + idats + _png_chunk(b"IEND", b"")


_local = threading.local()


def _scanline_buffer(height: int, width: int) -> Any:
    """This thread's uint8 scratch for filtered scanlines, reused by every map it encodes.

    zlib copies what it compresses into its own output, so the buffer is free again when
    :func:`_png_bytes` returns; a fresh one per map costs its page faults every time
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


def _deflate(data: memoryview, level: int, strategy: int, workers: int = 1) -> bytes:
    """A zlib stream of ``data``, deflated in parts of :data:`DEFLATE_PART_BYTES` on ``workers`` threads.

    pigz's method: each part is raw deflate primed with the 32 KiB before it (so matches
    may reach back across the cut, as in one stream) and ends on a byte boundary with a
    sync flush; the last part ends the stream. The parts, between zlib's two-byte header
    and the Adler-32 of all the data, are one valid zlib stream. zlib releases the GIL,
    so the parts of one large map compress on several cores. The cuts depend on the size
    alone, so the bytes are the same whatever ``workers`` is.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    cuts = list(range(0, size, DEFLATE_PART_BYTES)) or [0]
    if len(cuts) == 1:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
        return compressor.compress(view) + compressor.flush()

    def part(k: int) -> bytes:
        start = cuts[k]
        end = cuts[k + 1] if k + 1 < len(cuts) else size
        primer = bytes(view[max(0, start - _WINDOW):start])
        compressor = (zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy, zdict=primer) if primer
                      else zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy))
        body = compressor.compress(view[start:end])
        return body + compressor.flush(zlib.Z_FINISH if end == size else zlib.Z_SYNC_FLUSH)

    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(cuts))) as pool:
            bodies = list(pool.map(part, range(len(cuts))))
    else:
        bodies = [part(k) for k in range(len(cuts))]
    # zlib header: deflate with a 32 KiB window (0x78), then the level hint and check bits.
    hint = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    cmf, flg = 0x78, hint << 6
    flg += 31 - ((cmf << 8) + flg) % 31
    return bytes((cmf, flg)) + b"".join(bodies) + struct.pack(">I", zlib.adler32(view))


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
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


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


def encode_npy(array: Any) -> bytes:
    """``.npy`` contents of ``array`` with its own dtype and shape (no pickling)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def _umask() -> int:
    # os.umask can only be read by setting it; done once, before any worker threads write.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never partial or corrupt.

    The bytes go to a unique temporary file in the same folder (``.NAME.XXXX.tmp``), which
    is then renamed over ``path`` (``os.replace``, atomic on POSIX and Windows). On any
    failure the temporary file is removed. The new file gets the usual permissions
    (0o666 minus the umask), or those of the file it replaces.

    Raises
    ------
    OutputError
        The folder is missing or not writable, the disk is full, ``path`` is a folder…
    """
    target = Path(path)
    folder = target.parent
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{target}: cannot write: {err.strerror or err}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(err, OSError):
            raise OutputError(f"{target}: cannot write: {err.strerror or err}") from None
        raise


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True if ``a`` and ``b`` name the same file (hard links and symlinks included).

    ``os.path.samefile`` when both exist, else a comparison of the resolved paths.
    Standard input/output (``"-"``) is never the same file as anything.
    """
    if os.fspath(a) == STDIN or os.fspath(b) == STDIN:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


# --------------------------------------------------------------------------- montage, printing

_MONTAGE_BACKGROUND = (64, 64, 64)
_MONTAGE_TEXT = (235, 235, 235)
_MONTAGE_PAD = 8
_MONTAGE_MIN_TILE = 96  # small maps (the seeds' 6×6) are enlarged to at least this, pixelated


def montage(maps: Sequence[Any], labels: Sequence[str], *, columns: int | None = None,
            compress_level: int | None = None) -> bytes:
    """A PNG grid of maps, each labelled underneath, on a dark grey background.

    Parameters
    ----------
    maps : sequence of numpy.ndarray
        uint8 tiles, (H, W) gray or (H, W, C) with C = 1, 3 or 4 (alpha is ignored). Tiles
        smaller than 96 pixels are enlarged by the same whole factor, nearest-neighbour,
        so every pixel stays a visible square.
    labels : sequence of str
        One label per map, drawn with Pillow's default font; shortened with "…" if wider
        than 240 pixels or the tile.
    columns : int or None
        Grid width; None: ``ceil(sqrt(len(maps)))``.

    Raises
    ------
    ValueError
        No maps, a label count that differs from the map count, or a tile that is not
        uint8 gray/RGB(A).
    """
    import math

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if not maps or len(maps) != len(labels):
        raise ValueError(f"montage: need one label per map, got {len(maps)} maps and {len(labels)} labels")
    tiles = []
    for tile in maps:
        tile = np.asarray(tile)
        if tile.dtype != np.uint8 or tile.ndim not in (2, 3) or (tile.ndim == 3 and tile.shape[2] not in (1, 3, 4)):
            raise ValueError(f"montage: tiles must be uint8 (H, W) or (H, W, 1|3|4), got {tile.dtype} {tile.shape}")
        tiles.append(np.repeat(tile[:, :, :1], 3, axis=2) if tile.ndim == 3 and tile.shape[2] == 1
                     else tile[:, :, :3] if tile.ndim == 3 else np.repeat(tile[:, :, None], 3, axis=2))
    zoom = max(1, math.ceil(_MONTAGE_MIN_TILE / max(max(t.shape[:2]) for t in tiles)))
    if zoom > 1:
        tiles = [np.repeat(np.repeat(t, zoom, axis=0), zoom, axis=1) for t in tiles]
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tile_w = max(t.shape[1] for t in tiles)
    tile_h = max(t.shape[0] for t in tiles)
    max_label_w = max(tile_w, 240)
    texts = [_fit_label(str(label), font, measure, max_label_w) for label in labels]
    text_w = max(measure.textlength(text, font=font) for text in texts)
    ascent_box = measure.textbbox((0, 0), "Ag…", font=font)
    text_h = ascent_box[3] - ascent_box[1]
    cell_w = int(max(tile_w, math.ceil(text_w)))
    cell_h = tile_h + 4 + text_h
    count = len(tiles)
    cols = columns if columns else math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    pad = _MONTAGE_PAD
    canvas = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, rows * cell_h + (rows + 1) * pad),
                       _MONTAGE_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, (tile, text) in enumerate(zip(tiles, texts)):
        row, col = divmod(index, cols)
        x0 = pad + col * (cell_w + pad)
        y0 = pad + row * (cell_h + pad)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x0 + (cell_w - tile.shape[1]) // 2, y0))
        width = measure.textlength(text, font=font)
        draw.text((x0 + (cell_w - width) / 2, y0 + tile_h + 4 - ascent_box[1]), text, font=font,
                  fill=_MONTAGE_TEXT)
    return encode_png(np.asarray(canvas), compress_level=compress_level)


def _fit_label(text: str, font: Any, measure: Any, limit: float) -> str:
    if measure.textlength(text, font=font) <= limit:
        return text
    while len(text) > 1 and measure.textlength(text + "…", font=font) > limit:
        text = text[:-1]
    return text + "…"


def format_map_rows(map2d: Any) -> list[str]:
    """Each row of a map as the seeds print it: ``[0.0, 0.0, 3.0, 3.0, 0.0, 0.0]``.

    Each value is written as numpy prints a scalar of the map's dtype, which for float32
    is the shortest text that reads back as the same float32 (``0.1``, not
    ``0.10000000149011612``) — what the seeds' ``print([yhat[0, r, c, 0] ...])`` showed
    — and for float64 is Python's float repr. ``-0.0`` is printed as ``0.0``.

    Returns
    -------
    list of str
        One string per row (H strings for an (H, W) map).

    Raises
    ------
    ValueError
        ``map2d`` is not 2-D.
    """
    import numpy as np

    values = np.asarray(map2d)
    if values.ndim != 2:
        raise ValueError(f"format_map_rows: expected a 2-D map, got shape {values.shape}")
    values = values + values.dtype.type(0)  # -0.0 + 0.0 == +0.0, as TensorFlow's sums give
    return ["[" + ", ".join(map(str, row)) + "]" for row in values]
