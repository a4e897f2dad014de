"""``--mode`` conversions on native pixel values, the layout names, the finite-values check.

Integers stay integers through ``--mode`` so that ``gray`` matches Pillow's
``convert('L')`` exactly; the conversion to float32 happens after.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError

_LAYOUTS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _apply_mode(array: Any, bit_depth: int | None, mode: str, name: str) -> tuple[Any, int | None]:
    """``--mode`` on native values (integers stay integers, so gray matches Pillow)."""
    import numpy as np

    channels = array.shape[2]
    if mode == "keep":
        return array, bit_depth
    if channels > 4:
        raise InputError(f"{name}: --mode {mode} needs 1 to 4 channels (gray, gray+alpha, RGB, RGBA); "
                         f"the input has {channels}")
    color = array[:, :, :3] if channels >= 3 else array[:, :, :1]
    if mode == "gray":
        if channels < 3:
            return array[:, :, :1], bit_depth
        if array.dtype.kind == "u":
            rgb = color.astype(np.int64)
            luma = (rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000) >> 16
            return luma.astype(array.dtype)[:, :, None], bit_depth
        rgb = color.astype(np.float64)
        return (rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114)[:, :, None], bit_depth
    if channels < 3:
        color = np.repeat(color, 3, axis=2)
    if mode == "rgb":
        return color, bit_depth
    if channels in (2, 4):
        alpha = array[:, :, -1:]
    else:
        opaque = 2**bit_depth - 1 if bit_depth is not None else 1.0
        alpha = np.full(array.shape[:2] + (1,), opaque, dtype=array.dtype)
    return np.concatenate([color, alpha], axis=2), bit_depth


def _mode_name(channels: int, bit_depth: int | None) -> str:
    layout = _LAYOUTS.get(channels, f"{channels}-channel")
    if bit_depth == 8:
        return layout
    if bit_depth is None:
        return "F" if channels == 1 else f"{layout};F"
    return f"I;{bit_depth}" if channels == 1 else f"{layout};{bit_depth}"


def _check_finite(array: Any, name: str) -> None:
    import numpy as np

    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        y, x, c = (int(v) for v in bad[0])
        raise InputError(f"{name}: {len(bad)} non-finite values (NaN/Inf, or beyond float32's range), "
                         f"the first at row {y}, column {x}, channel {c}; convcli needs finite numbers")
