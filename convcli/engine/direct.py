"""Direct cross-correlation: banded im2col feeding a BLAS matmul.

For each tile of output rows, the padded input rows it needs are gathered
(:meth:`~convcli.engine._common.Padder.block`, channel-planar) and one strided slice of it per
kernel tap (i, j) is copied into a tap-major patch matrix P (kh·kw·C × pixels). Each copy
is a plain 2-D block copy (rows of the output tile), far cheaper than copying a 5-D
window view pixel by pixel. ``P.T @ W`` (W: the HWIO weights as a kh·kw·C × F matrix,
passed to BLAS as a transposed operand, no copy) writes the tile's H×W×F output directly.

Strides and dilations are the slice steps, so no wasted work. The patch matrix of one
tile is the only scratch memory; :func:`~convcli.engine._common.tile_plan` keeps it
around the size of the L2 cache and below a fraction of the output, so a whole-image
im2col is never built. Row ranges run on the engine's threads.
"""

from __future__ import annotations

import numpy as np

from . import _common, _threads
from ._common import Padder, tile_plan, tiles

#: Work (multiply-accumulates) below which a layer runs on one thread.
_MIN_MACS_PER_THREAD = 2_000_000
#: Multiply-adds per output pixel below which a layer is bound by memory traffic (the patch
#: copies), not arithmetic: its tiles are kept L2-sized. (Two threads on such layers measured
#: from 0.75× to 1.05× the one-thread time on the shared 2-core VM, so both cores are used.)
_MIN_MACS_PER_PIXEL_ARITHMETIC = 256


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, rows=None, epilogue=None, scratch=None) -> np.ndarray:
    """Cross-correlate float32 ``x`` (H×W×C) with ``w``; returns float32 (oh, ow, maps).

    ``w`` is HWIO (kh, kw, C, F) giving F maps, or with ``depthwise`` (kh, kw, C or 1, M)
    giving C·M maps in channel-major order (c·M + m). ``pads`` are (top, bottom, left,
    right) from :mod:`convcli.geometry`; ``out_hw`` the output size it computed.
    ``rows=(a, b)`` computes output rows [a, b) only (an (b−a, ow, maps) array);
    ``epilogue(block)`` is called on each finished block of whole output rows while it is
    still in cache (bias and activation, in place); ``scratch`` is the tile memory budget in
    bytes when the caller computes the layer in chunks. Every path shares this contract.
    """
    c = x.shape[2]
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    row_a, row_b = rows if rows is not None else (0, oh)
    n_maps = c * f if depthwise else f
    out = np.empty((row_b - row_a, ow, n_maps), dtype=np.float32)
    padder = Padder(x, pads, border)
    if depthwise:
        # (C or 1, M, kh·kw): per channel, the matrix applied to its (kh·kw × pixels) patches.
        wmat = np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(cw, f, kh * kw))
    else:
        wmat = np.ascontiguousarray(w.reshape(kh * kw * c, f))  # HWIO rows in (i, j, c) order
    per_pixel = 4 * (kh * kw * c + n_maps)
    macs_per_pixel = kh * kw * (1 if depthwise else c) * f * (c if depthwise else 1)
    macs_per_row = ow * macs_per_pixel
    min_rows = max(1, _MIN_MACS_PER_THREAD // max(1, macs_per_row))
    memory_bound = macs_per_pixel < _MIN_MACS_PER_PIXEL_ARITHMETIC

    def work(r_lo: int, r_hi: int) -> None:
        # Memory-bound tiles stay in L2; arithmetic-bound ones are larger, so fewer numpy
        # calls (and fewer hand-offs of the GIL between threads) per multiply-add.
        tile_h, tile_w = tile_plan(r_hi - r_lo, ow, per_pixel, out.nbytes,
                                   max_bytes=min(_common.CACHE_TILE_BYTES, _common.TILE_MAX_BYTES)
                                   if memory_bound else None, budget=scratch)
        for r0, r1, c0, c1 in tiles(r_hi - r_lo, ow, tile_h, tile_w):
            dest = out[r0 + r_lo:r1 + r_lo]
            r0, r1 = r0 + r_lo + row_a, r1 + r_lo + row_a
            _tile(padder, dest, wmat, (r0, r1, c0, c1), (kh, kw), stride, dilation, depthwise)
            if epilogue is not None and c1 == ow:
                epilogue(dest)

    _threads.run_ranges(work, _threads.split_rows(row_b - row_a, min_rows))
    return out


def _tile(padder, dest, wmat, box, ksize, stride, dilation, depthwise) -> None:
    """Compute output rows [r0, r1) × columns [c0, c1) of ``box`` into ``dest`` (those rows, all columns)."""
    r0, r1, c0, c1 = box
    kh, kw = ksize
    (sh, sw), (dh, dw) = stride, dilation
    c = padder.x.shape[2]
    th, tw = r1 - r0, c1 - c0
    # Channel-planar (C, rows, cols): every tap below is then a block copy of contiguous runs.
    band = padder.block(r0 * sh, (r1 - 1) * sh + (kh - 1) * dh + 1,
                        c0 * sw, (c1 - 1) * sw + (kw - 1) * dw + 1, planar=True)
    # patches[i, j, ch] is the (th × tw) block that tap (i, j) of channel ch sees.
    patches = np.empty((kh, kw, c, th, tw), dtype=np.float32)
    if sh == 1 and sw == 1:
        for i in range(kh):
            rows = band[:, i * dh:i * dh + th]
            for j in range(kw):
                patches[i, j] = rows[:, :, j * dw:j * dw + tw]
    else:
        # Polyphase: split the band once into its sh·sw phases (rows ≡ a mod sh, columns ≡ b
        # mod sw); tap (i, j) then reads one phase with unit steps. One strided pass over
        # the band instead of a strided copy per tap.
        phases = {(a, b): np.ascontiguousarray(band[:, a::sh, b::sw]) for a in range(sh) for b in range(sw)
                  if a < band.shape[1] and b < band.shape[2]}
        for i in range(kh):
            a, ri = (i * dh) % sh, (i * dh) // sh
            for j in range(kw):
                b, cj = (j * dw) % sw, (j * dw) // sw
                patches[i, j] = phases[a, b][:, ri:ri + th, cj:cj + tw]
    if depthwise:
        # (C, M, kh·kw) @ (C, kh·kw, pixels) -> (C, M, pixels); map c·M + m is row (c, m).
        per_channel = patches.reshape(kh * kw, c, th * tw).transpose(1, 0, 2)
        res = np.matmul(wmat, per_channel)
        dest[:, c0:c1] = res.reshape(c * wmat.shape[1], th, tw).transpose(1, 2, 0)
        return
    p_t = patches.reshape(kh * kw * c, th * tw).T  # Fortran-ordered view: BLAS transposes it
    if c0 == 0 and c1 == dest.shape[1]:
        np.matmul(p_t, wmat, out=dest.reshape(th * tw, -1))
    else:
        dest[:, c0:c1] = np.matmul(p_t, wmat).reshape(th, tw, -1)
