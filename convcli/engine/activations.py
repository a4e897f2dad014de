"""Element-wise activations applied after the bias (Keras names and defaults)."""

from __future__ import annotations

import numpy as np

from ..layer import Activation, parse_activation


def activate(x: np.ndarray, activation=None, negative_slope: float = 0.3, *,
             out: np.ndarray | None = None) -> np.ndarray:
    """Apply ``activation`` (none, relu, leaky-relu, sigmoid, tanh, abs) element-wise.

    ``leaky-relu`` is ``x`` for ``x >= 0`` and ``negative_slope * x`` below (Keras
    default 0.3). The result has ``x``'s shape and is float32; pass ``out=x`` to work
    in place.
    """
    act = parse_activation(activation, "activation")
    x = np.asarray(x, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    if act is Activation.NONE:
        if out is not x:
            out[...] = x
    elif act is Activation.RELU:
        np.maximum(x, 0, out=out)
    elif act is Activation.LEAKY_RELU:
        if out is not x:
            out[...] = x
        np.multiply(out, np.float32(negative_slope), out=out, where=out < 0)
    elif act is Activation.SIGMOID:
        # 0.5·(1 + tanh(x/2)) equals 1/(1+e^-x) without overflow for large |x|.
        np.multiply(x, np.float32(0.5), out=out)
        np.tanh(out, out=out)
        out += 1
        out *= np.float32(0.5)
    elif act is Activation.TANH:
        np.tanh(x, out=out)
    elif act is Activation.ABS:
        np.abs(x, out=out)
    return out
