"""Shared helpers of the engine paths: the dtype policy, border padding by index maps, tiling.

Padding is never applied to the whole image: every path asks a :class:`Padder` for the
rows (and columns) of the *padded* image that one tile of output needs, so the extra memory
of a layer is a few tiles, not a padded copy of the input.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..errors import InputError
from ..layer import Border
from .activations import activate

#: numpy.pad mode for each border (PyTorch padding_mode names).
_NP_PAD_MODE = {
    Border.REFLECT: "reflect",  # mirror excluding the edge pixel
    Border.REPLICATE: "edge",
    Border.CIRCULAR: "wrap",
}

#: Extra memory one tile may use, as a fraction of the layer's output (issue 4: ≤ 25 %).
TILE_FRACTION = 0.2
#: Upper bound of one tile's scratch memory in bytes: per-call overhead is amortised (measured: 4 MiB beats L2-sized 1 MiB tiles).
TILE_MAX_BYTES = 4 << 20
#: Lower bound, so tiny outputs are not cut into absurdly many tiles.
TILE_MIN_BYTES = 64 << 10


def as_image(x, name: str = "input", *, keep_integers: bool = False) -> np.ndarray:
    """The engine's one dtype policy: a float32 H×W×C array (C-contiguous).

    A 1-D array of length L becomes 1×L×1 (a signal, Keras Conv1D), a 2-D array H×W×1.
    With ``keep_integers``, uint8/uint16 pixels keep their dtype (for an exact integer
    channel sum, :func:`convcli.engine._channel_sum`); everything else is float32.
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
    integers = keep_integers and arr.dtype in (np.uint8, np.uint16)
    return np.ascontiguousarray(arr, dtype=arr.dtype if integers else np.float32)


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


