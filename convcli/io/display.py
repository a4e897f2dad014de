"""Display mapping: float feature maps to uint8/uint16 pixels (SPEC's ``--normalize`` modes)."""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import OptionError, OutputError
from ._common import _check_choice

NORMALIZE_MODES = ("minmax", "clip", "abs", "offset")


def to_display(maps: Any, *, normalize: str = "minmax", bits: int = 8, name: str = "feature map") -> Any:
    """Map float values to pixels for a PNG (SPEC's ``--normalize`` modes).

    Parameters
    ----------
    maps : array_like
        One map (H, W) or one picture (H, W, C). A 3-D input is normalised as a whole (one
        min/max, one max|x|), so a depthwise RGB result keeps its colour balance; pass maps
        one at a time for per-map scaling.
    normalize : {'minmax', 'clip', 'abs', 'offset'}
        With ``top = 2**bits - 1``: ``minmax`` maps [min, max] to [0, top] (a constant map
        gives 0); ``clip`` keeps the values, clipped to [0, top]; ``abs`` maps |x| to
        [0, top] by its maximum (all zeros give 0); ``offset`` maps 0 to mid-grey and
        ±max|x| to 0 and top (all zeros give mid-grey: 128, or 32768 for 16 bits).
    bits : {8, 16}
        Output type: uint8 or uint16.
    name : str
        What an error message calls the map.

    Returns
    -------
    numpy.ndarray
        uint8 or uint16 of the input's shape. Values are ``rint(x·a + b)`` (half to
        even), with ``a`` and ``b`` computed in float64 and applied in float32.

    Raises
    ------
    OptionError
        Unknown ``normalize`` or ``bits``.
    OutputError
        NaN or Inf in the maps (they have no pixel value; use tiff or npy output).
    """
    import numpy as np

    values = np.asarray(maps, dtype=np.float32)
    if values.ndim < 2:
        values = values.reshape(1, -1)
    whole = values.reshape(values.shape[0], values.shape[1], -1)
    # One picture: its channels share one scale, so flatten them into a single plane.
    plane = whole.reshape(whole.shape[0], -1, 1)
    return to_display_planes(plane, normalize=normalize, bits=bits, names=[name])[0].reshape(values.shape)


