"""Sources that read a band of rows, sinks that take bands in order: the two protocols of streaming.

A **source** (:class:`BandSource`, made by :func:`open_source`) knows the (H, W, C) and
dtype of an input after ``--mode``/``--scale`` and reads any band of rows
(:meth:`BandSource.read_rows`), converted exactly as :func:`~convcli.io.read.read_input`
converts the whole image, so a band is the same numbers as the same rows of the whole.
Behind it sits a format's **region reader** (:class:`RegionReader`): tiled or striped
TIFF/BigTIFF (:class:`convcli.io.tiff.TiffRegionReader`, only the tiles or strips asked
for are read), ``.npy`` (:class:`convcli.io.npy.NpyRegionReader`, a memory map), zarr
(:class:`convcli.io.zarr_array.ZarrRegionReader`); other formats are decoded whole at
their stored depth (uint8/uint16, :class:`ArrayReader`) and converted band by band.

A **sink** (:class:`Sink`) writes one output file: :meth:`~Sink.write` takes bands of
rows in order (from row 0, without gaps), :meth:`~Sink.commit` puts the file in place
under its final name (temporary file + rename) and :meth:`~Sink.discard` removes what
was written. The sinks are :class:`convcli.io.tiff.TiffSink` (tiled BigTIFF, float32),
:class:`convcli.io.npy.NpySink` (``numpy.lib.format.open_memmap``),
:class:`convcli.io.zarr_array.ZarrSink` and :class:`convcli.io.png.PngSink` (the
project's own encoder, row by row; byte for byte the file the whole-image path writes).
:class:`Sinks` commits or discards several as one.

Both are plain objects built from paths and numbers, so they can be opened inside any
process (a batch worker, a dask task): a task holding ``(input path, rows)`` opens the
source, reads its rows, and returns its band (:func:`convcli.streaming.compute_band`).
:class:`~convcli.io.npy.NpySink` and :class:`~convcli.io.zarr_array.ZarrSink` also take a
band at any place (``write_at(start, band)``), so bands computed out of order (or, for
zarr bands on chunk boundaries, in other processes) can be written where they belong.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError, OutputError
from ._common import _NPY_MAGIC, _TIFF_MAGICS, DEFAULT_MAX_PIXELS, MODES, SCALES, _check_choice, _check_pixels, _Raw

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


class RegionReader(Protocol):
    """A file's pixels at their stored type, read by bands of rows.

    ``shape`` is (H, W, C) as SPEC §1 gives it; ``kind`` is image, array or signal;
    ``bit_depth`` 8/16 for unsigned integers, None for other data. A reader need not be
    safe to call from two threads at once: :class:`BandSource` reads one band at a time.
    """

    shape: tuple[int, int, int]
    kind: str
    bit_depth: int | None
    dtype: Any

    def read(self, start: int, stop: int) -> "np.ndarray":
        """Rows [start, stop) as a (stop − start, W, C) array of the stored dtype."""

    def close(self) -> None:
        """Release the file."""


class Sink(Protocol):
    """One output file written band by band, then committed under its name or discarded."""

    path: Path

    def write(self, band: "np.ndarray") -> None:
        """The next rows of the output, (rows, W) or (rows, W, C), in order."""

    def commit(self) -> None:
        """Finish the file and rename it to :attr:`path` (raises OutputError if it cannot)."""

    def discard(self) -> None:
        """Remove everything written so far (never raises)."""


class ArrayReader:
    """A decoded array held at its stored depth (a PNG, JPEG, … decoded whole, or a table)."""

    def __init__(self, raw: _Raw) -> None:
        self.array = raw.array
        self.shape = tuple(int(v) for v in raw.array.shape)
        self.kind = raw.kind
        self.bit_depth = raw.bit_depth
        self.dtype = raw.array.dtype

    def read(self, start: int, stop: int):
        return self.array[start:stop]

    def close(self) -> None:
        self.array = None


class BandSource:
    """An input read band by band and converted as :func:`~convcli.io.read.read_input` does.

    Attributes
    ----------
    name, stem, kind, bit_depth, mode
        As :class:`~convcli.io.read.Loaded` has them.
    shape : (H, W, C)
        After ``--mode``.
    streams : bool
        True when the rows come from the file region by region (TIFF, ``.npy``, zarr);
        False when the file was decoded whole at its stored depth.
    """

    def __init__(self, reader: RegionReader, *, name: str, stem: str, mode: str = "keep", scale: str = "raw",
                 keep_integers: bool = False, streams: bool = True) -> None:
        import numpy as np

        from .modes import _mode_name

        self.reader = reader
        # Readers keep a file position and their last row of tiles: one read at a time (the
        # stream's read-ahead thread and the rows a circular border reads off the stream).
        self._lock = threading.Lock()
        self.name, self.stem = name, stem
        self.kind = reader.kind
        self.mode_option, self.scale = mode, scale
        self.streams = streams
        h, w, c = reader.shape
        probe = np.zeros((1, 1, c), dtype=reader.dtype)
        converted, bit_depth = self._convert(probe)
        self.bit_depth = bit_depth
        self.dtype = converted.dtype
        # Integers are kept where the engine sums channels as integers: more than one channel
        # (one channel is converted here, the same values, as the rows are read).
        self._keep = (keep_integers and scale == "raw" and converted.shape[2] > 1
                      and self._mode_dtype(probe).dtype in (np.uint8, np.uint16))
        if not self._keep:
            self.dtype = np.dtype(np.float32)
        self.shape = (h, w, int(converted.shape[2]))
        self.mode = _mode_name(self.shape[2], bit_depth)

    def _mode_dtype(self, block):
        return self._convert(block)[0]

    def _convert(self, block):
        """``--mode`` on stored values, as :func:`~convcli.io.read.read_input` applies it (pixel by pixel)."""
        from .modes import _apply_mode

        return _apply_mode(block, self.reader.bit_depth, self.mode_option, self.name)

    def read_rows(self, start: int, stop: int):
        """Rows [start, stop) after ``--mode``/``--scale``: float32 (uint8/uint16 with ``keep_integers``)."""
        import numpy as np

        h = self.shape[0]
        if not 0 <= start < stop <= h:
            raise ValueError(f"rows: expected 0 <= start < stop <= {h}, got {start}, {stop}")
        with self._lock:
            raw = np.asarray(self.reader.read(start, stop))
        if raw.dtype.kind == "b":
            raw = raw.astype(np.uint8)
        array, bit_depth = self._convert(raw)
        if self._keep:
            return np.ascontiguousarray(array)
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes Inf, refused just below
            out = array.astype(np.float32)
        if self.scale == "unit" and bit_depth is not None:
            out /= np.float32(2**bit_depth - 1)
        if array.dtype.kind == "f":
            _check_finite_band(out, self.name, start)
        return np.ascontiguousarray(out)

    def close(self) -> None:
        with self._lock:
            self.reader.close()

    def __enter__(self) -> "BandSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_finite_band(array, name: str, first_row: int) -> None:
    import numpy as np

    finite = np.isfinite(array)
    if not finite.all():
        y, x, c = (int(v) for v in np.argwhere(~finite)[0])
        raise InputError(f"{name}: non-finite values (NaN/Inf, or beyond float32's range), the first at row "
                         f"{y + first_row}, column {x}, channel {c}; convcli needs finite numbers")


def region_reader_kind(source: str | os.PathLike[str]) -> str | None:
    """``tiff``, ``npy`` or ``zarr`` when :func:`open_source` reads ``source`` by region, else None."""
    path = Path(source)
    found = _region_reader(os.fspath(source), path, probe=True)
    if found is None:
        return None
    if os.path.isdir(path):
        return "zarr"
    with open(path, "rb") as fh:
        return "npy" if fh.read(6) == _NPY_MAGIC else "tiff"


def _region_reader(name: str, path: Path, *, probe: bool = False):
    """The format's region reader for ``path``, or None when it must be decoded whole."""
    if os.path.isdir(path):  # False, not an error, for a name too long
        from .zarr_array import ZarrRegionReader, is_zarr

        if is_zarr(path):
            return True if probe else ZarrRegionReader(name, path)
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if head.startswith(_NPY_MAGIC):
        from .npy import NpyRegionReader

        return True if probe else NpyRegionReader(name, path)
    if head.startswith(_TIFF_MAGICS):
        from .tiff import TiffRegionReader

        if probe:
            return True if TiffRegionReader.supports(path) else None
        return TiffRegionReader(name, path) if TiffRegionReader.supports(path) else None
    return None


