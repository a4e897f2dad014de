"""Optional OpenCV path: ``cv2.filter2D`` / ``cv2.sepFilter2D`` for per-channel 2-D filtering.

Used only when ``cv2`` (``opencv-python-headless``) is importable. It serves layers made of
2-D filtering per input channel at stride 1 and dilation 1, whose padding OpenCV's anchor
can express (``top ≤ kh−1``, ``top + bottom ≤ kh−1``, likewise left/right) and whose border
OpenCV has (zeros, reflect, replicate; not circular): depthwise layers, one-channel inputs
(including 2-D kernels summed over channels), and few-channel 3-D kernels.
"""

from __future__ import annotations

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
    import importlib.util
    import sys

    return "cv2" in sys.modules or importlib.util.find_spec("cv2") is not None


def module():
    """The cv2 module, or None when OpenCV is not installed (or broken)."""
    try:
        import cv2
    except Exception:
        return None
    cv2.setNumThreads(_threads.get_threads())
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


def correlate(x: np.ndarray, w: np.ndarray, *, pads, stride, dilation, border, out_hw,
              depthwise: bool = False, terms=None, rows=None, epilogue=None, scratch=None, out=None) -> np.ndarray:
    """Same contract as :func:`direct.correlate`; ``terms`` (rank-1 pairs) select sepFilter2D.

    ``rows`` crops the rows afterwards (OpenCV filters the whole image in one call).
    """
    result = _correlate(x, w, pads=pads, border=border, out_hw=out_hw, depthwise=depthwise, terms=terms)
    if rows is not None:
        result = result[rows[0]:rows[1]]
    if out is not None:
        out = _common.result_array(result.shape, out)
        out[...] = result
    else:
        out = np.ascontiguousarray(result)
    if epilogue is not None:
        epilogue(out)
    return out


def _correlate(x, w, *, pads, border, out_hw, depthwise, terms):
    cv2 = module()
    h, w_in, c = x.shape
    kh, kw, cw, f = w.shape
    oh, ow = out_hw
    top, _, left, _ = pads
    btype = getattr(cv2, _BORDERS[getattr(border, "value", border)])
    anchor = (left, top)

    def filt(img, k2d, sep):
        if sep is not None:
            u, v = sep
            res = cv2.sepFilter2D(img, cv2.CV_32F, v, u, anchor=anchor, borderType=btype)
        else:
            res = cv2.filter2D(img, cv2.CV_32F, np.ascontiguousarray(k2d), anchor=anchor, borderType=btype)
        return res.reshape(h, w_in, -1)[:oh, :ow]

    def rank1(cc, m):
        return None if terms is None else terms.get((cc, m))

    n_maps = c * f if depthwise else f
    if depthwise and cw == 1 and f == 1 and c <= 4:
        # One filter on every channel: OpenCV's multi-channel result is already our layout.
        res = filt(x, w[:, :, 0, 0], rank1(0, 0))
        return res if res.flags.c_contiguous else np.ascontiguousarray(res)
    out = np.empty((oh, ow, n_maps), dtype=np.float32)
    if depthwise and cw == 1:
        # cv2 filters every channel of a multi-channel image with the same kernel: one call per filter.
        for m in range(f):
            if c <= 4:
                out[:, :, m::f] = filt(x, w[:, :, 0, m], rank1(0, m))
            else:
                for cc in range(c):
                    out[:, :, cc * f + m] = filt(np.ascontiguousarray(x[:, :, cc]), w[:, :, 0, m], rank1(0, m))[:, :, 0]
        return out
    planes = [np.ascontiguousarray(x[:, :, cc]) for cc in range(c)]
    for m in range(f):
        if depthwise:
            for cc in range(c):
                out[:, :, cc * f + m] = filt(planes[cc], w[:, :, cc, m], rank1(cc, m))[:, :, 0]
        else:
            acc = filt(planes[0], w[:, :, 0, m], rank1(0, m))[:, :, 0].copy()
            for cc in range(1, c):
                acc += filt(planes[cc], w[:, :, cc, m], rank1(cc, m))[:, :, 0]
            out[:, :, m] = acc
    return out
