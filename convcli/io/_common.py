"""What every reader shares: input names, magic numbers, the raw decoded form, checks.

Private to :mod:`convcli.io` (underscored names here are used across its modules, not
outside the package). Nothing heavy is imported.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from ..errors import InputError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    Source = Union[str, "os.PathLike[str]", bytes]

#: Largest width×height decoded by default: Pillow's own ``Image.MAX_IMAGE_PIXELS``
#: (1024·1024·1024 // 4 // 3), i.e. about 256 MiB of 24-bit RGB.
DEFAULT_MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp",
                            ".dib", ".webp", ".gif"})
ARRAY_SUFFIXES = frozenset({".npy", ".csv", ".txt"})
MODES = ("keep", "gray", "rgb", "rgba")
SCALES = ("raw", "unit")
STDIN = "-"
_NPY_MAGIC = b"\x93NUMPY"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Pillow reports a damaged header as "cannot identify"; these say which format it was.
_IMAGE_MAGICS = ((_PNG_MAGIC, "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                 (b"RIFF", "WebP")) + tuple((magic, "TIFF") for magic in _TIFF_MAGICS)


@dataclass(frozen=True)
class _Raw:
    """An input decoded to its native dtype (uint8/uint16/float), H×W×C, before --mode."""

    array: Any
    kind: str
    bit_depth: int | None


def _check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise OptionError(f"{option}: {value!r} is not one of {', '.join(choices)}")


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None, channels: int = 1) -> None:
    """The decompression-bomb guard: at most ``max_pixels`` pixels, and of more than 4 channels
    (a TIFF's SamplesPerPixel) at most the samples of ``max_pixels`` RGBA pixels."""
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{name}: {width}×{height} = {width * height:,} pixels is more than the limit "
                         f"of {max_pixels:,} (decompression-bomb guard); raise it with --max-pixels")
    samples = width * height * channels
    if max_pixels is not None and channels > 4 and samples > 4 * max_pixels:
        raise InputError(f"{name}: {width}×{height} pixels of {channels:,} samples = {samples:,} samples is more "
                         f"than the {4 * max_pixels:,} of the pixel limit's RGBA pixels (decompression-bomb "
                         "guard); raise it with --max-pixels")


def _resolve_source(source: Source) -> tuple[str, str, Path | None, bytes | None]:
    """(name, stem, path or None, bytes or None); standard input is read here, whole."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", "input", None, bytes(source)
    if os.fspath(source) == STDIN:
        return "<stdin>", "stdin", None, sys.stdin.buffer.read()
    from .._paths import check_regular_file

    path = Path(source)
    name = os.fspath(source)
    # A FIFO, device or socket would block or never end: refused before it is opened, as is a
    # name too long for the file system (Path.exists raises on one).
    check_regular_file(path, InputError, what="image or array file")
    if not os.path.exists(path):
        raise InputError(f"{name}: no such file")
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


def _array_shape(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], str]:
    """SPEC §1 shape rules for arrays: the (H, W, C) and kind, or InputError."""
    ndim = len(shape)
    if ndim == 0:
        raise InputError(f"{name}: holds a single number (a 0-D array); expected 1-D, 2-D or 3-D")
    if ndim > 3:
        hint = "; drop the batch axis (a[0])" if shape[0] == 1 else ""
        raise InputError(f"{name}: {ndim}-D array of shape {shape}; expected 1-D (L), 2-D (H, W) "
                         f"or 3-D (H, W, C){hint}")
    if any(side < 0 for side in shape):  # a .npy header may say so; numpy's header reader lets it through
        raise InputError(f"{name}: corrupt array header: a negative size in its shape {shape}")
    if 0 in shape:
        raise InputError(f"{name}: empty array of shape {shape}")
    if ndim == 1:
        return (1, shape[0], 1), "signal"
    if ndim == 2:
        if shape[0] == 1 or shape[1] == 1:
            return (1, shape[0] * shape[1], 1), "signal"
        return (shape[0], shape[1], 1), "array"
    return (shape[0], shape[1], shape[2]), "array"
