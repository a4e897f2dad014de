"""Direct cross-correlation: banded im2col feeding a BLAS matmul.

For each tile of output rows, the padded input rows it needs are gathered
(:meth:`~convcli.engine._common.Padder.block`, channel-planar) and every kernel tap's
strided slice of it is copied into a tap-major patch matrix P (kh·kw·C × pixels) by one
numpy call over a 5-D strided view (taps × channels × rows × columns; the innermost runs
are rows of the tile). ``P.T @ W`` (W: the HWIO weights as a kh·kw·C × F matrix, passed
to BLAS as a transposed operand, no copy) writes the tile's H×W×F output directly, in
slices of a few thousand pixels that BLAS runs at cache speed.

Strides and dilations are the view's steps, so no wasted work. The patch matrix of one
tile (and its band) is the only scratch memory, reused from tile to tile;
:func:`~convcli.engine._common.tile_plan` keeps it a few MB and, over all threads, below a
fraction of the output, so a whole-image im2col is never built. Row ranges run on the
engine's threads.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _common, _threads
from ._common import Padder, tile_plan, tiles

#: Work (multiply-accumulates) below which a layer runs on one thread.
_MIN_MACS_PER_THREAD = 2_000_000


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, rows=None, epilogue=None, scratch=None, out=None) -> np.ndarray:
    """Cross-correlate float32 ``x`` (H×W×C) with ``w``; returns float32 (oh, ow, maps).

    ``w`` is HWIO (kh, kw, C, F) giving F maps, or with ``depthwise`` (kh, kw, C or 1, M)
    giving C·M maps in channel-major order (c·M + m). ``pads`` are (top, bottom, left,
    right) from :mod:`convcli.geometry`; ``out_hw`` the output size it computed.
    ``rows=(a, b)`` computes output rows [a, b) only (an (b−a, ow, maps) array);
    ``epilogue(block)`` is called on each finished block of whole output rows while it is
    still in cache (bias and activation, in place); ``scratch`` is the tile memory budget in
    bytes, in all (the call's threads share it), when the caller computes the layer in
    chunks; ``out``, when given, is the
    C-contiguous float32 array of the result's shape to write into (and is returned).
    Every path shares this contract.
    """
    c = x.shape[2]
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    row_a, row_b = rows if rows is not None else (0, oh)
    n_maps = c * f if depthwise else f
    out = _common.result_array((row_b - row_a, ow, n_maps), out)
    padder = Padder(x, pads, border)
    if depthwise:
        # (C or 1, M, kh·kw): per channel, the matrix applied to its (kh·kw × pixels) patches.
        wmat = np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(cw, f, kh * kw))
    else:
        wmat = np.ascontiguousarray(w.reshape(kh * kw * c, f))  # HWIO rows in (i, j, c) order
    macs_per_row = ow * kh * kw * c * f
    min_rows = max(1, _MIN_MACS_PER_THREAD // max(1, macs_per_row))
    total = scratch if scratch is not None else int(_common.TILE_FRACTION * out.nbytes)
    tile_h, tile_w, parts = _plan(c, w.shape, depthwise, (row_b - row_a, ow), total)
    ranges = _threads.tile_ranges(row_b - row_a, tile_h, parts, min_rows)

    def work(r_lo: int, r_hi: int) -> None:
        scratch_bufs = _common.thread_buffers()  # patches and band, reused by every tile
        for r0, r1, c0, c1 in tiles(r_hi - r_lo, ow, tile_h, tile_w):
            dest = out[r0 + r_lo:r1 + r_lo]
            r0, r1 = r0 + r_lo + row_a, r1 + r_lo + row_a
            _tile(padder, dest, wmat, (r0, r1, c0, c1), (kh, kw), stride, dilation, depthwise, scratch_bufs)
            if epilogue is not None and c1 == ow:
                epilogue(dest)

    _threads.run_ranges(work, ranges)
    return out


def _plan(channels: int, w_shape, depthwise: bool, out_hw, total: int) -> tuple[int, int, int]:
    """(tile rows, tile columns, parts) for ``out_hw`` output pixels sharing ``total`` bytes of scratch.

    Every thread holds one tile's scratch at a time: they share the layer's budget. Tiles
    of a few MB: the matmul runs in cache-sized slices anyway (GEMM_CHUNK), and fewer,
    larger tiles mean fewer numpy calls and fewer hand-offs of the GIL between threads
    (with L2-sized tiles two threads ran slower than one).
    """
    kh, kw, _, f = w_shape
    n_maps = channels * f if depthwise else f
    per_pixel = 4 * (kh * kw * channels + n_maps)
    parts = _threads.threads_for(total, tile_macs_per_byte(channels, w_shape, depthwise))
    tile_h, tile_w = tile_plan(out_hw[0], out_hw[1], per_pixel, 0, budget=total // parts)
    return tile_h, tile_w, parts


def row_unit(x_shape, w_shape, *, out_hw, depthwise: bool = False, scratch: int, **_ignored) -> int:
    """The rows of the tiles a call over all ``out_hw`` rows with ``scratch`` bytes cuts the output into.

    A call with ``rows=(a, b)`` and the same ``scratch`` computes the same tiles, so the
    same bits, when ``a`` is a multiple of it and ``b`` is one too or the last row.
    """
    return _plan(x_shape[2], w_shape, depthwise, out_hw, scratch)[0]


def tile_macs_per_byte(channels: int, w_shape, depthwise: bool) -> float:
    """Multiply-adds per byte of a tile's scratch (patches and result), for ``channels`` inputs.

    Per output pixel a tile holds kh·kw·C patch values and its maps (F, or C·M depthwise),
    and does kh·kw·C·F multiply-adds either way.
    """
    kh, kw, _, f = w_shape
    n_maps = channels * f if depthwise else f
    return kh * kw * channels * f / (4 * (kh * kw * channels + n_maps))


#: Output pixels per BLAS call: the patch matrix of a tile is multiplied in slices of this
#: many columns (one batched matmul), which OpenBLAS runs 1.5–2× faster than one long
#: skinny product whose operands spill out of cache.
GEMM_CHUNK = 2048


def _tile(padder, dest, wmat, box, ksize, stride, dilation, depthwise, bufs: _common.Buffers) -> None:
    """Compute output rows [r0, r1) × columns [c0, c1) of ``box`` into ``dest`` (those rows, all columns)."""
    r0, r1, c0, c1 = box
    kh, kw = ksize
    (sh, sw), (dh, dw) = stride, dilation
    c = padder.x.shape[2]
    th, tw = r1 - r0, c1 - c0
    # Channel-planar (C, rows, cols): every tap below is then a block copy of contiguous runs.
    band = padder.block(r0 * sh, (r1 - 1) * sh + (kh - 1) * dh + 1,
                        c0 * sw, (c1 - 1) * sw + (kw - 1) * dw + 1, planar=True, buffers=bufs)
    # patches[i, j, ch] is the (th × tw) block that tap (i, j) of channel ch sees: the band
    # read with the taps' steps (dilation) and the pixels' steps (stride). All kh·kw·C
    # blocks are copied by one numpy call, so the copy runs without the GIL for the whole
    # tile (per-tap calls on small tiles made two threads slower than one).
    sc, sr, sx = band.strides
    taps = as_strided(band, shape=(kh, kw, c, th, tw), strides=(dh * sr, dw * sx, sc, sh * sr, sw * sx),
                      writeable=False)
    patches = bufs.get("patches", (kh, kw, c, th, tw))
    np.copyto(patches, taps)
    if depthwise:
        # (C, M, kh·kw) @ (C, kh·kw, pixels) -> (C, M, pixels); map c·M + m is row (c, m).
        per_channel = patches.reshape(kh * kw, c, th * tw).transpose(1, 0, 2)
        res = np.matmul(wmat, per_channel)
        dest[:, c0:c1] = res.reshape(c * wmat.shape[1], th, tw).transpose(1, 2, 0)
        return
    columns = patches.reshape(kh * kw * c, th * tw)
    if c0 == 0 and c1 == dest.shape[1]:
        _matmul_chunks(columns, wmat, dest.reshape(th * tw, -1))
    else:
        res = bufs.get("result", (th * tw, wmat.shape[1]))
        _matmul_chunks(columns, wmat, res)
        dest[:, c0:c1] = res.reshape(th, tw, -1)


def _matmul_chunks(columns: np.ndarray, wmat: np.ndarray, out: np.ndarray) -> None:
    """``out = columns.T @ wmat`` in slices of :data:`GEMM_CHUNK` pixels (one batched call).

    ``columns`` is (K, n), ``wmat`` (K, F), ``out`` (n, F) C-contiguous. Each slice's
    transposed operand is a Fortran-ordered view that BLAS reads in place.
    """
    k, n = columns.shape
    whole = n // GEMM_CHUNK * GEMM_CHUNK
    if whole:
        batches = whole // GEMM_CHUNK
        np.matmul(columns[:, :whole].reshape(k, batches, GEMM_CHUNK).transpose(1, 2, 0), wmat,
                  out=out[:whole].reshape(batches, GEMM_CHUNK, -1))
    if whole < n:
        np.matmul(columns[:, whole:].T, wmat, out=out[whole:])
