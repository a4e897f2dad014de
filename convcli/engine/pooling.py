"""Max and average pooling with Keras semantics (MaxPooling2D / AveragePooling2D).

``valid`` pools only whole windows. ``same`` pads by TensorFlow's rule
(:func:`convcli.geometry.pool_pad_amounts`): max pooling ignores the padded cells (they
hold -inf), average pooling divides each window's sum by the number of real cells in it.
"""

from __future__ import annotations

import numpy as np

from .. import geometry
from ..layer import PoolMode, PoolSpec


def _real_counts(size: int, before: int, pool: int, stride: int, n_out: int) -> np.ndarray:
    """Number of real (unpadded) cells in each window along one axis."""
    start = np.arange(n_out) * stride - before
    return (np.minimum(start + pool, size) - np.maximum(start, 0)).astype(np.float32)


def pool2d(x: np.ndarray, pool: PoolSpec) -> np.ndarray:
    """Pool a float32 H×W×C map; returns float32 H'×W'×C.

    Output size (from :func:`convcli.geometry.pool_output_hw`): valid
    ``floor((H - ph) / sh) + 1``, same ``ceil(H / sh)``, likewise for the width.
    Raises :class:`~convcli.errors.GeometryError` when the pool is larger than its input.
    """
    h, w, c = x.shape
    geometry.pool_layer((h, w, c), pool)  # raises the same GeometryError `shape` reports
    oh, ow = geometry.pool_output_hw((h, w), pool)
    top, bottom, left, right = geometry.pool_pad_amounts((h, w), pool)
    ph, pw = pool.size
    sh, sw = pool.strides
    is_max = pool.mode is PoolMode.MAX
    if top or bottom or left or right:
        fill = -np.inf if is_max else 0.0
        x = np.pad(x, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=fill)
    out = None
    # A loop over the ph·pw taps, each a strided slice of the whole map (vectorised per tap).
    for i in range(ph):
        for j in range(pw):
            tap = x[i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
            if out is None:
                out = np.array(tap, dtype=np.float32)
            elif is_max:
                np.maximum(out, tap, out=out)
            else:
                out += tap
    if not is_max:
        counts = np.outer(_real_counts(h, top, ph, sh, oh), _real_counts(w, left, pw, sw, ow))
        out /= counts[:, :, None]
    return out
