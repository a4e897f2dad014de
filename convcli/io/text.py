"""Numbers as text: ``.csv``/``.txt`` tables in, rows of numbers out (``--print``)."""

from __future__ import annotations

import io
from typing import Any

from ..errors import InputError
from ._common import _array_shape, _Raw


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
                what = "an empty cell" if not cell else f"{_shorten(cell)} is not a number"
                raise InputError(f"{name}: line {lineno}, column {column}: {what}") from None


def _shorten(cell: str, limit: int = 40) -> str:
    """A cell as a message shows it: whole if short, else its start and its length."""
    if len(cell) <= limit:
        return repr(cell)
    return f"{cell[:limit - 1]!r}… ({len(cell):,} characters)".replace("'…", "…'")


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
