"""A layer stack: conv and pool steps in order, with one geometry and one run path.

The CLI's single layer (``-k … --pool max``) is a stack of one conv step and, when
pooling is asked for, one pool step; a ``--pipeline`` file is a longer stack. So
``apply`` and ``shape`` walk the same steps through the same geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Union

from .errors import GeometryError
from .geometry import LayerGeometry, Shape3, conv_layer, pool_layer
from .layer import ConvSpec, Pair, Padding, PaddingMode, PoolSpec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .kernels import FilterBank


def unique_names(names: list[str]) -> list[str]:
    """Keep names as given, but number repeats as Keras numbers layers: edge, edge_1, edge_2."""
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for name in names:
        if name not in seen:
            seen[name] = 0
            out.append(name)
            continue
        candidate = name
        while candidate in taken:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
        taken.add(candidate)
        out.append(candidate)
    return out


@dataclass(frozen=True)
class ConvStep:
    """A convolution layer: weights from ``bank``, or only a size for shape-only layers."""

    spec: ConvSpec = field(default_factory=ConvSpec)
    bank: "FilterBank | None" = None
    filters: int | None = None  # shape-only layers: number of filters
    kernel_size: Pair | None = None  # shape-only layers: kernel size
    use_bias: bool = True
    name: str = "conv"

    @property
    def has_weights(self) -> bool:
        return self.bank is not None

    def geometry(self, input_shape: Shape3, *, locally_connected: bool = False,
                 rf_in: Pair = (1, 1), jump_in: Pair = (1, 1)) -> LayerGeometry:
        if self.bank is not None:
            size, filters, depth = self.bank.size, self.bank.filters, self.bank.depth
        else:
            assert self.kernel_size is not None and self.filters is not None
            size, filters, depth = self.kernel_size, self.filters, None
        return conv_layer(
            input_shape, kernel_size=size, filters=filters, spec=self.spec, kernel_depth=depth,
            use_bias=self.use_bias, locally_connected=locally_connected, name=self.name,
            rf_in=rf_in, jump_in=jump_in,
        )

    @property
    def output_names(self) -> list[str]:
        """Names of this layer's filters (the ``{filter}`` field of output files)."""
        names = list(self.bank.names) if self.bank is not None else [
            f"{self.name}[{i}]" for i in range(self.filters or 0)]
        return unique_names(names)


@dataclass(frozen=True)
class PoolStep:
    spec: PoolSpec
    name: str = "pool"

    def geometry(self, input_shape: Shape3, *, locally_connected: bool = False,
                 rf_in: Pair = (1, 1), jump_in: Pair = (1, 1)) -> LayerGeometry:
        return pool_layer(input_shape, self.spec, name=self.name, rf_in=rf_in, jump_in=jump_in)


Step = Union[ConvStep, PoolStep]


def _along_signal(pair: Pair | None) -> Pair | None:
    return (1, pair[1]) if pair is not None and pair[0] == pair[1] else pair


def signal_step(step: Step) -> Step:
    """The step as it applies to a 1-D signal (height 1), as Keras Conv1D/MaxPooling1D.

    A square size, stride or dilation N×N means 1×N, and uniform explicit padding P pads
    the two ends of the signal only: on a 1-row input the height parts could only add rows
    of padding or fail.
    """
    if isinstance(step, PoolStep):
        spec = replace(step.spec, size=_along_signal(step.spec.size), stride=_along_signal(step.spec.stride))
        return replace(step, spec=spec)
    conv = step.spec
    padding = conv.padding
    if padding.mode is PaddingMode.EXPLICIT and len(set(padding.amounts)) == 1:
        amount = padding.amounts[0]
        padding = Padding(PaddingMode.EXPLICIT, (0, 0, amount, amount))
    spec = replace(conv, stride=_along_signal(conv.stride), dilation=_along_signal(conv.dilation), padding=padding)
    return replace(step, spec=spec, kernel_size=_along_signal(step.kernel_size))


