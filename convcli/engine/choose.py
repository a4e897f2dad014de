"""Which path runs a layer: a cost model from the layer's sizes, and the checks for forced paths.

The model estimates each path's time in seconds from counts of the work it does, with
rates measured on a 2-core x86 machine (``benchmarks/run.py`` prints the real times):

* direct: the patch copy (``pixels · kh·kw·C`` floats) plus the GEMM, which costs at least
  one read of the patches (few filters) or its multiply-adds (many);
* separable: per rank-1 term, a vertical band GEMM over ``tile + extent`` rows and a
  horizontal one over ``block + extent`` columns (BLAS wastes some work on the band's zeros
  and is still faster than a short loop);
* fft: forward transforms of the input blocks, products with the kernel spectra, inverse
  transforms of every output map, over the blocks ``fft.plan`` cuts (overlap-save's margins
  included);
* opencv: per-channel filter2D/sepFilter2D calls, when cv2 is importable and can serve it.

Only the ordering matters; a path that cannot run the layer costs infinity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import separable

GEMM_MACS_PER_S = 25e9  # skinny sgemm on tiles, both cores
COPY_FLOATS_PER_S = 3e9  # the strided copy into the patch matrix
OUTPUT_BYTES_PER_S = 4e9  # first touch of a fresh output array (page faults), every path
FIXED_SECONDS = {"direct": 2e-5, "separable": 3e-4, "fft": 5e-4, "opencv": 1e-4}  # set-up per layer
CALL_SECONDS = 1.2e-6  # one numpy call on a small block (the interpreter's share)
TERM_SECONDS_PER_PIXEL = 3e-9  # separable: the passes' copies and sums, per term and output pixel (W3: 50 ms measured)
TILE_CHANNEL_SECONDS = 1.5e-4  # separable: fixed work per (tile, channel)
FFT_POINTS_PER_S = 3.2e9  # (points · log2 points) per second, scipy.fft float32, both cores
SPECTRUM_MACS_PER_S = 0.5e9  # complex multiply-adds of the spectra (einsum over the channels)
CV_TAPS_PER_S = 3e9  # cv2.filter2D taps·pixels per second, one-channel planes
CV_SEP_TAPS_PER_S = 9e9  # cv2.sepFilter2D taps·pixels per second (multi-channel, SIMD)
CV_FFT_KERNEL = 11  # cv2.filter2D switches to its DFT path from about this size
MAX_RANK = 2  # separable path: at most this many rank-1 terms per 2-D kernel


@dataclass(frozen=True)
class Layer:
    """The sizes the model needs (x after the channel-sum rewrite, if any)."""

    in_hwc: tuple[int, int, int]
    w_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    depthwise: bool
    rank: int  # largest rank of the 2-D kernel slices

    @property
    def n_maps(self) -> int:
        c, f = self.in_hwc[2], self.w_shape[3]
        return c * f if self.depthwise else f


def _output_seconds(layer: Layer) -> float:
    return 4 * layer.out_hw[0] * layer.out_hw[1] * layer.n_maps / OUTPUT_BYTES_PER_S


def cost_direct(layer: Layer) -> float:
    from ._common import TILE_MAX_BYTES

    kh, kw, _, f = layer.w_shape
    c = layer.in_hwc[2]
    oh, ow = layer.out_hw
    pixels = oh * ow
    copies = pixels * kh * kw * c
    macs = pixels * kh * kw * c * f
    if layer.depthwise and f < 4:
        macs *= 4 / f  # a matrix-vector product per channel runs far below GEMM speed
    row_bytes = 4 * ow * (kh * kw * c + layer.n_maps)
    n_tiles = math.ceil(oh / max(1, TILE_MAX_BYTES // row_bytes)) * math.ceil(row_bytes / TILE_MAX_BYTES)
    calls = n_tiles * 4  # band, patch copy, matmul and epilogue per tile
    # The product reads the whole patch matrix at least once: with few filters it is bound by
    # that read (as slow as the copy), not by its multiply-adds.
    product = max(macs / GEMM_MACS_PER_S, copies / COPY_FLOATS_PER_S)
    return copies / COPY_FLOATS_PER_S + product + calls * CALL_SECONDS + _output_seconds(layer)


def cost_separable(layer: Layer) -> float:
    kh, kw, _, f = layer.w_shape
    if layer.rank > MAX_RANK or min(kh, kw) == 1:
        return math.inf  # a 1×k or k×1 kernel gains nothing from splitting
    c = layer.in_hwc[2]
    oh, ow = layer.out_hw
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    terms = c * f * max(1, layer.rank)
    tile = min(oh, max(separable.MIN_TILE_ROWS, 4 * eh))
    vertical = oh * ((ow - 1) * sw + ew) * (tile * sh + eh)
    horizontal = oh * ow * ((separable.BLOCK_COLS - 1) * sw + ew)
    n_tiles = math.ceil(oh / tile)
    return (terms * (vertical + horizontal) / GEMM_MACS_PER_S + terms * oh * ow * TERM_SECONDS_PER_PIXEL
            + n_tiles * c * TILE_CHANNEL_SECONDS + _output_seconds(layer))


def cost_fft(layer: Layer) -> float:
    from . import _common, _threads, fft

    kh, kw, _, f = layer.w_shape
    c = layer.in_hwc[2]
    oh, ow = layer.out_hw
    # The blocks fft.correlate will cut: its memory budget, shared by the threads.
    budget = int(_common.TILE_FRACTION * 4 * oh * ow * layer.n_maps) // _threads.get_threads()
    rows, cols, n_h, n_w = fft.plan((oh, ow), (kh, kw), layer.stride, layer.dilation, c, layer.n_maps, budget,
                                    fast_len=fft.next_smooth)
    blocks = math.ceil(oh / rows) * math.ceil(ow / cols)
    points = n_h * n_w
    transforms = (c + layer.n_maps) * blocks * points * math.log2(max(2, points)) / FFT_POINTS_PER_S
    products = (layer.n_maps if layer.depthwise else c * f) * blocks * points / 2 / SPECTRUM_MACS_PER_S
    return transforms + products + blocks * 6 * CALL_SECONDS + _output_seconds(layer)


def cost_opencv(layer: Layer) -> float:
    kh, kw, _, f = layer.w_shape
    c = layer.in_hwc[2]
    h, w = layer.in_hwc[:2]
    calls = c * f
    if layer.rank == 1 and min(kh, kw) >= 3:
        seconds = calls * h * w * (kh + kw) / CV_SEP_TAPS_PER_S
    else:
        taps = 40 if max(kh, kw) >= CV_FFT_KERNEL else kh * kw  # big kernels: its DFT path
        seconds = calls * h * w * taps / CV_TAPS_PER_S
    return seconds + _output_seconds(layer)


COSTS = {"direct": cost_direct, "separable": cost_separable, "fft": cost_fft, "opencv": cost_opencv}


def rank_of(w: np.ndarray) -> int:
    """Largest rank of the kernels' 2-D slices (SVD; float32 tolerance)."""
    if min(w.shape[0], w.shape[1]) == 1:
        return 1
    if w.shape[2] * w.shape[3] > 256:
        return MAX_RANK + 1  # a big bank: the separable path would not pay off anyway
    return separable.max_rank_of(w)


#: OpenCV must beat the numpy paths by this much per call to be chosen. Importing cv2 costs
#: a process about 0.1 s, so a one-off command on a small image loses at most that, and a
#: batch earns it back within a few images. A fixed margin, not a per-process tally, keeps
#: the choice — and so every output byte — the same whatever the batch and its -j.
OPENCV_MARGIN_SECONDS = 0.02


def choose(layer: Layer, *, opencv_ok: bool) -> str:
    """The cheapest path for ``layer`` (``opencv_ok``: cv2 is importable and can serve it)."""
    costs = estimates(layer, opencv_ok=opencv_ok)
    if "opencv" in costs:
        costs["opencv"] += OPENCV_MARGIN_SECONDS
    return min(costs, key=costs.get)  # ties go to the first: direct (exact sums for small layers)


def estimates(layer: Layer, *, opencv_ok: bool = False) -> dict[str, float]:
    """Estimated seconds of every path (for ``--explain``-style reports and tests)."""
    return {name: fn(layer) + FIXED_SECONDS[name] for name, fn in COSTS.items() if name != "opencv" or opencv_ok}
