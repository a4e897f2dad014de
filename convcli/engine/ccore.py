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

A pixel's sum is formed in one fixed order whatever rows a call computes, so the bands the
engine's threads take do not change any bit. The GIL is released during the loop.
"""

from __future__ import annotations

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

_ACTS = {"none": 0, "relu": 1, "leaky-relu": 2, "sigmoid": 3, "tanh": 4, "abs": 5}
_POOLS = {"max": 1, "avg": 2}

#: Multiply-adds below which a call runs on one thread (thread hand-off costs ~50 µs).
MIN_MACS_PER_THREAD = 1_000_000


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
_BROADCAST, _EXPAND, _GATHER = 0, 1, 2


def plan(in_hwc, w_shape, out_hw, stride, dilation, depthwise: bool) -> tuple[int, int]:
    """(kernel, lanes per pixel) the C loop uses for a layer.

    Kernel 1 (expand) holds 16/lanes pixels × lanes maps per vector, from rows of the input
    expanded once per row into a ring that fits the cache (few maps, depthwise); kernel 0
    (broadcast) holds one pixel × 16 maps (many maps); kernel 2 (gather) is the depthwise
    fallback when the ring would not fit.
    """
    c = in_hwc[2]
    kh, kw, _, f = w_shape
    n_maps = c * f if depthwise else f
    vf = 16
    for lanes in (1, 2, 4, 8):
        if n_maps <= lanes:
            vf = lanes
            break
    if not depthwise and vf == 16:
        return _BROADCAST, 16
    (sh, sw), (dh, dw) = stride, dilation
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
        if depthwise:
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
        self.rowmap = _common.source_index(h, top, bottom, border).astype(np.int32)
        self.colmap = _common.source_index(wid, left, right, border).astype(np.int32)
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
        ranges = _threads.split_rows(n, max(1, MIN_MACS_PER_THREAD // max(1, per_row)),
                                     parts=min(parts, _threads.get_threads()))

        overflow = []

        def work(r0: int, r1: int) -> None:
            if _ccore.rows(self.x, self.w, self.bias, out[r0:r1], self.rowmap, self.colmap, self.geom,
                           self.act, self.slope, a + r0, a + r1, (mode, ph, pw)):
                overflow.append((r0, r1))

        _threads.run_ranges(work, ranges)
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


def _checked(x: np.ndarray) -> np.ndarray:
    if _ccore is None:
        raise RuntimeError("convcli's compiled core is not built")
    if x.ndim != 3 or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError(f"x: expected a C-contiguous float32 H×W×C array, got {x.dtype} {x.shape}")
    return x
