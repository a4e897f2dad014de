"""Zarr arrays (format 3): read by bands of rows, and ``--format zarr`` written by bands.

An input may be a zarr array folder (``photo.zarr``) holding an (H, W), (H, W, C) or
(L,) array of numbers; only the chunks of the rows asked for are read. ``--format zarr``
writes one ``{stem}.zarr`` array H×W×F float32 per input (as ``npy`` holds it), chunked
by bands of rows across the whole width, under a temporary folder name that
:meth:`ZarrSink.commit` renames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError
from ._common import _array_shape

#: Bytes of one chunk of a written array (about; whole rows, all the maps).
CHUNK_BYTES = 8 << 20
#: Most rows of one chunk.
CHUNK_MAX_ROWS = 256


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr array folder (format 3 ``zarr.json`` or format 2 ``.zarray``)."""
    return (Path(path) / "zarr.json").is_file() or (Path(path) / ".zarray").is_file()


class ZarrRegionReader:
    """A zarr array read by bands of rows (see the module docstring)."""

    def __init__(self, name: str, path: Path) -> None:
        import numpy as np
        import zarr

        self.name = name
        try:
            array = zarr.open_array(store=str(path), mode="r")
        except Exception as err:  # noqa: BLE001 - zarr raises many kinds
            raise InputError(f"{name}: cannot read the zarr array: {err}") from None
        kind_char = np.dtype(array.dtype).kind
        if kind_char not in "biuf":
            raise InputError(f"{name}: zarr array of dtype {array.dtype}; expected numbers")
        self.shape, self.kind = _array_shape(name, tuple(array.shape))
        self.bit_depth = np.dtype(array.dtype).itemsize * 8 if kind_char == "u" else None
        self.dtype = np.dtype(np.uint8) if kind_char == "b" else np.dtype(array.dtype)
        self._array = array

    def read(self, start: int, stop: int) -> Any:
        import numpy as np

        h, w, c = self.shape
        array = self._array
        try:
            if array.ndim == 1:
                block = np.asarray(array[:])
            elif self.kind == "signal":  # a (1, L) or (L, 1) table: one row
                block = np.asarray(array[...])
            else:
                block = np.asarray(array[start:stop])
        except Exception as err:  # noqa: BLE001
            raise InputError(f"{self.name}: cannot read rows {start}–{stop}: {err}") from None
        block = block.reshape(stop - start, w, c)
        return block.astype(np.uint8) if block.dtype.kind == "b" else block

    def close(self) -> None:
        self._array = None


def chunk_rows(shape: tuple[int, ...]) -> int:
    """Rows of one chunk of an output array of ``shape``: about :data:`CHUNK_BYTES`, whole rows."""
    row = 4 * shape[1] * (shape[2] if len(shape) > 2 else 1)
    return max(1, min(shape[0], CHUNK_MAX_ROWS, CHUNK_BYTES // max(1, row)))


class ZarrSink:
    """``--format zarr``: an H×W×F float32 zarr array written band by band.

    Bands are gathered into whole chunks of rows (:func:`chunk_rows`) before they are
    stored, so no chunk is written twice.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        import numpy as np
        import zarr

        from .bands import temporary_path

        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self._temporary: Path | None = temporary_path(self.path, directory=True)
        self._chunk = chunk_rows(self.shape)
        try:
            self._array = zarr.create_array(store=str(self._temporary), shape=self.shape,
                                            chunks=(self._chunk,) + self.shape[1:], dtype="float32",
                                            zarr_format=3, overwrite=True)
        except Exception as err:  # noqa: BLE001
            self.discard()
            raise OutputError(f"{self.path}: cannot write the zarr array: {err}") from None
        self._buffer = np.empty((self._chunk,) + self.shape[1:], np.float32)
        self._filled = 0
        self._rows = 0

    def _store(self, rows: int) -> None:
        start = self._rows - rows
        try:
            self._array[start:self._rows] = self._buffer[:rows]
        except OSError as err:
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        except Exception as err:  # noqa: BLE001
            raise OutputError(f"{self.path}: cannot write the zarr array: {err}") from None

    def write(self, band) -> None:
        band = band.reshape((band.shape[0],) + self.shape[1:])
        taken = 0
        while taken < band.shape[0]:
            count = min(self._chunk - self._filled, band.shape[0] - taken)
            self._buffer[self._filled:self._filled + count] = band[taken:taken + count]
            self._filled += count
            self._rows += count
            taken += count
            if self._filled == self._chunk:
                self._store(self._filled)
                self._filled = 0

    def commit(self) -> None:
        from .bands import put_in_place

        if self._rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self._rows} rows written of {self.shape[0]}")
        try:
            if self._filled:
                self._store(self._filled)
                self._filled = 0
        except BaseException:
            self.discard()
            raise
        put_in_place(self._temporary, self.path)
        self._temporary = None

    def discard(self) -> None:
        from .bands import remove_quietly

        remove_quietly(self._temporary)
        self._temporary = None
