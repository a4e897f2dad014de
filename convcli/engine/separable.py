"""Separable path: low-rank kernels as sums of (column ⊗ row) products, two 1-D passes each.

A kh×kw kernel of rank r (found by SVD) equals ``sum_k u_k v_kᵀ``, so correlating with it
is r vertical 1-D passes (kh taps) each followed by a horizontal 1-D pass (kw taps):
``r·(kh + kw)`` instead of ``kh·kw`` multiply-adds per pixel. Strides and dilations are
built into the passes (the vertical pass only computes the rows the stride keeps).

Each 1-D pass is a matrix product with a small banded (Toeplitz) matrix, so BLAS does
the arithmetic: the vertical pass multiplies a tile of input rows from the left by a
(tile_rows × band_rows) band, the horizontal pass cuts the rows into blocks of B output
columns and multiplies them from the right by one (L × B) band shared by every block.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _common, _threads
from ._common import Padder, tile_plan, tiles

#: Relative size of a singular value below which it counts as zero (float32 weights).
RANK_TOL = 1e-6
#: Output columns per horizontal block: larger blocks feed BLAS better, smaller waste less.
BLOCK_COLS = 64
#: Fewest output rows per tile (small kernels: fewer, larger matrix products).
MIN_TILE_ROWS = 32


#: Kernels up to this size have their SVD results kept (:func:`memo`).
MEMO_MAX_BYTES = 64 << 10
_MEMO: dict = {}
_MEMO_SIZE = 64


def memo(kind: tuple, w: np.ndarray, compute):
    """``compute()``, kept for the next call with the same kind and the same weights (their
    bytes): a command or a benchmark applying one kernel to many images decomposes it once
    (the SVDs took 0.1–0.3 ms of W5's 2.3 ms). Results must not be modified."""
    if w.nbytes > MEMO_MAX_BYTES:
        return compute()
    key = (kind, w.shape, w.dtype.str, w.tobytes())
    if key in _MEMO:
        return _MEMO[key]
    result = compute()
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))  # the oldest
    _MEMO[key] = result
    return result