@dataclass(frozen=True)
class Stack:
    """Layers applied in order; see :meth:`geometry` and :meth:`run`."""

    steps: tuple[Step, ...]

    @classmethod
    def single(cls, bank: "FilterBank | None", conv: ConvSpec, pool: PoolSpec | None = None, *,
               filters: int | None = None, kernel_size: Pair | None = None,
               use_bias: bool = True) -> "Stack":
        """The stack of the CLI's layer options: one conv step, then a pool step if asked."""
        steps: list[Step] = [ConvStep(spec=conv, bank=bank, filters=filters, kernel_size=kernel_size,
                                      use_bias=use_bias,
                                      name="depthwise_conv2d" if conv.depthwise else "conv2d")]
        if pool is not None:
            steps.append(PoolStep(spec=pool, name="max_pooling2d" if pool.mode.value == "max"
                                  else "average_pooling2d"))
        return cls(tuple(steps))

    def for_input(self, input_shape) -> "Stack":
        """The stack as it applies to an input of this shape (1-D signals: :func:`signal_step`)."""
        if input_shape[0] != 1:
            return self
        adapted = tuple(signal_step(step) for step in self.steps)
        return self if adapted == self.steps else replace(self, steps=adapted)

    def geometry(self, input_shape: Shape3, *, locally_connected: bool = False) -> list[LayerGeometry]:
        """Per-step geometry; raises GeometryError naming the step that cannot work."""
        out: list[LayerGeometry] = []
        shape, rf, jump = tuple(input_shape), (1, 1), (1, 1)
        for step in self.for_input(shape).steps:
            g = step.geometry(shape, locally_connected=locally_connected, rf_in=rf, jump_in=jump)  # type: ignore[arg-type]
            out.append(g)
            shape, rf, jump = g.output_shape, g.receptive_field, g.jump
        return out

    @property
    def last_conv(self) -> ConvStep:
        for step in reversed(self.steps):
            if isinstance(step, ConvStep):
                return step
        raise GeometryError("the stack has no conv layer")

    def output_names(self) -> list[str]:
        return self.last_conv.output_names

    def check_runnable(self) -> None:
        """Raise GeometryError naming the first conv layer that cannot run on any input.

        That is a layer without weights, or one whose 3-D kernels do not match the channels
        the layer before it gives (known from that layer alone, whatever the input): a usage
        error, found before any input is read.
        """
        depth: int | None = None  # channels reaching the step; None: they depend on the input
        for index, step in enumerate(self.steps):
            if not isinstance(step, ConvStep):
                continue
            if not step.has_weights:
                raise GeometryError(
                    f"layers[{index}] ({step.name}): has no weights (filters + kernel_size only), so it can be"
                    " used with `shape` but not `apply`; give it `kernels:`"
                )
            bank = step.bank
            assert bank is not None
            if bank.depth is not None and depth is not None and bank.depth != depth:
                kh, kw = bank.size
                raise GeometryError(
                    f"layers[{index}] ({step.name}): kernels are {kh}×{kw}×{bank.depth} but the layer before "
                    f"gives {depth} channels"
                )
            if step.spec.depthwise:
                depth = None if depth is None else depth * bank.filters
            else:
                depth = bank.filters

    @property
    def sums_channels_first(self) -> bool:
        """The first layer correlates 2-D kernels with every channel (the engine sums the channels).

        Its input may then be given as uint8/uint16 pixels: the engine sums them as integers.
        """
        first = self.steps[0] if self.steps else None
        return (isinstance(first, ConvStep) and first.bank is not None and first.bank.depth is None
                and not first.spec.depthwise)

    def run(self, x: "np.ndarray", *, algorithm: str = "auto", keep_all: bool = False, reuse=None):
        """Run every step on ``x`` (H×W×C float32).

        Returns ``(output, algorithms, intermediates)``: the last step's output, the
        engine path each conv step used, and — with ``keep_all`` — every step's output.
        ``reuse``: an array the last conv layer may write its output into when that is the
        stack's output (see :func:`convcli.engine.run_layer`).
        """
        from . import engine

        adapted = self.for_input(x.shape)
        if adapted is not self:
            return adapted.run(x, algorithm=algorithm, keep_all=keep_all, reuse=reuse)
        self.check_runnable()
        self.geometry(tuple(x.shape))  # fail early, with the step's name, before any work
        algorithms: list[str] = []
        intermediates: list = []
        steps = list(self.steps)
        index = 0
        while index < len(steps):
            step = steps[index]
            if isinstance(step, ConvStep):
                # A pool right after a conv runs inside the engine's row chunks, so the
                # un-pooled maps never exist whole (unless --save-all wants them).
                following = steps[index + 1] if index + 1 < len(steps) else None
                pool = following.spec if isinstance(following, PoolStep) and not keep_all else None
                last = index + (2 if pool is not None else 1) >= len(steps)
                result = engine.run_layer(x, step.bank, step.spec, pool, algorithm=algorithm,
                                          reuse=reuse if last and not keep_all else None)
                x = result.output
                backend = "" if result.backend == "numpy" else f"/{result.backend}"
                algorithms.append(result.algorithm + backend)  # e.g. "direct", "separable/opencv"
                index += 2 if pool is not None else 1
            else:
                x = engine.pool2d(x, step.spec)
                index += 1
            if keep_all:
                intermediates.append(x)
        return x, algorithms, intermediates
