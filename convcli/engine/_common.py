"""Shared helpers of the engine paths: the dtype policy, border padding by index maps, tiling.

Padding is never applied to the whole image: every path asks :func:`padded_band` for the
rows (and columns) of the *padded* image that one tile of output needs, so the extra memory
of a layer is a few tiles, not a padded copy of the input.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..layer import Border

#: numpy.pad mode for each border (PyTorch padding_mode names).
_NP_PAD_MODE = {
    Border.REFLECT: "reflect",  # mirror excluding the edge pixel
    Border.REPLICATE: "edge",
    Border.CIRCULAR: "wrap",
}

#: Extra memory one tile may use, as a fraction of the layer's output (issue 4: ≤ 25 %).
TILE_FRACTION = 0.2
#: Upper bound of one tile's scratch memory in bytes: a tile this size stays in L2/L3.
TILE_MAX_BYTES = 4 << 20
#: Lower bound, so tiny outputs are not cut into absurdly many tiles.
TILE_MIN_BYTES = 64 << 10


def as_image(x, name: str = "input") -> np.ndarray:
    """The engine's one dtype policy: a float32 H×W×C array (C-contiguous).

    A 1-D array of length L becomes 1×L×1 (a signal, Keras Conv1D), a 2-D array H×W×1.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1, 1)
    elif arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim != 3:
        raise InputError(f"{name}: expected an H×W×C, H×W or 1-D array, got {arr.ndim} dimensions {arr.shape}")
    if 0 in arr.shape:
        raise InputError(f"{name}: the array is empty, shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def source_index(size: int, before: int, after: int, border: Border) -> np.ndarray:
    """Index into the unpadded axis for every position of the padded axis (-1: a zero).

    Built by padding ``arange(size)`` with :func:`numpy.pad` itself, so each border mode
    means exactly what numpy's mode means (reflect excludes the edge pixel, wraps repeat).
    """
    idx = np.arange(size, dtype=np.intp)
    if before == 0 and after == 0:
        return idx
    if border is Border.ZEROS:
        return np.pad(idx, (before, after), mode="constant", constant_values=-1)
    return np.pad(idx, (before, after), mode=_NP_PAD_MODE[border])


def _as_slice(idx: np.ndarray) -> slice | None:
    """``idx`` as a slice when it is a run of consecutive valid indices (then no copy is needed)."""
    if idx.size and idx[0] >= 0 and idx[-1] - idx[0] == idx.size - 1 and (idx.size < 3 or np.all(np.diff(idx) == 1)):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return None


def padded_band(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The block of the padded image whose rows/cols map to ``rows``/``cols`` (from :func:`source_index`).

    Returns a view of ``x`` when the block lies inside the image, otherwise a new
    array of shape (len(rows), len(cols), C) with zeros where the index is -1.
    """
    rs, cs = _as_slice(rows), _as_slice(cols)
    if rs is not None and cs is not None:
        return x[rs, cs]
    rows_ok, cols_ok = rows >= 0, cols >= 0
    band = x[rs] if rs is not None else np.take(x, np.maximum(rows, 0), axis=0)
    band = band[:, cs] if cs is not None else np.take(band, np.maximum(cols, 0), axis=1)
    if not rows_ok.all():
        band[~rows_ok] = 0
    if not cols_ok.all():
        band[:, ~cols_ok] = 0
    return band


def tile_plan(out_h: int, out_w: int, bytes_per_pixel: int, out_bytes: int,
              *, max_bytes: int | None = None) -> tuple[int, int]:
    """Tile size (rows, cols) of output pixels whose scratch memory fits the budget.

    The budget is ``TILE_FRACTION`` of the output's size, between ``TILE_MIN_BYTES`` and
    ``max_bytes``. Whole rows are preferred (contiguous output); a row is split only
    when a single row is over budget (long 1-D signals, very wide kernels).
    """
    max_bytes = TILE_MAX_BYTES if max_bytes is None else max_bytes
    budget = min(max_bytes, max(TILE_MIN_BYTES, int(TILE_FRACTION * out_bytes)))
    row_bytes = max(1, bytes_per_pixel * out_w)
    if row_bytes <= budget:
        return max(1, min(out_h, budget // row_bytes)), out_w
    return 1, max(1, min(out_w, budget // max(1, bytes_per_pixel)))


def tiles(out_h: int, out_w: int, tile_h: int, tile_w: int):
    """Yield (r0, r1, c0, c1) output tiles covering out_h × out_w."""
    for r0 in range(0, out_h, tile_h):
        for c0 in range(0, out_w, tile_w):
            yield r0, min(out_h, r0 + tile_h), c0, min(out_w, c0 + tile_w)