def channel_extrema(array: Any) -> tuple[Any, Any]:
    """Each channel's (min, max) of a C-contiguous H×W×C array, in one vectorised sweep each.

    Reducing an (H·W, C) array over its long axis runs numpy's inner loop over only C
    values; viewing it as (H·W / k, k·C) rows makes the inner loop k·C long (3–4× faster).
    """
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1, array.shape[-1])
    channels = flat.shape[1]
    fold = max(1, 1024 // channels)
    whole = flat.shape[0] // fold * fold
    wide = flat[:whole].reshape(-1, fold * channels)
    low = wide.min(axis=0).reshape(fold, channels).min(axis=0) if whole else np.full(channels, np.inf, flat.dtype)
    high = wide.max(axis=0).reshape(fold, channels).max(axis=0) if whole else np.full(channels, -np.inf, flat.dtype)
    if whole < flat.shape[0]:
        low = np.minimum(low, flat[whole:].min(axis=0))
        high = np.maximum(high, flat[whole:].max(axis=0))
    return low, high


def to_display_planes(block: Any, *, normalize: str = "minmax", bits: int = 8,
                      names: Sequence[str] | None = None, low: Any = None, high: Any = None) -> Any:
    """:func:`to_display` of each channel of an H×W×k block on its own, as k contiguous planes.

    Returns uint8/uint16 of shape (k, H, W). The block may be a strided view of a layer's
    H×W×F output (``output[:, :, f0:f1]``): it is read once, band by band, instead of once
    per map, and each plane comes out contiguous for the PNG encoder.

    Each channel is mapped by ``rint(x·a + b)`` clipped to [0, top], with ``a`` and ``b``
    computed in float64 from the channel's min/max (or max|x|) and applied in float32.
    ``low`` and ``high``, when given, are the channels' minima and maxima, computed by the
    caller in one pass over a contiguous output (faster than reducing a strided view).
    """
    import numpy as np

    normalize = getattr(normalize, "value", normalize)
    _check_choice("--normalize", normalize, NORMALIZE_MODES)
    if bits not in (8, 16):
        raise OptionError(f"bits: expected 8 or 16, got {bits!r}")
    values = np.asarray(block)
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    height, width, count = values.shape
    dtype = np.uint8 if bits == 8 else np.uint16
    top = float(2**bits - 1)
    out = np.empty((count, height, width), dtype)
    if values.size == 0:
        out[...] = 0
        return out
    low = np.asarray(values.min(axis=(0, 1)) if low is None else low, dtype=np.float64)
    high = np.asarray(values.max(axis=(0, 1)) if high is None else high, dtype=np.float64)
    broken = ~(np.isfinite(low) & np.isfinite(high))
    if broken.any():
        channel = int(np.argmax(broken))
        plane = values[:, :, channel]
        bad = int(plane.size - np.isfinite(plane).sum())
        label = names[channel] if names is not None and channel < len(names) else f"map {channel}"
        raise OutputError(f"{label}: {bad} NaN/Inf values cannot be shown as pixels; use --format tiff or npy")
    absolute = False
    if normalize == "minmax":
        span = high - low
        scale = np.divide(top, span, out=np.zeros_like(span), where=span > 0)
        offset = -low * scale
    elif normalize == "clip":
        scale, offset = np.ones(count), np.zeros(count)
    else:
        peak = np.maximum(np.abs(low), np.abs(high))
        if normalize == "abs":
            absolute = True
            scale = np.divide(top, peak, out=np.zeros_like(peak), where=peak > 0)
            offset = np.zeros(count)
        else:  # offset: 0 at mid-grey, ±peak at the ends
            scale = np.divide(top / 2.0, peak, out=np.zeros_like(peak), where=peak > 0)
            offset = np.full(count, top / 2.0)
    scale32, offset32 = scale.astype(np.float32), offset.astype(np.float32)
    # x·a + b lies in [0, top] but for float32 rounding, at most (|x·a| + |b|)·2**-22; while
    # that is below ½, rint lands in [0, top] and the clip can be skipped (a third of the
    # time). Only ``clip`` and a minmax map whose range is tiny next to its values need it.
    reach = np.maximum(np.abs(low), np.abs(high)) * np.abs(scale) + np.abs(offset)
    need_clip = normalize == "clip" or bool(np.any(reach >= 2.0**20))
    band = max(1, (1 << 18) // max(1, width * count))  # ~1 MB of float32 at a time: stays in cache
    flat = values.flags.c_contiguous
    if flat:
        # Whole rows at once against the factors repeated along a row: broadcasting a short
        # (k,) vector makes numpy run an inner loop of k elements, several times slower.
        scale32, offset32 = np.tile(scale32, width), np.tile(offset32, width)
        scratch = np.empty((min(band, height), width * count), np.float32)
    for row in range(0, height, band):
        part = values[row:row + band]
        rows = part.shape[0]
        if flat:
            scaled = scratch[:rows]
            source = part.reshape(rows, width * count)
            if absolute:
                np.abs(source, out=scaled)
                scaled *= scale32
            else:
                np.multiply(source, scale32, out=scaled)
        else:
            scaled = np.abs(part) if absolute else part.copy()
            scaled *= scale32
        scaled += offset32
        np.rint(scaled, out=scaled)
        if need_clip:
            np.clip(scaled, 0.0, top, out=scaled)
        # Cast first: transposing 1- or 2-byte pixels moves a quarter of the bytes.
        pixels = scaled.astype(dtype).reshape(rows, width, count)
        out[:, row:row + rows, :] = np.moveaxis(pixels, 2, 0)
    return out