def open_source(source: str | os.PathLike[str], *, mode: str = "keep", scale: str = "raw",
                keep_integers: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                memory_limit: int | None = None) -> BandSource:
    """An input as a :class:`BandSource`: by regions when its format allows, else decoded whole.

    ``max_pixels`` guards the formats decoded whole (decompression bombs); for
    region-readable files ``memory_limit`` governs instead. A file decoded whole whose
    stored pixels alone exceed ``memory_limit`` bytes is refused before it is decoded.

    Raises
    ------
    InputError
        As :func:`~convcli.io.read.read_input`; or the decoded pixels would not fit.
    OptionError
        ``mode`` or ``scale`` not one of their names.
    """
    from .._budget import format_bytes
    from ._common import _resolve_source
    from .read import _read_raw, read_header

    _check_choice("--mode", mode, MODES)
    _check_choice("--scale", scale, SCALES)
    name = os.fspath(source)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{name}: no such file")
    reader = _region_reader(name, path)
    if reader is not None:
        return BandSource(reader, name=name, stem=path.stem, mode=mode, scale=scale, keep_integers=keep_integers)
    if memory_limit is not None:
        (h, w, c), _kind = read_header(source)
        if _kind == "image":  # the decompression-bomb guard first, as read_input has it
            _check_pixels(name, w, h, max_pixels)
        stored = h * w * c * stored_sample_bytes(source)
        if stored > memory_limit:
            raise InputError(
                f"{name}: its {w}×{h}×{c} pixels take {format_bytes(stored)} decoded, more than the "
                f"{format_bytes(memory_limit)} memory limit, and this format is decoded whole; convert it to a tiled "
                f"TIFF (e.g. vips tiffsave {name} {path.stem}.tif --tile --bigtiff) or raise --memory-limit")
    name, stem, rpath, data = _resolve_source(source)
    raw = _read_raw(name, rpath, data, max_pixels=max_pixels)
    return BandSource(ArrayReader(raw), name=name, stem=stem, mode=mode, scale=scale, keep_integers=keep_integers,
                      streams=False)


