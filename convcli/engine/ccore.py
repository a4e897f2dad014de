"""The compiled direct path: ``convcli.engine._ccore``, a C99 loop without im2col (optional).

The extension (``convcli/engine/_ccore.c``) is built by ``pip install`` when a C compiler is
there; without it, or with ``CONVCLI_DISABLE_CCORE=1`` in the environment, or after
``use_ccore(False)``, the engine runs its numpy and OpenCV paths as before.

Per output row the C loop keeps blocks of output pixels × maps in vector registers (maps
innermost, 4, 8 or 16 lanes), adds every tap's and channel's broadcast input value times a
vector of packed weights, starts from the bias, runs the activation on the finished row and,
for valid pooling whose stride is its size, folds the rows into the pooled row so the
un-pooled map is never stored. Borders go through the padded image's row and column index
maps (:func:`convcli.engine._common.source_index`), so every padding and border mode is
served without a padded copy; stride, dilation and depthwise layers are loop parameters.

Rank-1 kernels whose every map reads one channel (depthwise layers, 2-D kernels on the
channel sum) have a second loop, :func:`correlate_separable`: per thread, a ring of input
rows filtered horizontally (``kw`` taps, the factors :mod:`convcli.engine.separable` finds),
then the vertical pass (``kh`` taps), bias and activation per output row, in column tiles
whose ring stays in L2; large outputs are written with non-temporal stores. Without an
activation, or with ReLU or abs, the vertical pass finishes each vector in registers (bias,
activation, the Inf/NaN test) and stores it once, straight to the output when its rows
start on a 64-byte line (the engine allocates its outputs so). Three environment variables
tune it for measurements (none changes a bit): ``CONVCLI_SEP_TILE`` (bytes of ring per
column tile), ``CONVCLI_SEP_STREAM`` (1/0: non-temporal stores on/off) and
``CONVCLI_SEP_FUSE`` (0: finish each row in passes over memory instead).

A pixel's sum is formed in one fixed order whatever rows a call computes, so the bands the
engine's threads take do not change any bit. The GIL is released during the loop.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np

from . import _common, _threads

try:
    from . import _ccore
except ImportError:  # not built (no compiler at install time): the numpy paths serve
    _ccore = None

#: Environment variable that turns the compiled core off (``1``), e.g. to test the fallback.
DISABLE_ENV = "CONVCLI_DISABLE_CCORE"

_enabled = True


@functools.lru_cache(maxsize=64)
def _index_map(size: int, before: int, after: int, border) -> np.ndarray:
    """:func:`convcli.engine._common.source_index` as the loop's int32, kept (read-only) for
    the next call of the same geometry: a batch or a video applies one layer to many
    images of one size."""
    index = _common.source_index(size, before, after, border).astype(np.int32)
    index.flags.writeable = False
    return index


_ACTS = {"none": 0, "relu": 1, "leaky-relu": 2, "sigmoid": 3, "tanh": 4, "abs": 5}
_POOLS = {"max": 1, "avg": 2}

#: Multiply-adds below which a call runs on one thread (thread hand-off costs ~50 µs).
MIN_MACS_PER_THREAD = 1_000_000
#: Row chunks per thread of the direct loop (each recomputes its first kh - 1 input rows' planes).
CHUNKS_PER_THREAD = 4


def built() -> bool:
    """Whether the extension was compiled and imports."""
    return _ccore is not None


def active() -> bool:
    """Whether the engine may use the compiled core now."""
    return _ccore is not None and _enabled and os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes")


def use_ccore(enabled: bool) -> None:
    """Allow (default) or forbid the compiled core in ``auto`` mode."""
    global _enabled
    _enabled = bool(enabled)


def isa() -> str:
    """The instruction sets the extension was compiled for ("" when not built)."""
    return getattr(_ccore, "ISA", "") if _ccore is not None else ""


#: Largest ring of expanded input rows (bytes) the expand kernel may use per thread: it
#: must stay in the core's L2 cache, or the broadcast/gather kernels serve instead.
RING_MAX_BYTES = 2 << 20
#: Columns an expanded row keeps past the output's width (the C loop's largest pixel block).
_MAX_EXPAND_PIXELS = 128
_BROADCAST, _EXPAND, _GATHER, _PLANAR = 0, 1, 2, 3
#: Largest number of maps of a dense layer the planar kernel takes (its accumulators: maps × pixel vectors).
PLANAR_MAX_MAPS = 8


def plan(in_hwc, w_shape, out_hw, stride, dilation, depthwise: bool) -> tuple[int, int]:
    """(kernel, lanes per pixel) the C loop uses for a layer.

    Kernel 3 (planar, dense layers of at most 8 maps) holds 16 pixels of one map per vector,
    from rows of the input split into channel planes once per row (a ring that fits the
    cache), each load multiplied by one broadcast weight per map; kernel 1 (expand, depthwise)
    holds 16/lanes pixels × lanes maps per vector from rows expanded the same way; kernel 0
    (broadcast) holds one pixel × 16 maps (many maps); kernel 2 (gather) is the depthwise
    fallback when the ring would not fit.
    """
    c = in_hwc[2]
    kh, kw, _, f = w_shape
    n_maps = c * f if depthwise else f
    (sh, sw), (dh, dw) = stride, dilation
    if not depthwise and n_maps <= PLANAR_MAX_MAPS:
        ncol = out_hw[1] + _MAX_EXPAND_PIXELS + (kw - 1) * dw // sw + 1
        if 4 * ((kh - 1) * dh + 1) * sw * ncol * c <= RING_MAX_BYTES:
            return _PLANAR, 1
        return _BROADCAST, 16
    vf = 16
    for lanes in (1, 2, 4, 8):
        if n_maps <= lanes:
            vf = lanes
            break
    if not depthwise and vf == 16:
        return _BROADCAST, 16
    planes = -(-n_maps // vf) if depthwise else c
    ncol = out_hw[1] + _MAX_EXPAND_PIXELS + (kw - 1) * dw // sw + 1
    ring = 4 * ((kh - 1) * dh + 1) * sw * ncol * vf * planes
    if ring <= RING_MAX_BYTES:
        return _EXPAND, vf
    return (_GATHER, 16) if depthwise else (_BROADCAST, 16)


def can_pool(pool, conv_hw) -> bool:
    """Whether the loop pools itself: valid padding, stride equal to the size."""
    if pool is None:
        return True
    return (getattr(pool.padding, "value", pool.padding) == "valid" and tuple(pool.strides) == tuple(pool.size)
            and conv_hw[0] >= pool.size[0] and conv_hw[1] >= pool.size[1])


class _Layer:
    """The packed weights, bias and index maps of one layer, shared by every call on its bands."""

    def __init__(self, x, w, *, pads, stride, dilation, border, out_hw, depthwise, epilogue):
        h, wid, c = x.shape
        kh, kw, cw, f = w.shape
        self.n_maps = c * f if depthwise else f
        mode, vf = plan(x.shape, w.shape, out_hw, stride, dilation, depthwise)
        nb = -(-self.n_maps // vf)
        if mode == _PLANAR:
            packed = None  # the HWIO weights themselves: (kh, kw, C, maps) scalars
        elif depthwise:
            # Lane l of block b is map b·vf + l = (channel, kernel): its own (kh, kw) weights.
            wm = np.broadcast_to(w, (kh, kw, c, f)).reshape(kh, kw, c * f)
            packed = np.zeros((kh, kw, nb * vf), np.float32)
            packed[:, :, :self.n_maps] = wm
            packed = packed.reshape(kh, kw, nb, vf).transpose(2, 0, 1, 3)  # (nb, kh, kw, vf)
        else:
            packed = np.zeros((kh, kw, c, nb * vf), np.float32)
            packed[..., :f] = w
            packed = packed.reshape(kh, kw, c, nb, vf).transpose(3, 0, 1, 2, 4)  # (nb, kh, kw, C, vf)
        # A vector holds 16 / vf pixels: the weights repeat for each.
        if mode == _PLANAR:
            self.w = np.ascontiguousarray(np.broadcast_to(w, (kh, kw, c, f)), dtype=np.float32)
        else:
            self.w = np.ascontiguousarray(np.tile(packed, 16 // vf) if vf < 16 else packed)
        bias = np.zeros(nb * vf, np.float32)
        act, slope = 0, 0.0
        if epilogue is not None:
            if epilogue.bias is not None:
                bias[:self.n_maps] = epilogue.bias
            act = _ACTS[getattr(epilogue.activation, "value", str(epilogue.activation))]
            slope = float(epilogue.negative_slope)
        self.bias, self.act, self.slope = bias, act, slope
        top, bottom, left, right = pads
        self.rowmap = _index_map(h, top, bottom, border)
        self.colmap = _index_map(wid, left, right, border)
        (sh, sw), (dh, dw) = stride, dilation
        self.out_hw = tuple(out_hw)
        self.geom = (h, wid, c, kh, kw, sh, sw, dh, dw, out_hw[1], self.n_maps, vf, int(depthwise),
                     f if depthwise else 1, left, mode)
        self.mode = mode
        # Vector multiply-adds of one output row, in 16-lane units (what the loop spends).
        self.macs_per_row = out_hw[1] * kh * kw * (1 if depthwise else c) * nb * vf
        self.x = x

    def run(self, out, rows, pool=None) -> None:
        """Rows [a, b) (pooled rows with ``pool``) into ``out``, on the engine's threads."""
        a, b = rows
        mode, ph, pw = (0, 1, 1) if pool is None else (_POOLS[pool.mode.value], pool.size[0], pool.size[1])
        per_row = self.macs_per_row * ph
        n = b - a
        parts = _threads.CPUS if n * per_row >= 2 * MIN_MACS_PER_THREAD else 1
        workers = min(parts, _threads.get_threads())
        # More chunks than threads, taken in turn (as the separable loop's): a thread that loses
        # its core to another process for a while does not hold the call up. (On a quiet machine
        # W1 and W4 measured the same either way, within the run-to-run noise.)
        chunks = iter(_threads.split_rows(n, max(1, MIN_MACS_PER_THREAD // max(1, per_row)),
                                          parts=CHUNKS_PER_THREAD * workers if workers > 1 else 1))
        overflow = []
        # Pooled rows go out with non-temporal stores when the layer's output is large (``out``
        # may be one band of it; the bits are the same either way).
        stream = pool is not None and 4 * (self.out_hw[0] // ph) * (self.out_hw[1] // pw) * self.n_maps >= STREAM_BYTES

        def work(_w0: int, _w1: int) -> None:
            for r0, r1 in chunks:  # next() on a list iterator is atomic under the GIL
                if _ccore.rows(self.x, self.w, self.bias, out[r0:r1], self.rowmap, self.colmap, self.geom,
                               self.act, self.slope, a + r0, a + r1, (mode, ph, pw), stream):
                    overflow.append((r0, r1))

        _threads.run_ranges(work, [(i, i + 1) for i in range(workers)])
        if overflow:
            # numpy's own words, as its paths warn (convcli._noise turns them into one line).
            warnings.warn("overflow encountered in the compiled convolution: the maps hold Inf or NaN",
                          RuntimeWarning, stacklevel=3)


def row_unit(x_shape, w_shape, **_ignored) -> int:
    """1: a pixel's sum is formed in one fixed order whatever rows a call computes (see the module docstring)."""
    return 1


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, rows=None, epilogue=None, scratch=None, out=None) -> np.ndarray:
    """The contract of :func:`convcli.engine.direct.correlate`, computed by the C loop.

    The bias and activation of ``epilogue`` are fused into the loop (it is not called).
    ``scratch`` is unused: the loop needs no scratch memory beyond a row of registers.
    """
    layer = _Layer(_checked(x), np.asarray(w, np.float32), pads=pads, stride=stride, dilation=dilation,
                   border=border, out_hw=out_hw, depthwise=depthwise, epilogue=epilogue)
    row_a, row_b = rows if rows is not None else (0, out_hw[0])
    out = _common.result_array((row_b - row_a, out_hw[1], layer.n_maps), out)
    layer.run(out, (row_a, row_b))
    return out


def correlate_pooled(x: np.ndarray, w: np.ndarray, pool, *, pads, stride, dilation, border, out_hw,
                     depthwise: bool = False, epilogue=None, out=None) -> np.ndarray:
    """Convolve, finish and pool (valid, stride = size: :func:`can_pool`) in one pass."""
    layer = _Layer(_checked(x), np.asarray(w, np.float32), pads=pads, stride=stride, dilation=dilation,
                   border=border, out_hw=out_hw, depthwise=depthwise, epilogue=epilogue)
    poh, pow_ = out_hw[0] // pool.size[0], out_hw[1] // pool.size[1]
    out = _common.result_array((poh, pow_, layer.n_maps), out)
    layer.run(out, (0, poh), pool)
    return out


def separable_ok(in_hwc, w_shape, depthwise: bool) -> bool:
    """Whether :func:`correlate_separable` can take the layer's shapes: every map reads one
    channel (depthwise, or a 2-D kernel on one channel) through at most 64 kernel rows and columns."""
    return (depthwise or in_hwc[2] == 1) and max(w_shape[0], w_shape[1]) <= 64


def separable_factors(w: np.ndarray, depthwise: bool, channels: int):
    """(u, v) of shapes (kh, maps), (kw, maps): map m's kernel is outer(u[:, m], v[:, m]) to
    float32 precision (the factors :func:`convcli.engine.separable.terms_of` finds), or None
    when a kernel's rank is above 1. An all-zero kernel gives zero factors."""
    from . import separable

    return separable.memo(("factors", depthwise, channels), w, lambda: _separable_factors(w, depthwise, channels))


def _separable_factors(w: np.ndarray, depthwise: bool, channels: int):
    """:func:`separable_factors`, computed."""
    from . import separable

    kh, kw, _, f = w.shape
    terms = separable.terms_of(w, depthwise, channels, 1)
    if terms is None:
        return None
    n_maps = channels * f if depthwise else f
    u = np.zeros((kh, n_maps), np.float32)
    v = np.zeros((kw, n_maps), np.float32)
    for _, m, a, b in terms:
        u[:, m], v[:, m] = a, b
    u.flags.writeable = v.flags.writeable = False  # kept by separable.memo for the next call
    return u, v


#: Outputs from this size on are written with non-temporal stores (the separable loop; pooled layers).
STREAM_BYTES = 4 << 20
#: Row chunks per thread of the separable loop (each recomputes kh - 1 rows of its ring).
SEP_CHUNKS_PER_THREAD = 4


class _SepLayer:
    """The lane patterns and index maps of a rank-1 layer for ``_ccore.sep_rows``."""

    def __init__(self, x, factors, *, pads, stride, dilation, border, out_hw, depthwise, epilogue):
        h, wid, c = x.shape
        u, v = factors
        self.n_maps = n = u.shape[1]
        lanes = 16 * n  # a pattern: 16 repeats of the maps, a whole number of vectors
        self.u = np.ascontiguousarray(np.tile(u, (1, 16)))
        self.v = np.ascontiguousarray(np.tile(v, (1, 16)))
        bias = np.zeros(n, np.float32)
        act, slope = 0, 0.0
        if epilogue is not None:
            if epilogue.bias is not None:
                bias[:] = epilogue.bias
            act = _ACTS[getattr(epilogue.activation, "value", str(epilogue.activation))]
            slope = float(epilogue.negative_slope)
        self.bias = np.tile(bias, 16)
        assert self.bias.size == lanes
        self.act, self.slope = act, slope
        top, bottom, left, right = pads
        self.rowmap = _index_map(h, top, bottom, border)
        self.colmap = _index_map(wid, left, right, border)
        (sh, sw), (dh, dw) = stride, dilation
        kh, kw = u.shape[0], v.shape[0]
        self.geom = (h, wid, c, kh, kw, sh, sw, dh, dw, out_hw[1], n, n // c, left)
        # 16-lane multiply-adds of one output row (both passes), for the thread split.
        self.macs_per_row = -(-out_hw[1] * n // 16) * (kh + kw * sh)
        self.x = x

    def run(self, out, rows) -> None:
        a, b = rows
        n = b - a
        parts = _threads.CPUS if n * self.macs_per_row >= 2 * MIN_MACS_PER_THREAD // 16 else 1
        workers = min(parts, _threads.get_threads())
        min_rows = max(1, MIN_MACS_PER_THREAD // 16 // max(1, self.macs_per_row))
        # More chunks than threads, taken in turn: a thread that loses its core to another
        # process for a while does not hold the call up (the bits do not depend on the cut).
        chunks = iter(_threads.split_rows(n, min_rows, parts=SEP_CHUNKS_PER_THREAD * workers))
        # Non-temporal stores when the whole output is large (W5: 2 ms of 5), whatever the chunks.
        stream = int(out.nbytes >= STREAM_BYTES)
        overflow = []

        def work(_w0: int, _w1: int) -> None:
            for r0, r1 in chunks:  # next() on a list iterator is atomic under the GIL
                if _ccore.sep_rows(self.x, self.u, self.v, self.bias, out[r0:r1], self.rowmap, self.colmap,
                                   self.geom, self.act, self.slope, a + r0, a + r1, stream):
                    overflow.append((r0, r1))

        _threads.run_ranges(work, [(i, i + 1) for i in range(workers)])
        if overflow:
            warnings.warn("overflow encountered in the compiled convolution: the maps hold Inf or NaN",
                          RuntimeWarning, stacklevel=3)


def correlate_separable(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
                        depthwise: bool = False, factors=None, rows=None, epilogue=None, scratch=None,
                        out=None) -> np.ndarray:
    """The contract of :func:`convcli.engine.direct.correlate` for rank-1 kernels, by the C
    loop's two 1-D passes (``kh + kw`` multiply-adds per value instead of ``kh·kw``).

    Every map must read one channel (:func:`separable_ok`). ``factors`` (from
    :func:`separable_factors`) may be passed when already computed; raises ValueError when
    a kernel's rank is above 1. The bias and activation of ``epilogue`` are fused.
    ``scratch`` is unused (a thread needs a few rows of the image's width).
    """
    x = _checked(x)
    w = np.asarray(w, np.float32)
    if not separable_ok(x.shape, w.shape, depthwise):
        raise ValueError("the compiled separable loop needs one channel per map and at most 64 kernel rows")
    if factors is None:
        factors = separable_factors(w, depthwise, x.shape[2])
    if factors is None:
        raise ValueError("a kernel has rank above 1")
    layer = _SepLayer(x, factors, pads=pads, stride=stride, dilation=dilation, border=border, out_hw=out_hw,
                      depthwise=depthwise, epilogue=epilogue)
    row_a, row_b = rows if rows is not None else (0, out_hw[0])
    out = _common.result_array((row_b - row_a, out_hw[1], layer.n_maps), out)
    layer.run(out, (row_a, row_b))
    return out


class _Separable:
    """The separable loop as the engine's paths are called (``path.correlate``)."""

    correlate = staticmethod(correlate_separable)
    row_unit = staticmethod(row_unit)  # one fixed order per pixel here too: any band cut


#: :func:`correlate_separable` in the shape of a path module, for the engine's dispatcher.
SEPARABLE = _Separable()


def _checked(x: np.ndarray) -> np.ndarray:
    if _ccore is None:
        raise RuntimeError("convcli's compiled core is not built")
    if x.ndim != 3 or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError(f"x: expected a C-contiguous float32 H×W×C array, got {x.dtype} {x.shape}")
    return x
