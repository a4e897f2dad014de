"""FFT path: blocks of output correlated in the frequency domain (``scipy.fft``).

Each block of ``th`` output rows reads a band of ``(th−1)·sh + eh`` padded input rows. The
band and the (dilated) kernels are transformed with real FFTs of a fast length ≥ the
band, multiplied (``X · conj(K)`` is a correlation) and summed over the input channels,
and transformed back; the first ``band − extent + 1`` rows and columns of a circular
correlation of that length are exact, and the stride picks every sh-th of them. This is
overlap-save over blocks of output (bands of whole rows when they fit the memory budget,
else square-ish 2-D blocks), so memory stays a few blocks whatever the image size. The
cost per pixel grows with log(block size), not with kh·kw: the path for large kernels.
"""

from __future__ import annotations

import numpy as np

from . import _common, _threads
from ._common import Padder, tiles

#: Scratch bytes one block of spectra may use (several blocks run at once, one per thread).
TILE_BYTES = 16 << 20
#: Floats of scratch per FFT point and per plane (channels + maps): the band or the
#: inverse transform's output (real), and the spectrum or product (complex, half as many
#: points), plus scipy.fft's own intermediate of the two-axis transform.
_BYTES_PER_POINT_PLANE = 12


def next_smooth(n: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ n: a fast FFT length, computed without importing scipy."""
    best, p5 = 1 << max(0, (n - 1).bit_length()), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def plan(out_hw, ksize, stride, dilation, channels: int, n_maps: int, budget: int,
         fast_len=None) -> tuple[int, int, int, int]:
    """(block rows, block columns, FFT height, FFT width) of output blocks for this layer.

    ``budget`` is the scratch bytes one block may use. Blocks are whole rows when a band
    of them fits, otherwise 2-D blocks: overlap-save needs a margin of one kernel extent
    around every block, and a square block wastes the least for its memory. The FFT side
    is at least twice the extent (so at least half of every transform is output).
    ``fast_len(n)`` rounds a length up to a fast one (default: scipy's, for real input);
    the cost model passes :func:`next_smooth` so that choosing a path imports no scipy.
    """
    if fast_len is None:
        from scipy import fft as sfft

        def fast_len(n: int) -> int:
            return sfft.next_fast_len(n, real=True)

    oh, ow = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (ksize[0] - 1) * dh + 1, (ksize[1] - 1) * dw + 1
    full_h, full_w = (oh - 1) * sh + eh, (ow - 1) * sw + ew
    budget = min(TILE_BYTES, max(64 << 10, budget))
    points = max(1, budget // (_BYTES_PER_POINT_PLANE * (channels + n_maps)))
    if full_w * max(2 * eh, 64) <= points:  # whole rows: a band as tall as the budget allows
        n_w = fast_len(full_w)
        want_h = max(2 * eh, points // n_w)
    else:
        side = max(2 * ew, int(points ** 0.5))
        n_w = fast_len(min(full_w, side))
        want_h = max(2 * eh, points // n_w)
    n_h = fast_len(min(full_h, want_h))
    rows = max(1, min(oh, (n_h - eh) // sh + 1))  # use the whole fast length
    cols = max(1, min(ow, (n_w - ew) // sw + 1))
    return rows, cols, n_h, n_w


def row_unit(x_shape, w_shape, *, out_hw, stride, dilation, depthwise: bool = False, scratch: int,
             **_ignored) -> int:
    """The rows of the blocks a call over all ``out_hw`` rows with ``scratch`` bytes cuts the output into.

    A call over rows [a, b) with the same ``scratch`` and ``layer_rows=out_hw[0]`` computes
    the same blocks, with the same transform sizes, when ``a`` is a multiple of it and
    ``b`` is one too or the last row.
    """
    kh, kw, _, f = w_shape
    c = x_shape[2]
    n_maps = c * f if depthwise else f
    return plan(out_hw, (kh, kw), stride, dilation, c, n_maps, scratch // _threads.CPUS)[0]


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, rows=None, epilogue=None, scratch=None, out=None,
              layer_rows: int | None = None) -> np.ndarray:
    """Cross-correlate ``x`` (H×W×C) with HWIO ``w`` by FFT; same contract as :func:`direct.correlate`.

    ``layer_rows``: with ``rows``, the output rows of the whole layer the call is a band of;
    its blocks are then planned for the whole layer (:func:`row_unit`), so the band's bits
    are those of the whole call. By default they are planned for the rows computed.
    """
    from scipy import fft as sfft

    h, w_in, c = x.shape
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    n_maps = c * f if depthwise else f
    row_a, row_b = rows if rows is not None else (0, oh)
    out = _common.result_array((row_b - row_a, ow, n_maps), out)
    total = scratch if scratch is not None else int(_common.TILE_FRACTION * out.nbytes)
    parts = _threads.CPUS  # every thread holds one block's spectra at a time (blocks are long calls)
    planned_rows = layer_rows if layer_rows is not None else row_b - row_a
    tile_rows, tile_cols, n_h, n_w = plan((planned_rows, ow), (kh, kw), stride, dilation, c, n_maps,
                                          total // parts)
    padder = Padder(x, pads, border)
    dilated = np.zeros((eh, ew, cw, f), dtype=np.float32)
    dilated[::dh, ::dw] = w
    # conj(K): multiplying by it turns the FFT's convolution into a correlation.
    spectra = np.conj(sfft.rfft2(dilated.transpose(2, 3, 0, 1), s=(n_h, n_w), workers=_threads.get_threads()))
    spectra = spectra.astype(np.complex64)  # (cw, f, n_h, n_w//2+1)
    ranges = _threads.tile_ranges(row_b - row_a, tile_rows, parts)
    workers = max(1, _threads.get_threads() // len(ranges))

    def work(r_lo: int, r_hi: int) -> None:
        for r0, r1, c0, c1 in tiles(r_hi - r_lo, ow, tile_rows, tile_cols):
            dest = out[r0 + r_lo:r1 + r_lo]
            r0, r1 = r0 + r_lo + row_a, r1 + r_lo + row_a
            th, tw = r1 - r0, c1 - c0
            band = padder.block(r0 * sh, (r1 - 1) * sh + eh, c0 * sw, (c1 - 1) * sw + ew, planar=True)
            spec = sfft.rfft2(band, s=(n_h, n_w), workers=workers)  # (C, n_h, n_w//2+1)
            del band
            if depthwise:
                prod = spec[:, None] * spectra  # (C, f, ...), broadcast over a shared kernel
                prod = prod.reshape(c * f, n_h, -1)
            else:
                prod = np.einsum("chw,cfhw->fhw", spec, spectra, optimize=False) if c > 1 else spec[0][None] * spectra[0]
            del spec
            res = sfft.irfft2(prod, s=(n_h, n_w), workers=workers, overwrite_x=True)
            del prod
            dest[:, c0:c1] = res[:, 0:(th - 1) * sh + 1:sh, 0:(tw - 1) * sw + 1:sw].transpose(1, 2, 0)
            if epilogue is not None and c1 == ow:
                epilogue(dest)

    _threads.run_ranges(work, ranges)
    return out