def stored_sample_bytes(source: str | os.PathLike[str]) -> int:
    """Bytes per sample the input is held at when decoded (1 for 8-bit images, 2 for 16-bit, …).

    From the header: the TIFF's or ``.npy``'s sample type, Pillow's mode, 8 for tables.
    """
    path = Path(source)
    name = os.fspath(source)
    if path.suffix.lower() in (".csv", ".txt"):
        return 8
    reader = None
    try:
        reader = _region_reader(name, path)
        if reader is not None:
            return int(reader.dtype.itemsize)
    except Exception:  # noqa: BLE001 - the reading itself reports it
        return 1
    finally:
        if reader is not None:
            reader.close()
    from .pillow import _pillow_open

    try:
        with _pillow_open(name, path, None) as im:
            if im is not None and "16" in im.mode:
                return 2
            if im is not None and im.mode in ("I", "F"):
                return 8
    except InputError:
        return 1
    return 1


def parse_size(text: str, option: str = "--memory-limit") -> int:
    """``512MiB``, ``2GiB``, ``1.5G``, ``300MB``, ``1000000`` (bytes) → bytes.

    Binary (KiB, MiB, GiB, TiB; also K, M, G, T) and decimal (kB, MB, GB, TB) units.

    Raises
    ------
    OptionError
        Not a size, or not positive.
    """
    import re

    from ..errors import OptionError

    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
             "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    from .._text import shorten

    text = str(text)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise OptionError(f"{option}: {shorten(text)} is not a size; write it like 512MiB, 2GiB or 300MB")
    value = float(match.group(1)) * units[match.group(2).lower()]
    if not value < 1 << 60:  # also inf, from thousands of digits
        raise OptionError(f"{option}: {shorten(text)} is too large (at most 1024 PiB)")
    size = int(value)
    if size <= 0:
        raise OptionError(f"{option}: {shorten(text)} must be more than 0 bytes")
    return size


# --------------------------------------------------------------------------- sinks


def temporary_path(path: Path, *, directory: bool = False) -> Path:
    """A new unique ``.NAME.PID-XXXXXXXX.tmp`` next to ``path`` (a batch sweeps these once PID is gone)."""
    folder = path.parent
    try:
        if directory:
            return Path(tempfile.mkdtemp(dir=folder, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp"))
        descriptor, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    except OSError as err:
        raise OutputError.from_os(str(path), err) from None
    os.close(descriptor)
    return Path(name)


def put_in_place(temporary: Path, path: Path) -> None:
    """Rename ``temporary`` to ``path`` with the permissions :func:`~convcli.io.atomic.write_atomic` gives.

    A folder (a zarr array) replaces an existing folder of that name only after the new one
    is complete: the old one is moved aside first and removed afterwards.
    """
    import shutil

    from .atomic import _umask, give_mode_of

    try:
        if temporary.is_dir():
            os.chmod(temporary, 0o777 & ~_umask())
            if path.is_dir() and not path.is_symlink():
                aside = temporary_path(path, directory=True)
                os.rmdir(aside)
                os.replace(path, aside)
                os.replace(temporary, path)
                shutil.rmtree(aside, ignore_errors=True)
                return
        else:
            give_mode_of(temporary, path)
        os.replace(temporary, path)
    except OSError as err:
        raise OutputError.from_os(str(path), err) from None


def remove_quietly(path: Path | None) -> None:
    """Remove a temporary file or folder; never raises."""
    import shutil

    if path is None:
        return
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


class Sinks:
    """Several sinks written together and committed as one (or all discarded).

    Use as a context manager: leaving the block with an exception (a failed write,
    Ctrl-C) discards every sink; :meth:`commit` commits them all.
    """

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = list(sinks)
        self._done = False

    def commit(self) -> None:
        try:
            for sink in self.sinks:
                sink.commit()
        except BaseException:
            self.discard()
            raise
        self._done = True

    def discard(self) -> None:
        for sink in self.sinks:
            sink.discard()
        self._done = True

    def __enter__(self) -> "Sinks":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if not self._done:
            self.discard()


__all__ = ["RegionReader", "Sink", "ArrayReader", "BandSource", "open_source", "region_reader_kind", "Sinks",
           "stored_sample_bytes",
           "parse_size", "temporary_path", "put_in_place", "remove_quietly"]