def decompose(kernel: np.ndarray, max_rank: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """(u, v) pairs with ``kernel ≈ sum u vᵀ`` to float32 precision, or None if the rank exceeds ``max_rank``.

    An all-zero kernel gives an empty list.
    """
    k = np.asarray(kernel, dtype=np.float64)
    peak = np.abs(k).max()
    if peak == 0:
        return []
    u, s, vt = np.linalg.svd(k, full_matrices=False)
    rank = int(np.sum(s > RANK_TOL * s[0]))
    if rank > max_rank:
        return None
    terms = [((u[:, r] * s[r]).astype(np.float32), vt[r].astype(np.float32)) for r in range(rank)]
    rebuilt = sum(np.outer(a.astype(np.float64), b) for a, b in terms)
    if np.abs(rebuilt - k).max() > 1e-5 * peak:
        return None
    return terms


def terms_of(w: np.ndarray, depthwise: bool, channels: int, max_rank: int):
    """All (input channel, output map, u, v) terms of HWIO ``w``, or None if a kernel is not low-rank."""
    kh, kw, cw, f = w.shape
    cache: dict[tuple[int, int], list | None] = {}
    out = []
    for c in range(channels):
        for m in range(f):
            key = (c if cw > 1 else 0, m)
            if key not in cache:
                cache[key] = decompose(w[:, :, key[0], m], max_rank)
            if cache[key] is None:
                return None
            for u, v in cache[key]:
                out.append((c, c * f + m if depthwise else m, u, v))
    return out


def max_rank_of(w: np.ndarray) -> int:
    """The largest rank among the 2-D slices of HWIO ``w`` (for the cost model)."""
    kh, kw, cw, f = w.shape
    slices = np.asarray(w, np.float64).transpose(2, 3, 0, 1).reshape(cw * f, kh, kw)
    s = np.linalg.svd(slices, compute_uv=False)
    peak = s[:, :1]
    return int(np.max(np.sum(s > RANK_TOL * np.where(peak > 0, peak, np.inf), axis=1)))


def _band_matrix(taps: np.ndarray, n_out: int, stride: int, dilation: int) -> np.ndarray:
    """(n_out × L) matrix whose row b holds ``taps`` at columns b·stride + i·dilation."""
    length = (n_out - 1) * stride + (len(taps) - 1) * dilation + 1
    band = np.zeros((n_out, length), dtype=np.float32)
    rows = np.arange(n_out)[:, None]
    cols = rows * stride + np.arange(len(taps))[None, :] * dilation
    band[rows, cols] = taps[None, :]
    return band


def _tile_rows(channels: int, w_shape, out_hw, stride, dilation, depthwise: bool, most: int, total: int) -> int:
    """Output rows per tile when ``total`` bytes of scratch are shared by the machine's threads.

    ``most``: the largest number of terms one input channel has.
    """
    kh, kw, _, f = w_shape
    ow = out_hw[1]
    (_, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    n_maps = channels * f if depthwise else f
    block = min(BLOCK_COLS, ow)
    n_blocks = -(-ow // block)
    span = (block - 1) * sw + ew
    width = (n_blocks - 1) * block * sw + span
    # Per output row: vertical results (terms × width), their block copies, and the planar accumulator.
    per_row = 4 * (most * width * (1 + span / max(1, block * sw)) + n_maps * ow + channels * width * stride[0])
    parts = _threads.CPUS  # every thread holds one tile's scratch at a time
    return max(1, min(out_hw[0], max(MIN_TILE_ROWS, 4 * eh),
                      tile_plan(out_hw[0], 1, int(per_row), 0, max_bytes=4 << 20, budget=total // parts)[0]))


def row_unit(x_shape, w_shape, *, out_hw, stride, dilation, depthwise: bool = False, terms=None, scratch: int,
             **_ignored) -> int:
    """The rows of the tiles a call over all ``out_hw`` rows with ``scratch`` bytes cuts the output into.

    As :func:`direct.row_unit`: a call over rows [a, b) with the same ``scratch`` computes
    the same tiles when ``a`` is a multiple of it and ``b`` is one too or the last row.
    """
    counts: dict[int, int] = {}
    for term in terms or ():
        counts[term[0]] = counts.get(term[0], 0) + 1
    if not counts:  # no terms: the call writes zeros, in one piece
        return out_hw[0]
    return _tile_rows(x_shape[2], w_shape, out_hw, stride, dilation, depthwise, max(counts.values()), scratch)


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, terms=None, max_rank: int = 2, rows=None, epilogue=None, scratch=None,
              out=None) -> np.ndarray:
    """Cross-correlate ``x`` (H×W×C) with low-rank HWIO ``w``; same contract as :func:`direct.correlate`.

    ``terms`` (from :func:`terms_of`) may be passed when already computed. Raises
    ValueError if a kernel's rank exceeds ``max_rank`` (the dispatcher turns it into an
    OptionError naming the path).
    """
    h, w_in, c = x.shape
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if terms is None:
        terms = terms_of(w, depthwise, c, max_rank)
    if terms is None:
        raise ValueError(f"a kernel has rank above {max_rank}")
    n_maps = c * f if depthwise else f
    row_a, row_b = rows if rows is not None else (0, oh)
    out = _common.result_array((row_b - row_a, ow, n_maps), out)
    out[...] = 0
    if not terms:
        if epilogue is not None:
            epilogue(out)
        return out
    padder = Padder(x, pads, border)
    block = min(BLOCK_COLS, ow)
    n_blocks = -(-ow // block)
    span = (block - 1) * sw + ew  # input columns one block of outputs reads
    width = (n_blocks - 1) * block * sw + span  # >= the padded columns the output needs
    by_channel: dict[int, list] = {}
    for k, term in enumerate(terms):
        by_channel.setdefault(term[0], []).append((k, term))
    h_bands = [_band_matrix(t[3], block, sw, dw).T.copy() for t in terms]  # (span × block) each
    most = max(len(v) for v in by_channel.values())
    total = scratch if scratch is not None else int(_common.TILE_FRACTION * out.nbytes)
    tile_rows = min(row_b - row_a, _tile_rows(c, w.shape, (oh, ow), stride, dilation, depthwise, most, total))
    parts = _threads.CPUS  # every thread holds one tile's scratch at a time

    def work(r_lo: int, r_hi: int) -> None:
        for r0, r1, _, _ in tiles(r_hi - r_lo, 1, tile_rows, 1):
            dest = out[r0 + r_lo:r1 + r_lo]
            r0, r1 = r0 + r_lo + row_a, r1 + r_lo + row_a
            th = r1 - r0
            band = padder.block(r0 * sh, (r1 - 1) * sh + eh, 0, (ow - 1) * sw + ew, planar=True)
            acc = np.zeros((n_maps, th, ow), dtype=np.float32)
            for ch, ch_terms in by_channel.items():
                v_band = np.concatenate([_band_matrix(t[2], th, sh, dh) for _, t in ch_terms])  # (n·th × rows)
                mid = np.zeros((len(ch_terms) * th, width), dtype=np.float32)
                mid[:, :band.shape[2]] = v_band @ band[ch]
                # (n·th, n_blocks, span) copies of overlapping column windows, one per block
                windows = sliding_window_view(mid, span, axis=1)[:, ::block * sw][:, :n_blocks]
                windows = windows.reshape(len(ch_terms), th * n_blocks, span)
                bands = np.stack([h_bands[k] for k, _ in ch_terms])  # (n, span, block)
                res = np.matmul(windows, bands).reshape(len(ch_terms), th, n_blocks * block)
                for k, (_, t) in enumerate(ch_terms):
                    acc[t[1]] += res[k, :, :ow]
            dest[...] = acc.transpose(1, 2, 0)
            if epilogue is not None:
                epilogue(dest)

    macs_per_row = ow * len(terms) * (kh + kw)
    _threads.run_ranges(work, _threads.tile_ranges(row_b - row_a, tile_rows, parts,
                                                   2_000_000 // max(1, macs_per_row)))
    return out
