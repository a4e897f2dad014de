"""``.npy`` arrays: read (whole or the header only) and encode.

Arrays follow SPEC §1's shape rules (:func:`._common._array_shape`): 1-D is a signal,
2-D is H×W×1, 3-D is H×W×C. Pickled objects are never loaded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import _array_shape, _Raw, _read_bytes


def _read_npy(name: str, blob: bytes) -> _Raw:
    import numpy as np

    _check_npy_length(name, blob)
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{name}: cannot read .npy: {err}") from None
    except Exception as err:  # noqa: BLE001 - numpy parses the header with tokenize and ast
        raise InputError(f"{name}: cannot read .npy header: {_header_problem(err)}") from None
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
    except Exception as err:  # noqa: BLE001 - numpy parses the header with tokenize and ast
        raise InputError(f"{name}: cannot read .npy header: {_header_problem(err)}") from None
    return _array_shape(name, tuple(shape))


def _header_problem(err: Exception) -> str:
    """One line for an error numpy's header parser raised (SyntaxError, tokenize errors…)."""
    from .._text import shorten

    detail = " ".join(str(err).split())
    return f"{type(err).__name__}: {shorten(detail, 80)}" if detail else type(err).__name__


def _check_npy_length(name: str, blob: bytes) -> None:
    """Refuse a ``.npy`` whose header declares more data than the file holds, before numpy allocates it."""
    _check_npy_header_size(name, io.BytesIO(blob), len(blob))


def _check_npy_header_size(name: str, handle, size: int) -> None:
    """:func:`_check_npy_length` on an open file of ``size`` bytes, positioned at its start."""
    import math

    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            return  # numpy reports it
        reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _fortran, dtype = reader(handle)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{name}: cannot read .npy header: {err}") from None
    except Exception as err:  # noqa: BLE001 - numpy parses the header with tokenize and ast
        raise InputError(f"{name}: cannot read .npy header: {_header_problem(err)}") from None
    if dtype.hasobject:
        return  # refused by np.load (allow_pickle=False) with its own message
    needed = math.prod(shape) * dtype.itemsize
    if needed > size - handle.tell():
        shown = "×".join(str(n) for n in shape)
        raise InputError(f"{name}: cannot read .npy: truncated: the header declares {shown} {dtype}"
                         f" ({needed} bytes of data), the file holds {size - handle.tell()}")


def encode_npy(array: Any) -> bytes:
    """``.npy`` contents of ``array`` with its own dtype and shape (no pickling)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class NpyRegionReader:
    """A ``.npy`` file read by bands of rows, never whole.

    The header is read by :func:`numpy.load` with ``mmap_mode='r'`` (any version, C or
    Fortran order). Rows of a C-order array are then read with positioned reads of
    exactly their bytes: pages of a memory map stay mapped once touched and count in the
    process's resident memory, positioned reads do not. A Fortran-order array is read
    through the memory map (its rows are not contiguous in the file).
    """

    def __init__(self, name: str, path: Path) -> None:
        import numpy as np

        self.name, self.path = name, path
        try:
            with open(path, "rb") as fh:  # sizes numpy's memory map would overflow on, refused first
                _check_npy_header_size(name, fh, os.fstat(fh.fileno()).st_size)
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError, OverflowError) as err:
            raise InputError(f"{name}: cannot read .npy: {err}") from None
        kind_char = mapped.dtype.kind
        if kind_char not in "biuf":
            raise InputError(f"{name}: .npy of dtype {mapped.dtype}; expected numbers (bool, int, uint or float)")
        self.shape, self.kind = _array_shape(name, mapped.shape)
        self.bit_depth = mapped.dtype.itemsize * 8 if kind_char == "u" else None
        self.dtype = np.dtype(np.uint8) if kind_char == "b" else mapped.dtype
        self._stored = mapped.dtype
        self._fortran = mapped.ndim > 1 and not mapped.flags.c_contiguous
        self._offset = int(mapped.offset)
        self._mapped = mapped.reshape(self.shape) if self._fortran else None
        self._file = None if self._fortran else open(path, "rb")  # noqa: SIM115 - closed by close()

    def read(self, start: int, stop: int) -> Any:
        import numpy as np

        h, w, c = self.shape
        if self._mapped is not None:
            block = np.array(self._mapped[start:stop])
        else:
            row = w * c * self._stored.itemsize
            self._file.seek(self._offset + start * row)
            data = self._file.read((stop - start) * row)
            if len(data) != (stop - start) * row:
                raise InputError(f"{self.name}: truncated .npy (rows {start}–{stop} are missing)")
            block = np.frombuffer(data, dtype=self._stored).reshape(stop - start, w, c)
        return block.astype(np.uint8) if block.dtype.kind == "b" else block

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._mapped = None


class NpySink:
    """A ``.npy`` H×W×F float32 array written band by band (the bytes :func:`encode_npy` gives).

    The file is laid out by :func:`numpy.lib.format.open_memmap` (header and full size)
    under a temporary name; the bands are then written at their offsets with plain writes
    (dirty pages of a memory map would count in the resident memory until it is closed),
    and :meth:`commit` renames it.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        import numpy as np
        from numpy.lib.format import open_memmap

        from ..errors import OutputError
        from .bands import temporary_path

        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self._temporary: Path | None = temporary_path(self.path)
        try:
            mapped = open_memmap(self._temporary, mode="w+", dtype=np.float32, shape=self.shape)
            self._offset = int(mapped.offset)
            del mapped
            self._file = open(self._temporary, "r+b")  # noqa: SIM115 - closed by commit/discard
            self._file.seek(self._offset)
        except OSError as err:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        self._rows = 0

    def write(self, band) -> None:
        import numpy as np

        from ..errors import OutputError

        data = np.ascontiguousarray(band, dtype=np.float32)
        try:
            self._file.write(memoryview(data).cast("B"))
        except OSError as err:
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        self._rows += data.shape[0]

    def write_at(self, start: int, band) -> None:
        """Rows [start, start + len(band)) in any order (a cluster task's band): a positioned write.

        Each row must be written once, by :meth:`write` or here; :meth:`commit` counts them.
        """
        import os

        import numpy as np

        from ..errors import OutputError

        data = np.ascontiguousarray(band, dtype=np.float32)
        row = 4 * int(np.prod(self.shape[1:]))
        if not 0 <= start <= self.shape[0] - data.shape[0] or data.nbytes != data.shape[0] * row:
            raise ValueError(f"{self.path}: rows {start}–{start + data.shape[0]} of shape {data.shape} do not fit "
                             f"{self.shape}")
        try:
            self._file.flush()
            os.pwrite(self._file.fileno(), memoryview(data).cast("B"), self._offset + start * row)
        except OSError as err:
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        self._rows += data.shape[0]

    def commit(self) -> None:
        from ..errors import OutputError
        from .bands import put_in_place

        if self._rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self._rows} rows written of {self.shape[0]}")
        try:
            self._file.close()
        except OSError as err:
            self.discard()
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from None
        put_in_place(self._temporary, self.path)
        self._temporary = None

    def discard(self) -> None:
        import contextlib

        from .bands import remove_quietly

        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        remove_quietly(self._temporary)
        self._temporary = None
