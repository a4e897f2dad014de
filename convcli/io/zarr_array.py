"""Zarr arrays (format 3): read by bands of rows, and ``--format zarr`` written by bands.

An input may be a zarr array folder (``photo.zarr``) holding an (H, W), (H, W, C) or
(L,) array of numbers; only the chunks of the rows asked for are read. ``--format zarr``
writes one ``{stem}.zarr`` array H×W×F float32 per input (as ``npy`` holds it), chunked
by bands of rows (at most 4096 columns a chunk, all the maps), under a temporary folder name that
:meth:`ZarrSink.commit` renames.
"""

from __future__ import annotations

import os
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
    return any(os.path.isfile(os.path.join(path, name)) for name in ("zarr.json", ".zarray"))


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


def write_error(path: Path, err: BaseException) -> OutputError:
    """The error of a failed zarr write: the OS's reason and number (ENOSPC stops a batch), or zarr's."""
    if isinstance(err, OSError):
        return OutputError.from_os(str(path), err)
    return OutputError(f"{path}: cannot write the zarr array: {err}")


#: Most columns of one chunk: a row of chunks is then several chunks, which zarr
#: compresses on its threads at once.
CHUNK_MAX_COLUMNS = 4096


class ZarrSink:
    """``--format zarr``: an H×W×F float32 zarr array written band by band.

    Bands are gathered into whole rows of chunks (:func:`chunk_rows` rows, at most
    :data:`CHUNK_MAX_COLUMNS` columns) before they are stored, so no chunk is written
    twice; a thread of its own stores each row of chunks (zarr compresses them) while the
    next bands are computed, with at most one row of chunks waiting for it.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        import queue
        import threading

        import numpy as np
        import zarr

        from .bands import temporary_path

        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self._temporary: Path | None = temporary_path(self.path, directory=True)
        self._chunk = chunk_rows(self.shape)
        self._thread: threading.Thread | None = None
        try:
            self._array = zarr.create_array(store=str(self._temporary), shape=self.shape,
                                            chunks=(self._chunk, min(self.shape[1], CHUNK_MAX_COLUMNS))
                                            + self.shape[2:], dtype="float32", zarr_format=3, overwrite=True)
        except Exception as err:  # noqa: BLE001
            self.discard()
            raise write_error(self.path, err) from None
        self._buffer = np.empty((self._chunk,) + self.shape[1:], np.float32)
        self._free: queue.Queue = queue.Queue()
        self._free.put(np.empty_like(self._buffer))
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._filled = 0
        self._rows = 0
        self._thread = threading.Thread(target=self._run, name="convcli-zarr-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            start, rows, buffer = item
            try:
                if self._error is None:
                    self._array[start:start + rows] = buffer[:rows]
            except BaseException as err:  # noqa: BLE001 - reported by write() or commit()
                self._error = err
            self._free.put(buffer)

    def _check(self) -> None:
        err = self._error
        if err is not None:
            raise write_error(self.path, err) from None

    def _store(self, rows: int) -> None:
        self._check()
        self._queue.put((self._rows - rows, rows, self._buffer))
        self._buffer = self._free.get()  # the other buffer, once the writer has stored it

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

    def _finish(self) -> None:
        """Wait for the writer to store what it has and stop."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def write_at(self, start: int, band) -> None:
        """Rows [start, start + len(band)) in any order (a cluster task's band), stored at once.

        Bands that start and end on chunk boundaries (:func:`chunk_rows`) never share a
        chunk, so several processes may write them at the same time; each row must be
        written once, by :meth:`write` or here.
        """
        band = band.reshape((band.shape[0],) + self.shape[1:])
        if not 0 <= start <= self.shape[0] - band.shape[0]:
            raise ValueError(f"{self.path}: rows {start}–{start + band.shape[0]} do not fit {self.shape}")
        self._finish()  # bands in order and bands by place do not mix in flight
        try:
            self._array[start:start + band.shape[0]] = band
        except Exception as err:  # noqa: BLE001
            raise write_error(self.path, err) from None
        self._rows += band.shape[0]

    def commit(self) -> None:
        from .bands import put_in_place

        if self._rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self._rows} rows written of {self.shape[0]}")
        try:
            if self._filled:
                self._store(self._filled)
                self._filled = 0
            self._finish()
            self._check()
        except BaseException:
            self.discard()
            raise
        put_in_place(self._temporary, self.path)
        self._temporary = None

    def discard(self) -> None:
        import threading

        from .bands import remove_quietly

        if self._thread is not None and self._thread is not threading.current_thread():
            self._error = self._error or RuntimeError("discarded")
            self._finish()
        remove_quietly(self._temporary)
        self._temporary = None
