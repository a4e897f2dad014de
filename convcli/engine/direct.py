"""Direct cross-correlation: banded im2col feeding a BLAS matmul.

For each tile of output rows the padded input rows it needs are gathered
(:func:`~convcli.engine._common.padded_band`), a strided window view
(:func:`numpy.lib.stride_tricks.sliding_window_view`, sliced by stride and dilation) is
copied into a (pixels × kh·kw·C) patch matrix and multiplied by the (kh·kw·C × F) weight
matrix. The patch matrix of one tile is the only scratch memory, bounded by
:func:`~convcli.engine._common.tile_plan`, so a whole-image im2col is never built.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._common import padded_band, source_index, tile_plan, tiles


def _windows(band: np.ndarray, kh: int, kw: int, stride, dilation) -> np.ndarray:
    """(th, tw, C, kh, kw) view of every (dilated, strided) kernel window of ``band``."""
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = sliding_window_view(band, (eh, ew), axis=(0, 1))
    return win[::sh, ::sw, :, ::dh, ::dw]


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, row_range: tuple[int, int] | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Cross-correlate float32 ``x`` (H×W×C) with ``w``.

    ``w`` is HWIO (kh, kw, C, F) giving F maps, or with ``depthwise`` (kh, kw, C or 1, M)
    giving C·M maps in channel-major order (c·M + m). ``pads`` are (top, bottom, left,
    right) from :mod:`convcli.geometry`; ``out_hw`` the output size it computed.
    ``row_range`` restricts the work to output rows [r0, r1) (used by the thread pool);
    ``out`` is then the full output array to write into.
    """
    h, w_in, c = x.shape
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    top, bottom, left, right = pads
    n_out = c * f if depthwise else f
    if out is None:
        out = np.empty((oh, ow, n_out), dtype=np.float32)
    r_lo, r_hi = row_range if row_range is not None else (0, oh)
    rsrc = source_index(h, top, bottom, border)
    csrc = source_index(w_in, left, right, border)

    if depthwise:
        # (C or 1, kh·kw, M): one small matrix per channel for a batched matmul.
        wmat = np.ascontiguousarray(w.transpose(2, 0, 1, 3).reshape(cw, kh * kw, f))
        per_pixel = 4 * (c * kh * kw + 2 * c * f)
    else:
        # HWIO flattens in (i, j, c) order, matching the patch layout below, in which
        # the (j, c) run of a patch row is contiguous in memory (cheap copy).
        wmat = np.ascontiguousarray(w.reshape(kh * kw * c, f))
        per_pixel = 4 * (kh * kw * c + f)
    tile_h, tile_w = tile_plan(r_hi - r_lo, ow, per_pixel, out.nbytes)

    for r0, r1, c0, c1 in tiles(r_hi - r_lo, ow, tile_h, tile_w):
        r0, r1 = r0 + r_lo, r1 + r_lo
        band = padded_band(x, rsrc[r0 * sh:(r1 - 1) * sh + eh], csrc[c0 * sw:(c1 - 1) * sw + ew])
        win = _windows(band, kh, kw, stride, dilation)
        th, tw = r1 - r0, c1 - c0
        if depthwise:
            patches = win.transpose(2, 0, 1, 3, 4).reshape(c, th * tw, kh * kw)
            res = np.matmul(patches, wmat)  # (C, pixels, M)
            out[r0:r1, c0:c1] = res.transpose(1, 0, 2).reshape(th, tw, c * f)
        else:
            patches = win.transpose(0, 1, 3, 4, 2).reshape(th * tw, kh * kw * c)
            if c0 == 0 and c1 == ow:
                np.matmul(patches, wmat, out=out[r0:r1].reshape(th * tw, f))
            else:
                out[r0:r1, c0:c1] = np.matmul(patches, wmat).reshape(th, tw, f)
    return out
