"""``.npy`` arrays: read (whole or the header only) and encode.

Arrays follow SPEC §1's shape rules (:func:`._common._array_shape`): 1-D is a signal,
2-D is H×W×1, 3-D is H×W×C. Pickled objects are never loaded.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._common import _array_shape, _Raw, _read_bytes


def _read_npy(name: str, blob: bytes) -> _Raw:
    import numpy as np

    _check_npy_size(name, blob)
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


def _check_npy_size(name: str, blob: bytes) -> None:
    """Refuse a header whose shape needs more bytes than the file holds, before numpy allocates them.

    numpy sizes its array from the header alone: a 200-byte file claiming 10¹⁸ elements
    would ask for exabytes (MemoryError) or a huge allocation filled from nothing.
    """
    from numpy.lib import format as npformat

    handle = io.BytesIO(blob)
    try:
        version = npformat.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            return  # numpy's own reader decides (version 3 headers are rare)
        reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _fortran, dtype = reader(handle)
    except (ValueError, OSError, EOFError):
        return  # np.load reports it with its own words
    if dtype.hasobject:
        return  # refused by allow_pickle=False
    count = 1
    for side in shape:
        count *= int(side)
    needed = count * dtype.itemsize
    held = len(blob) - handle.tell()
    if needed > held:
        dims = "×".join(str(int(side)) for side in shape) or "a scalar"
        raise InputError(f"{name}: truncated or corrupt .npy: its header declares {dims} of {dtype} "
                         f"({needed:,} bytes), the file holds {held:,} bytes of data")


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


def encode_npy(array: Any) -> bytes:
    """``.npy`` contents of ``array`` with its own dtype and shape (no pickling)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
