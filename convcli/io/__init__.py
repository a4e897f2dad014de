"""Files ⇄ arrays: images and numeric arrays in, feature maps out.

One module per concern, so a file's name says what it holds:

========================  ==============================================================
:mod:`.read`              :func:`read_input`, :func:`read_shape`, :func:`read_header`:
                          any input, dispatched on its content to the format modules
:mod:`.bands`             streaming: sources that read a band of rows, sinks that take
                          bands and commit atomically; ``--memory-limit`` sizes
:mod:`.npy`               ``.npy`` arrays, read and written (whole, or by rows)
:mod:`.text`              ``.csv``/``.txt`` tables read; maps printed as rows of numbers
:mod:`.tiff`              TIFF read through tifffile (whole, or tile by tile); float32 TIFF
                          written (whole, or as a tiled BigTIFF band by band)
:mod:`.zarr_array`        zarr arrays read by rows; ``--format zarr`` written by bands
:mod:`.spng`              PNG read through libspng, for the kinds where it beats Pillow
:mod:`.pillow`            PNG, JPEG, BMP, WebP, GIF read through Pillow (16-bit colour PNG)
:mod:`.png`               how PNGs are written: the project's own encoder (whole, or row by row)
:mod:`.deflate`           the deflate library PNG output uses (ISA-L, else zlib)
:mod:`.modes`             ``--mode`` conversions, layout names, the finite check
:mod:`.display`           ``--normalize``: float maps to uint8/uint16 pixels
:mod:`.montage`           ``--montage``: a labelled grid of maps
:mod:`.atomic`            writes that never leave a partial file; same-file checks
========================  ==============================================================

Nothing heavy is imported at module level: numpy, Pillow, pyspng, isal and tifffile load
inside the functions that use them, so ``convcli --help`` and ``convcli shape`` stay fast. The names
below are the package's public API; underscored names are private to the package.
"""

from __future__ import annotations

from ._common import ARRAY_SUFFIXES, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, MODES, SCALES, STDIN
from .atomic import claim, make_folder, same_file, sweep_stale, write_atomic
from .display import NORMALIZE_MODES, channel_extrema, to_display, to_display_planes
from .montage import montage
from .npy import encode_npy
from .png import DEFAULT_PNG_COMPRESS_LEVEL, encode_png
from .read import Loaded, is_supported, read_header, read_input, read_shape
from .text import format_map_rows
from .tiff import encode_tiff

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_PNG_COMPRESS_LEVEL", "IMAGE_SUFFIXES", "ARRAY_SUFFIXES",
    "MODES", "SCALES", "NORMALIZE_MODES", "STDIN", "Loaded", "read_input", "read_shape", "read_header",
    "is_supported", "to_display", "to_display_planes", "channel_extrema", "encode_png", "encode_tiff",
    "encode_npy", "write_atomic", "make_folder", "sweep_stale", "claim", "same_file", "montage", "format_map_rows",
]
