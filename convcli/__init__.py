"""convcli: apply CNN convolution layers to images, with Keras/PyTorch semantics.

The public API (SPEC §5)::

    import convcli
    bank = convcli.load_kernels("kernels/sobel-x.yaml", "edge")
    y = convcli.conv2d(x, weights, bias=None, stride=1, padding="valid")
    y = convcli.apply_layer(x, bank, padding="same", activation="relu", pool="max")
    convcli.output_shape((725, 1280, 3), kernel_size=4, filters=32)

Heavy modules load on first use, so ``import convcli`` stays cheap.
"""

from __future__ import annotations

from .errors import (
    ConvcliError,
    ExitStatus,
    GeometryError,
    InputError,
    KernelError,
    OptionError,
    OutputError,
)
from .geometry import output_shape

__version__ = "0.1.0"

__all__ = [
    "ConvcliError", "ExitStatus", "GeometryError", "InputError", "KernelError", "OptionError",
    "OutputError", "output_shape", "conv2d", "apply_layer", "load_kernels", "__version__",
]


def __getattr__(name: str):
    if name in ("conv2d", "apply_layer", "depthwise_conv2d"):
        from . import engine

        return getattr(engine, name)
    if name in ("load_kernels", "FilterBank", "Kernel"):
        from . import kernels

        return getattr(kernels, name)
    raise AttributeError(f"module 'convcli' has no attribute {name!r}")
