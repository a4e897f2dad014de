"""Optional OpenCV path: ``cv2.filter2D`` / ``cv2.sepFilter2D`` for per-channel 2-D filtering.

Used only when ``cv2`` (``opencv-python-headless``) is importable. It serves layers made of
2-D filtering per input channel at stride 1 and dilation 1, whose padding OpenCV's anchor
can express (``top ≤ kh−1``, ``top + bottom ≤ kh−1``, likewise left/right) and whose border
OpenCV has (zeros, reflect, replicate; not circular): depthwise layers, one-channel inputs
(including 2-D kernels summed over channels), and few-channel 3-D kernels.

A layer that one call serves (one map per channel) runs as that call on the whole image, on
OpenCV's threads. Any other runs in bands of rows on the engine's threads: a call per
(channel, filter) on the band's planes, the sums, then the maps interleaved into the output
rows; the bias rides on the calls and the activation runs per plane while it is in cache.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

from . import _common, _threads

_BORDERS = {"zeros": "BORDER_CONSTANT", "reflect": "BORDER_REFLECT_101", "replicate": "BORDER_REPLICATE"}
#: Most (input channel, filter) 2-D filter calls a non-depthwise layer may take here.
MAX_CALLS = 16
#: From this kernel size filter2D switches to a DFT over the whole image (memory ≈ several
#: image copies, over the engine's budget): such kernels go to the engine's tiled FFT path.
DFT_KERNEL = 11


def installed() -> bool:
    """Whether cv2 can be found, without importing it."""
    import sys

    return "cv2" in sys.modules or _findable()


@functools.lru_cache(maxsize=1)
def _findable() -> bool:
    """Whether the import system finds cv2, looked up once per process: the search stats
    every entry of sys.path (30–70 µs a layer, where OpenCV is not installed)."""
    import importlib.util

    return importlib.util.find_spec("cv2") is not None


def module():
    """The cv2 module, or None when OpenCV is not installed (or broken).

    The opencv-python wheels bundle their own OpenBLAS, which starts a worker thread per
    extra core when cv2 is imported; those threads spin on sched_yield for a while after
    they start and after each wake-up, on the very cores the engine's threads run on (W5
    timed right after the import: half the processes at 3.3-3.9 ms instead of 2.0). cv2's
    filters never use that BLAS (its parallel loops are its own threads), so it is loaded
    with OPENBLAS_NUM_THREADS=1 unless the user has set the variable.
    """
    import sys

    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        return cv2
    key = "OPENBLAS_NUM_THREADS"
    unset = key not in os.environ
    if unset:
        os.environ[key] = "1"
    try:
        import cv2
    except Exception:
        return None
    finally:
        if unset:
            os.environ.pop(key, None)
    return cv2


def why_not(x_shape, w_shape, *, pads, stride, dilation, border, depthwise: bool,
            rank1: bool = False) -> str | None:
    """None when this path can run the layer, otherwise the reason.

    ``rank1``: every 2-D kernel is separable (sepFilter2D, no DFT buffers).
    """
    h, w_in, c = x_shape
    kh, kw, cw, f = w_shape
    top, bottom, left, right = pads
    if not installed():
        return "OpenCV (cv2) is not installed"
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1):
        return "it needs stride 1 and dilation 1"
    name = getattr(border, "value", border)
    if name not in _BORDERS:
        return f"OpenCV has no {name!r} border"
    if top + bottom > kh - 1 or left + right > kw - 1:
        return "the padding is wider than the kernel's anchor allows"
    if name == "reflect" and (h <= max(top, bottom) or w_in <= max(left, right)):
        return "the reflected padding is wider than the image"
    if not depthwise and c * f > MAX_CALLS:
        return f"{c}×{f} per-channel filter calls are too many"
    if max(kh, kw) >= DFT_KERNEL and not rank1:
        return "large non-separable kernels make filter2D allocate whole-image DFT buffers"
    return None


def one_call(x_shape, w_shape, depthwise: bool) -> bool:
    """Whether one filter call on the whole input gives every map: one filter on one channel,
    or one depthwise filter on up to 4 channels (cv2 filters each channel of an image alike)."""
    c, (_, _, cw, f) = x_shape[2], w_shape
    return f == 1 and (c == 1 or (depthwise and cw == 1 and c <= 4))


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, terms=None, rows=None, epilogue=None, scratch=None, out=None) -> np.ndarray:
    """Same contract as :func:`direct.correlate`; ``terms`` (rank-1 pairs) select sepFilter2D.

    When one call gives the whole output (:func:`one_call`, same size, no ``rows``), that
    call runs on OpenCV's threads straight into ``out``. Otherwise the output is computed
    in bands of rows on the engine's threads (OpenCV's own pool kept at one thread, see
    :func:`module`): each band of input rows, with the kernel's halo, goes through all its
    filter calls while it is in cache. A call pads its band with the border, which is right
    at the image's edges; a band cut inside the image carries the real rows of the halo,
    and the rows the band's own border reaches are cropped.
    """
    cv2 = module()
    h, w_in, c = x.shape
    kh = w.shape[0]
    oh, ow = out_hw
    row_a, row_b = rows if rows is not None else (0, oh)
    job = _Job(cv2, x, w, pads=pads, border=border, out_w=ow, depthwise=depthwise, terms=terms or {})
    out = _common.result_array((row_b - row_a, ow, job.n_maps), out)
    if rows is None and job.whole_image(out.shape):
        # One call whose result is the output: OpenCV's own threads, straight into ``out``.
        with pool_threads(cv2, _threads.get_threads()):
            job.whole(out)
        if epilogue is not None:
            epilogue(out)
        return out
    # The threads share the budget, as the direct path's tiles do. Scratch per band row: the
    # channel planes, the accumulators and one call's result.
    # (Unlike numpy's tiles, two threads pay here even on small budgets: a 3×3×3 filter on
    # 1080p took 11 ms on two threads, 17 on one.)
    total = scratch if scratch is not None else int(_common.TILE_FRACTION * out.nbytes)
    ranges = _threads.split_rows(row_b - row_a, MIN_BAND_ROWS)
    budget = min(BAND_MAX_BYTES, max(_common.TILE_MIN_BYTES, total // len(ranges)))
    row_bytes = 4 * w_in * (c + job.n_maps + 1)
    band = max(MIN_BAND_ROWS, 2 * (kh - 1), budget // row_bytes - (kh - 1))

    def work(r_lo: int, r_hi: int) -> None:
        bufs = _common.thread_buffers()
        for r0 in range(r_lo, r_hi, band):
            r1 = min(r_hi, r0 + band)
            dest = out[r0:r1]
            finished = job.rows(r0 + row_a, r1 + row_a, dest, bufs, epilogue)
            if epilogue is not None and not finished:
                epilogue(dest)

    if rows is None:
        with pool_threads(cv2, 1):  # the engine's threads run the bands (see pool_threads)
            _threads.run_ranges(work, ranges)
    else:  # a chunk of a pooled layer, on one of its threads: run_layer has set OpenCV's pool
        _threads.run_ranges(work, ranges)
    return out


def row_unit(x_shape, w_shape, **_ignored) -> int:
    """1: each output pixel comes out of OpenCV's filters the same whatever band of rows it is in."""
    return 1


