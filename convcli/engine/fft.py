"""FFT path: tiles of output rows correlated in the frequency domain (``scipy.fft``).

Each tile of ``th`` output rows reads a band of ``(th−1)·sh + eh`` padded input rows. The
band and the (dilated) kernels are transformed with real FFTs of a fast length ≥ the
band, multiplied (``X · conj(K)`` is a correlation) and summed over the input channels,
and transformed back; the first ``band − extent + 1`` rows and columns of a circular
correlation of that length are exact, and the stride picks every sh-th of them. This is
overlap-save over row tiles, so memory stays a few tiles whatever the image size. The cost
per pixel grows with log(tile size), not with kh·kw: the path for large kernels.
"""

from __future__ import annotations

import numpy as np

from . import _common, _threads
from ._common import Padder, tiles

#: Scratch bytes one tile of spectra may use (several tiles run at once, one per thread).
TILE_BYTES = 16 << 20


def plan(out_hw, ksize, stride, dilation, channels: int, n_maps: int, budget: int) -> tuple[int, int, int]:
    """(tile rows, FFT height, FFT width) for this layer; ``budget``: scratch bytes per tile."""
    from scipy import fft as sfft

    oh, ow = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (ksize[0] - 1) * dh + 1, (ksize[1] - 1) * dw + 1
    n_w = sfft.next_fast_len((ow - 1) * sw + ew, real=True)
    per_row = 8 * (n_w // 2 + 1) * (channels + n_maps) + 4 * n_w * (channels + n_maps)
    budget = min(TILE_BYTES, max(1 << 20, budget))
    rows = max(1, min(oh, budget // max(1, per_row * sh), max(64, 4 * eh) // sh))
    n_h = sfft.next_fast_len((rows - 1) * sh + eh, real=True)
    rows = max(1, min(oh, (n_h - eh) // sh + 1))  # use the whole fast length
    return rows, n_h, n_w


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, rows=None, epilogue=None, scratch=None) -> np.ndarray:
    """Cross-correlate ``x`` (H×W×C) with HWIO ``w`` by FFT; same contract as :func:`direct.correlate`."""
    from scipy import fft as sfft

    h, w_in, c = x.shape
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    n_maps = c * f if depthwise else f
    row_a, row_b = rows if rows is not None else (0, oh)
    out = np.empty((row_b - row_a, ow, n_maps), dtype=np.float32)
    if scratch is None:  # every thread holds one tile's spectra at a time
        scratch = int(_common.TILE_FRACTION * out.nbytes) // _threads.get_threads()
    tile_rows, n_h, n_w = plan((row_b - row_a, ow), (kh, kw), stride, dilation, c, n_maps, scratch)
    padder = Padder(x, pads, border)
    dilated = np.zeros((eh, ew, cw, f), dtype=np.float32)
    dilated[::dh, ::dw] = w
    # conj(K): multiplying by it turns the FFT's convolution into a correlation.
    spectra = np.conj(sfft.rfft2(dilated.transpose(2, 3, 0, 1), s=(n_h, n_w), workers=_threads.get_threads()))
    spectra = spectra.astype(np.complex64)  # (cw, f, n_h, n_w//2+1)
    wb = (ow - 1) * sw + ew
    ranges = _threads.split_rows(row_b - row_a, tile_rows)
    workers = max(1, _threads.get_threads() // len(ranges))

    def work(r_lo: int, r_hi: int) -> None:
        for r0, r1, _, _ in tiles(r_hi - r_lo, 1, tile_rows, 1):
            dest = out[r0 + r_lo:r1 + r_lo]
            r0, r1 = r0 + r_lo + row_a, r1 + r_lo + row_a
            th = r1 - r0
            band = padder.block(r0 * sh, (r1 - 1) * sh + eh, 0, wb, planar=True)
            spec = sfft.rfft2(band, s=(n_h, n_w), workers=workers)  # (C, n_h, n_w//2+1)
            if depthwise:
                prod = spec[:, None] * spectra  # (C, f, ...), broadcast over a shared kernel
                prod = prod.reshape(c * f, n_h, -1)
            else:
                prod = np.einsum("chw,cfhw->fhw", spec, spectra, optimize=False) if c > 1 else spec[0][None] * spectra[0]
            res = sfft.irfft2(prod, s=(n_h, n_w), workers=workers)
            dest[...] = res[:, 0:(th - 1) * sh + 1:sh, 0:(ow - 1) * sw + 1:sw].transpose(1, 2, 0)
            if epilogue is not None:
                epilogue(dest)

    _threads.run_ranges(work, ranges)
    return out