class Padder:
    """Blocks of the padded image, built on demand from the unpadded ``x`` (H×W×C).

    ``pads`` are (top, bottom, left, right) from :mod:`convcli.geometry`. A block is
    addressed in padded coordinates; its interior is copied with one block copy and only
    the few padded rows/columns go through the index maps of :func:`source_index`.
    """

    def __init__(self, x: np.ndarray, pads, border: Border):
        self.x = x
        self.top, self.bottom, self.left, self.right = pads
        self.border = border
        h, w = x.shape[:2]
        self.rows = source_index(h, self.top, self.bottom, border)
        self.cols = source_index(w, self.left, self.right, border)

    def block(self, r0: int, r1: int, c0: int, c1: int, *, planar: bool = False, buffers=None) -> np.ndarray:
        """Padded rows [r0, r1) × columns [c0, c1): (r1-r0, c1-c0, C), or (C, rows, cols) if ``planar``.

        Returns a view of ``x`` when the block lies inside the image and ``planar`` is
        false (or C is 1), otherwise a new array — or, with ``buffers`` (anything with
        ``get(name, shape)``, like the direct path's per-thread scratch), an array from it.
        """
        x = self.x
        h, w, c = x.shape
        # Interior of the block in padded coordinates: rows [ir0, ir1), columns [ic0, ic1).
        ir0, ir1 = max(r0, self.top), min(r1, self.top + h)
        ic0, ic1 = max(c0, self.left), min(c1, self.left + w)
        inside = ir0 == r0 and ir1 == r1 and ic0 == c0 and ic1 == c1
        src = x[ir0 - self.top:ir1 - self.top, ic0 - self.left:ic1 - self.left]
        if inside and (not planar or c == 1):
            return src.transpose(2, 0, 1) if planar else src
        shape = (c, r1 - r0, c1 - c0) if planar else (r1 - r0, c1 - c0, c)
        out = buffers.get("band", shape) if buffers is not None else np.empty(shape, dtype=np.float32)
        view = out.transpose(1, 2, 0) if planar else out  # always addressed as rows × cols × C
        if ir1 > ir0 and ic1 > ic0:
            view[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = src
        if inside:
            return out
        zeros = self.border is Border.ZEROS
        col_idx = self.cols[c0:c1]
        edge_rows = [*range(r0, min(r1, max(ir0, r0))), *range(max(r0, ir1, ir0), r1)]
        for p in edge_rows:  # whole padded rows (at most the padding, a few)
            src_row = self.rows[p]
            if zeros or src_row < 0:
                view[p - r0] = 0
            else:
                view[p - r0] = np.take(x[src_row], col_idx, axis=0)
        if ir1 > ir0:
            inner = x[ir0 - self.top:ir1 - self.top]
            for a, b in ((c0, min(c1, max(ic0, c0))), (max(c0, ic1, ic0), c1)):  # left and right edges
                if b > a:
                    if zeros:
                        view[ir0 - r0:ir1 - r0, a - c0:b - c0] = 0
                    else:
                        view[ir0 - r0:ir1 - r0, a - c0:b - c0] = np.take(inner, self.cols[a:b], axis=1)
        return out


def tile_plan(out_h: int, out_w: int, bytes_per_pixel: int, out_bytes: int,
              *, max_bytes: int | None = None, budget: int | None = None) -> tuple[int, int]:
    """Tile size (rows, cols) of output pixels whose scratch memory fits the budget.

    The budget is ``TILE_FRACTION`` of the output's size (or ``budget`` when given: a caller
    that computes the output in chunks knows the whole layer's size), between
    ``TILE_MIN_BYTES`` and ``max_bytes``. Whole rows are preferred (contiguous output); a row is split only
    when a single row is over budget (long 1-D signals, very wide kernels).
    """
    max_bytes = TILE_MAX_BYTES if max_bytes is None else max_bytes
    if budget is None:
        budget = int(TILE_FRACTION * out_bytes)
    budget = min(max_bytes, max(TILE_MIN_BYTES, budget))
    row_bytes = max(1, bytes_per_pixel * out_w)
    if row_bytes <= budget:
        return max(1, min(out_h, budget // row_bytes)), out_w
    return 1, max(1, min(out_w, budget // max(1, bytes_per_pixel)))


def tiles(out_h: int, out_w: int, tile_h: int, tile_w: int):
    """Yield (r0, r1, c0, c1) output tiles covering out_h × out_w."""
    for r0 in range(0, out_h, tile_h):
        for c0 in range(0, out_w, tile_w):
            yield r0, min(out_h, r0 + tile_h), c0, min(out_w, c0 + tile_w)


class Buffers:
    """Float32 scratch arrays of one thread, grown on demand and reused by every tile and call.

    A fresh megabyte-sized array per tile costs its page faults again each time (on the
    2-core VM, about 0.6 ms per MB: as much as the work on it). The arrays are bounded by
    the tile budgets, so a thread keeps a few MB at most.
    """

    def __init__(self):
        self._flat: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous float32 array of ``shape`` (contents undefined), this thread's ``name`` slot."""
        size = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.size < size:
            flat = self._flat[name] = np.empty(size, dtype=np.float32)
        return flat[:size].reshape(shape)


_local = threading.local()
_all_buffers: list[Buffers] = []
_all_lock = threading.Lock()


def thread_buffers() -> Buffers:
    """The calling thread's :class:`Buffers` (kept until :func:`release_buffers`)."""
    bufs = getattr(_local, "buffers", None)
    if bufs is None:
        bufs = _local.buffers = Buffers()
        with _all_lock:
            _all_buffers.append(bufs)
    return bufs


def release_buffers() -> None:
    """Drop every thread's scratch arrays (at the end of a layer: no memory is kept between calls)."""
    with _all_lock:
        for bufs in _all_buffers:
            bufs._flat.clear()


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous float32 array whose data starts on an ``align``-byte
    boundary (a view into a slightly larger buffer). numpy's own allocations are 16-byte
    aligned; the compiled loops write whole 64-byte lines with non-temporal stores only
    where the rows start on a line."""
    size = math.prod(shape)
    raw = np.empty(size + align // 4, dtype=np.float32)
    start = (-raw.ctypes.data % align) // 4
    return raw[start:start + size].reshape(shape)


def result_array(shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """``out`` checked against ``shape`` (float32, C-contiguous), or a new 64-byte aligned array of it."""
    if out is None:
        return aligned_empty(shape)
    if out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous float32 array of shape {tuple(shape)}, "
                         f"got {out.dtype} {out.shape}")
    return out


class Epilogue:
    """A layer's bias then activation, applied in place by the paths while the output is in cache.

    Calling it finishes a block of whole H×W×F output rows; :meth:`plane` finishes one
    map's 2-D plane (paths that compute map by map, like OpenCV's).
    """

    def __init__(self, bias: np.ndarray | None, activation, negative_slope: float):
        self.bias = bias  # (F,) float32, or None for no bias
        self.activation = activation
        self.negative_slope = negative_slope
        self._activates = getattr(activation, "value", activation) != "none"
        self._rows: dict[int, np.ndarray] = {}  # the bias repeated along one output row, per width

    @property
    def passes(self) -> int:
        """How many passes over the output it makes (bias, activation)."""
        return int(self.bias is not None) + int(self._activates)

    def __call__(self, block: np.ndarray) -> None:
        if self.bias is not None:
            if block.flags.c_contiguous:
                # Adding a whole row at once: broadcasting the short (F,) vector makes numpy
                # run an inner loop of F elements per pixel, several times slower.
                width = block.shape[1]
                if width not in self._rows:
                    self._rows[width] = np.tile(self.bias, width)
                block.reshape(block.shape[0], -1)[...] += self._rows[width]
            else:
                block += self.bias
        self._activate(block)

    def plane(self, plane: np.ndarray, m: int, *, biased: bool = False) -> None:
        """Finish map ``m``'s plane in place (``biased``: its bias is already added)."""
        if self.bias is not None and not biased:
            plane += self.bias[m]
        self._activate(plane)

    def _activate(self, arr: np.ndarray) -> None:
        if self._activates:
            activate(arr, self.activation, self.negative_slope, out=arr)
