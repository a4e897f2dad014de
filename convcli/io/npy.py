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
    import math

    from numpy.lib import format as npformat

    handle = io.BytesIO(blob)
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
    if needed > len(blob) - handle.tell():
        shown = "×".join(str(n) for n in shape)
        raise InputError(f"{name}: cannot read .npy: truncated: the header declares {shown} {dtype}"
                         f" ({needed} bytes of data), the file holds {len(blob) - handle.tell()}")


def encode_npy(array: Any) -> bytes:
    """``.npy`` contents of ``array`` with its own dtype and shape (no pickling)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
