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
* ccore: the compiled direct loop (:mod:`convcli.engine.ccore`), when it is built: its
  vector multiply-adds (16 lanes each; lanes a layer's maps leave empty cost the same), the
  expansion of each input row for few-map layers, and the output's first touch;
* ccore-separable: the compiled core's two 1-D passes for rank-1 kernels where every map
  reads one channel (depthwise, or a 2-D kernel on one channel): ``kh + kw`` vector
  multiply-adds per 16 output values, a read of the input and a write of the output;
* opencv: per-channel filter2D/sepFilter2D calls, when cv2 is importable and can serve it:
  one call on the whole image when it gives the output (one map per channel), otherwise
  a call per (channel, filter) on bands of rows, plus the copies that split and merge planes.

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
FINISH_NS_PER_VALUE = 0.25  # one bias or activation pass over an output tile in cache, both cores (W1: 4 ms)
FIXED_SECONDS = {"direct": 2e-5, "separable": 3e-4, "fft": 5e-4, "opencv": 1e-4, "ccore": 2e-5,
                 "ccore-separable": 3e-5}  # set-up per layer
CALL_SECONDS = 1.2e-6  # one numpy call on a small block (the interpreter's share)
TERM_SECONDS_PER_PIXEL = 3e-9  # separable: the passes' copies and sums, per term and output pixel (W3: 50 ms measured)
TILE_CHANNEL_SECONDS = 1.5e-4  # separable: fixed work per (tile, channel)
FFT_POINTS_PER_S = 3.2e9  # (points · log2 points) per second, scipy.fft float32, both cores
SPECTRUM_MACS_PER_S = 0.5e9  # complex multiply-adds of the spectra (einsum over the channels)
# OpenCV, both cores, in ns per pixel and channel plane of one call (1080p, 3×3 to 31×31):
CV_CALL_NS = 0.4  # filter2D's fixed share
CV_SEP_NS = 0.3  # sepFilter2D's fixed share
CV_TAP_NS = 0.05  # per kernel tap (per row and column tap for sepFilter2D)
CV_PLANE_COPY_NS = 0.3  # splitting a band into channel planes, merging maps into H×W×F
CV_STRIDED_WRITE_NS = 1.5  # writing a map into every F-th place of a row (numpy)
CV_MAX_BANDED_MAPS = 4  # beyond this many maps a band's planes spill L2 (8 maps: 36 ms vs direct 26)
MAX_RANK = 2  # separable path: at most this many rank-1 terms per 2-D kernel
# The compiled core, both cores (x86-64-v4 build):
# 16-lane multiply-adds a second, both cores: one pixel × 16 maps (broadcast kernel; W4 45 ms
# on one core) and 16/L pixels × L maps (expand kernel, a vector load each; W3's 31×31 depthwise
# 250 ms on one core, so the separable paths keep large separable kernels)
CC_VECTOR_FMAS_PER_S = {0: 6.5e9, 1: 4e9, 2: 6.5e9, 3: 6.5e9}
# 1 or 2 maps: most of the expand kernel's loads cross a cache line (1080p gray 21×21: the C
# loop 95 ms, the FFT path 73 ms, in the same loaded run)
CC_SPLIT_LOAD_FACTOR = {1: 4.0, 2: 2.0}
CC_EXPAND_NS = 0.25  # expanding one input value into a ring row (per value and map lane block)
# Splitting one input value into its channel plane (planar kernel, dense layers of ≤ 8 maps:
# W1 8.3 ms on one core against the expand kernel's 13.5 ms; the FMA term above counts a
# load's line split as 3 FMAs shared by the maps)
CC_PLANE_NS = 0.1
CC_GATHER_FACTOR = 6.0  # depthwise gather kernel: building each vector lane by lane
CC_WRITE_BYTES_PER_S = 12e9  # storing the output (besides its first touch)
# The separable loop, both cores: 16-lane multiply-adds a second of its two passes (W3's
# 31 + 31 taps: 14 ms on one core, 24 M of them; W5's Sobel 2 ms against the direct loop's
# 5 ms in the same run), and the scalar horizontal pass a stride above 1 takes (per value
# and tap). Like cost_ccore, the input's read is in these rates.
CC_SEP_FMAS_PER_S = 3.5e9
CC_SEP_STRIDED_NS = 0.5


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
    finish: int = 0  # passes over the output for bias and activation (0, 1 or 2)

    @property
    def n_maps(self) -> int:
        c, f = self.in_hwc[2], self.w_shape[3]
        return c * f if self.depthwise else f


def _output_seconds(layer: Layer, finish: int | None = None) -> float:
    """First touch of the output, and the bias and activation passes over it."""
    values = layer.out_hw[0] * layer.out_hw[1] * layer.n_maps
    finish = layer.finish if finish is None else finish
    return 4 * values / OUTPUT_BYTES_PER_S + finish * values * FINISH_NS_PER_VALUE * 1e-9


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
    budget = int(_common.TILE_FRACTION * 4 * oh * ow * layer.n_maps) // _threads.CPUS
    rows, cols, n_h, n_w = fft.plan((oh, ow), (kh, kw), layer.stride, layer.dilation, c, layer.n_maps, budget,
                                    fast_len=fft.next_smooth)
    blocks = math.ceil(oh / rows) * math.ceil(ow / cols)
    points = n_h * n_w
    transforms = (c + layer.n_maps) * blocks * points * math.log2(max(2, points)) / FFT_POINTS_PER_S
    products = (layer.n_maps if layer.depthwise else c * f) * blocks * points / 2 / SPECTRUM_MACS_PER_S
    return transforms + products + blocks * 6 * CALL_SECONDS + _output_seconds(layer)


def cost_opencv(layer: Layer) -> float:
    from . import opencv

    kh, kw, cw, f = layer.w_shape
    h, w, c = layer.in_hwc
    pixels = h * w
    sep = layer.rank == 1 and min(kh, kw) >= 3
    per_pixel = CV_SEP_NS + CV_TAP_NS * (kh + kw) if sep else CV_CALL_NS + CV_TAP_NS * kh * kw
    if opencv.one_call(layer.in_hwc, layer.w_shape, layer.depthwise) and tuple(layer.out_hw) == (h, w):
        return c * pixels * per_pixel * 1e-9 + _output_seconds(layer)  # one call, straight into the output
    if layer.n_maps > CV_MAX_BANDED_MAPS:
        return math.inf  # measured: more maps per band spill the cache, and the GEMM wins
    seconds = c * f * pixels * per_pixel  # every (channel, filter) pair is a call on one plane
    if layer.depthwise and cw == 1 and c <= 4:
        seconds += layer.n_maps * pixels * CV_STRIDED_WRITE_NS  # each filter's maps land c apart
        return seconds * 1e-9 + _output_seconds(layer)
    seconds += (layer.n_maps + (c if c > 1 else 0)) * pixels * CV_PLANE_COPY_NS  # merge, split
    # Map by map, the bias rides on the first call (OpenCV's delta): only the activation is a pass.
    return seconds * 1e-9 + _output_seconds(layer, finish=min(layer.finish, 1))


def cost_ccore(layer: Layer) -> float:
    from . import ccore

    kh, kw, _, f = layer.w_shape
    h, w, c = layer.in_hwc
    oh, ow = layer.out_hw
    mode, vf = ccore.plan(layer.in_hwc, layer.w_shape, layer.out_hw, layer.stride, layer.dilation, layer.depthwise)
    blocks = -(-layer.n_maps // vf)
    planes = 1 if layer.depthwise else c
    if mode == 3:  # planar: a vector is 16 pixels of one map; a load serves one FMA per map
        fmas = oh * -(-ow // 16) * kh * kw * c * layer.n_maps * (1 + 3 / layer.n_maps)
        in_rows = min(h, oh * layer.stride[0] + kh * layer.dilation[0])
        extra = in_rows * (ow * layer.stride[1] + kw * layer.dilation[1]) * c * CC_PLANE_NS * 1e-9
    elif mode == 1:  # expand: a vector is 16 / vf pixels
        fmas = oh * -(-ow * vf // 16) * kh * kw * planes * blocks
        fmas *= CC_SPLIT_LOAD_FACTOR.get(vf, 1.0)
        in_rows = min(h, oh * layer.stride[0] + kh * layer.dilation[0])
        extra = in_rows * (ow * layer.stride[1] + kw * layer.dilation[1]) * (c if not layer.depthwise else blocks)
        extra *= CC_EXPAND_NS * 1e-9
    else:
        fmas = oh * ow * kh * kw * planes * blocks * (CC_GATHER_FACTOR if mode == 2 else 1)
        extra = 0.0
    write = 4 * oh * ow * layer.n_maps / CC_WRITE_BYTES_PER_S
    return fmas / CC_VECTOR_FMAS_PER_S[mode] + extra + write + _output_seconds(layer, finish=0)


def cost_ccore_separable(layer: Layer) -> float:
    from . import ccore

    kh, kw, _, f = layer.w_shape
    h, w, c = layer.in_hwc
    oh, ow = layer.out_hw
    if layer.rank > 1 or not ccore.separable_ok(layer.in_hwc, layer.w_shape, layer.depthwise):
        return math.inf
    vectors = -(-ow * layer.n_maps // 16)  # of an output row
    in_rows = min(h + kh * layer.dilation[0], oh * layer.stride[0] + kh * layer.dilation[0])
    seconds = oh * vectors * kh / CC_SEP_FMAS_PER_S  # vertical
    if layer.stride[1] == 1:
        seconds += in_rows * vectors * kw / CC_SEP_FMAS_PER_S
    else:
        seconds += in_rows * ow * layer.n_maps * kw * CC_SEP_STRIDED_NS * 1e-9
    seconds += 4 * oh * ow * layer.n_maps / CC_WRITE_BYTES_PER_S
    return seconds + _output_seconds(layer, finish=0)


COSTS = {"direct": cost_direct, "separable": cost_separable, "fft": cost_fft, "opencv": cost_opencv, "ccore": cost_ccore,
         "ccore-separable": cost_ccore_separable}


def rank_of(w: np.ndarray) -> int:
    """Largest rank of the kernels' 2-D slices (SVD; float32 tolerance)."""
    if min(w.shape[0], w.shape[1]) == 1:
        return 1
    if w.shape[2] * w.shape[3] > 256:
        return MAX_RANK + 1  # a big bank: the separable path would not pay off anyway
    return separable.memo(("rank",), w, lambda: separable.max_rank_of(w))


#: OpenCV must beat the numpy paths by this much per call to be chosen. Importing cv2 costs
#: a process about 21 ms after numpy (measured with ``python -X importtime``), so a one-off
#: command loses at most about 6 ms, and a batch earns the import back from its second
#: image. A fixed margin, not a per-process tally, keeps the choice — and so every output
#: byte — the same whatever the batch and its -j.
OPENCV_MARGIN_SECONDS = 0.015


def choose(layer: Layer, *, opencv_ok: bool, ccore_ok: bool = False) -> str:
    """The cheapest path for ``layer`` (``opencv_ok``: cv2 is importable and can serve it;
    ``ccore_ok``: the compiled core is built and enabled)."""
    costs = estimates(layer, opencv_ok=opencv_ok, ccore_ok=ccore_ok)
    if "opencv" in costs:
        costs["opencv"] += OPENCV_MARGIN_SECONDS
    return min(costs, key=costs.get)  # ties go to the first: direct (exact sums for small layers)


def estimates(layer: Layer, *, opencv_ok: bool = False, ccore_ok: bool = False) -> dict[str, float]:
    """Estimated seconds of every path (for ``--explain``-style reports and tests)."""
    allowed = {"opencv": opencv_ok, "ccore": ccore_ok, "ccore-separable": ccore_ok}
    return {name: fn(layer) + FIXED_SECONDS[name] for name, fn in COSTS.items() if allowed.get(name, True)}