#: Fewest output rows per band: every filter call has a few µs of set-up.
MIN_BAND_ROWS = 32
#: Most scratch bytes per band. Larger bands mean fewer calls: on W1 (1080p RGB, 4 filters)
#: 1 MB bands took 34–46 ms, 2 MB 26–31, 4 MB 24–26; the memory budget (a fifth of the
#: output, shared by the threads) is then the real bound.
BAND_MAX_BYTES = 8 << 20


@contextlib.contextmanager
def pool_threads(cv2, n: int):
    """OpenCV's own thread pool at ``n`` threads for the block, then as it was.

    Banded calls run at 1: the engine's threads run the bands, and a pool of OpenCV's under
    each would oversubscribe the cores. A whole-image call uses the engine's thread count.
    The caller's setting is restored, so a program that uses cv2 itself keeps its own.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


class _Job:
    """One layer's filter calls, run band by band (:meth:`rows`)."""

    def __init__(self, cv2, x, w, *, pads, border, out_w, depthwise, terms):
        self.cv2, self.x = cv2, x
        self.top, self.left = pads[0], pads[2]
        self.out_w = out_w
        self.depthwise = depthwise
        self.btype = getattr(cv2, _BORDERS[getattr(border, "value", border)])
        self.w_shape = w.shape
        self.kh, _, self.cw, self.f = w.shape
        c = x.shape[2]
        self.n_maps = c * self.f if depthwise else self.f
        # Per (channel, filter): (column, row) vectors for sepFilter2D, or a contiguous 2-D kernel.
        self.kernels = {(cc, m): terms.get((cc, m)) or np.ascontiguousarray(w[:, :, cc, m])
                        for cc in range(self.cw) for m in range(self.f)}

    def whole_image(self, out_shape) -> bool:
        """Whether one call on the whole input gives the output (:func:`one_call`, same size).

        Such a call runs faster on OpenCV's threads than in bands on the engine's (W3: 18
        against 30 ms; W5: 3.5 against 6).
        """
        return one_call(self.x.shape, self.w_shape, self.depthwise) and tuple(out_shape) == self.x.shape

    def whole(self, out: np.ndarray) -> None:
        src = self.x if self.x.shape[2] > 1 else self.x.reshape(self.x.shape[:2])
        res = self._filter(src, (0, 0), out.reshape(src.shape))
        if not np.shares_memory(res, out):
            out[...] = res.reshape(out.shape)

    def _filter(self, src: np.ndarray, key, dst: np.ndarray, delta: float = 0.0) -> np.ndarray:
        """``src`` through kernel ``key`` into ``dst``, plus ``delta`` (a bias, added by the same pass)."""
        cv2, k = self.cv2, self.kernels[key]
        anchor = (self.left, self.top)
        if isinstance(k, tuple):
            u, v = k
            res = cv2.sepFilter2D(src, cv2.CV_32F, v, u, dst=dst, anchor=anchor, delta=delta, borderType=self.btype)
        else:
            res = cv2.filter2D(src, cv2.CV_32F, k, dst=dst, anchor=anchor, delta=delta, borderType=self.btype)
        return res.reshape(dst.shape)

    def rows(self, r0: int, r1: int, dest: np.ndarray, bufs, epilogue=None) -> bool:
        """Output rows [r0, r1) into ``dest`` ((r1−r0, out_w, maps), C-contiguous).

        When the band is computed map by map and ``epilogue`` is an :class:`_common.Epilogue`,
        each map's bias rides on its first filter call (OpenCV's ``delta``) and its activation
        runs on the map's plane while it is in cache; returns True when it did so.
        """
        x, kh, f = self.x, self.kh, self.f
        h, w_in, c = x.shape
        # Input rows the outputs read. A band at an image edge also takes the rows the
        # border there reflects (up to a kernel height), so they exist in the band.
        s0, s1 = max(0, r0 - self.top), min(h, r1 - self.top + kh - 1)
        if s0 == 0:
            s1 = min(h, max(s1, kh))
        if s1 == h:
            s0 = max(0, min(s0, h - kh))
        band = x[s0:s1]
        crop = (slice(r0 - s0, r1 - s0), slice(0, self.out_w))
        n = s1 - s0
        if self.depthwise and self.cw == 1 and c <= 4:
            # cv2 filters every channel of a multi-channel image with the same kernel: one
            # call per filter gives maps c·F + m for every channel c.
            for m in range(f):
                dest[:, :, m::f] = self._filter(band, (0, m), bufs.get("res", band.shape))[crop]
            return False
        fused = isinstance(epilogue, _common.Epilogue)
        planes = [band.reshape(n, w_in)] if c == 1 else [self._plane(band, cc, bufs) for cc in range(c)]
        pairs = [(cc, m) for cc in range(c) for m in range(f)] if self.depthwise else [(None, m) for m in range(f)]
        maps: list[np.ndarray] = []  # every output map's 2-D band, in output order
        for k, (cc, m) in enumerate(pairs):
            delta = float(epilogue.bias[k]) if fused and epilogue.bias is not None else 0.0
            if cc is not None:  # depthwise: channel cc through its kernel m
                acc = self._filter(planes[cc], (0 if self.cw == 1 else cc, m), bufs.get(f"acc{k}", (n, w_in)), delta)
            else:  # filter m: the sum of its per-channel correlations
                acc = self._filter(planes[0], (0, m), bufs.get(f"acc{k}", (n, w_in)), delta)
                for ch in range(1, c):
                    self.cv2.add(acc, self._filter(planes[ch], (ch, m), bufs.get("res", (n, w_in))), dst=acc)
            if fused:
                epilogue.plane(acc, k, biased=True)
            maps.append(acc[crop])
        self._write(maps, dest)
        return fused

    @staticmethod
    def _plane(band: np.ndarray, cc: int, bufs) -> np.ndarray:
        plane = bufs.get(f"plane{cc}", band.shape[:2])
        np.copyto(plane, band[:, :, cc])
        return plane

    def _write(self, maps: list[np.ndarray], dest: np.ndarray) -> None:
        if len(maps) == 1:
            dest[:, :, 0] = maps[0]
            return
        # cv2.merge interleaves the maps into the H×W×maps rows 3× faster than numpy's
        # strided copies; it writes into ``dest`` when the shapes match (checked).
        res = self.cv2.merge(maps, dst=dest) if len(maps) <= 512 else None
        if res is None or not np.shares_memory(res, dest):
            for m, plane in enumerate(maps):
                dest[:, :, m] = plane
