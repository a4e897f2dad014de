"""A layer stack: conv and pool steps in order, with one geometry and one run path.

The CLI's single layer (``-k … --pool max``) is a stack of one conv step and, when
pooling is asked for, one pool step; a ``--pipeline`` file is a longer stack. So
``apply`` and ``shape`` walk the same steps through the same geometry.

An input read as a 1-D signal (see :meth:`Stack.for_signal`) gets the stack's Keras
Conv1D meaning; every other input, a one-row image included, its Conv2D meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Union

from .errors import ConvcliError, GeometryError, OptionError
from .geometry import LayerGeometry, Shape3, conv_layer, pool_layer
from .layer import ConvSpec, Pair, PaddingMode, PoolMode, PoolSpec, on_signal

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
    """A convolution layer: weights from ``bank``, or only a size for shape-only layers.

    ``named``: the user gave ``name`` (else it is Keras' default, see :func:`keras_names`).
    ``one_d``: the layer is a Conv1D on a 1-D signal (set by :meth:`on_signal`).
    """

    spec: ConvSpec = field(default_factory=ConvSpec)
    bank: "FilterBank | None" = None
    filters: int | None = None  # shape-only layers: number of filters
    kernel_size: Pair | None = None  # shape-only layers: kernel size
    use_bias: bool = True
    name: str = "conv"
    named: bool = False
    one_d: bool = False

    @property
    def has_weights(self) -> bool:
        return self.bank is not None

    @property
    def kernel_hw(self) -> Pair:
        """(kh, kw) of the kernels: the bank's, or the shape-only ``kernel_size``."""
        if self.bank is not None:
            return self.bank.size
        assert self.kernel_size is not None
        return self.kernel_size

    def on_signal(self) -> "ConvStep":
        """This layer with a 1-D signal as its input.

        Stride, dilation, explicit padding and ``kernel_size`` written as one number act
        along the signal (:func:`~convcli.layer.on_signal`). The layer is then a Conv1D
        (``one_d``) when its kernel is one row high and its padding adds no rows; else it
        is a Conv2D on a one-row image (a 3×3 kernel on it does not fit).
        """
        spec = self.spec.on_signal()
        step = replace(self, spec=spec, kernel_size=None if self.kernel_size is None else on_signal(self.kernel_size))
        return replace(step, one_d=step.kernel_hw[0] == 1 and not spec.padding.pads_rows)

    def geometry(self, input_shape: Shape3, *, locally_connected: bool = False,
                 rf_in: Pair = (1, 1), jump_in: Pair = (1, 1)) -> LayerGeometry:
        if self.spec.padding.mode is PaddingMode.CAUSAL and not self.one_d:
            h, w, c = input_shape
            raise GeometryError(
                f"{self.name}: padding 'causal' is for 1-D signals (Keras Conv1D), but this layer is 2-D on a"
                f" {h}×{w}×{c} input (a signal is a .npy/.csv/.txt of one row or column, or shape --input L)"
            )
        if self.bank is not None:
            filters, depth = self.bank.filters, self.bank.depth
        else:
            assert self.filters is not None
            filters, depth = self.filters, None
        return conv_layer(
            input_shape, kernel_size=self.kernel_hw, filters=filters, spec=self.spec, kernel_depth=depth,
            use_bias=self.use_bias, locally_connected=locally_connected, name=self.name,
            rf_in=rf_in, jump_in=jump_in, one_d=self.one_d,
        )

    @property
    def output_names(self) -> list[str]:
        """Names of this layer's filters (the ``{filter}`` field of output files)."""
        names = list(self.bank.names) if self.bank is not None else [
            f"{self.name}[{i}]" for i in range(self.filters or 0)]
        return unique_names(names)


@dataclass(frozen=True)
class PoolStep:
    """A max/avg pooling layer; ``named`` and ``one_d`` as for :class:`ConvStep`."""

    spec: PoolSpec
    name: str = "pool"
    named: bool = False
    one_d: bool = False

    def on_signal(self) -> "PoolStep":
        """This pool with a 1-D signal as its input: MaxPooling1D when its window is one row high."""
        spec = self.spec.on_signal()
        return replace(self, spec=spec, one_d=spec.size[0] == 1)

    def geometry(self, input_shape: Shape3, *, locally_connected: bool = False,
                 rf_in: Pair = (1, 1), jump_in: Pair = (1, 1)) -> LayerGeometry:
        return pool_layer(input_shape, self.spec, name=self.name, rf_in=rf_in, jump_in=jump_in, one_d=self.one_d)


Step = Union[ConvStep, PoolStep]


def keras_base_name(step: Step) -> str:
    """Keras' name for the layer's class: conv2d, depthwise_conv2d, max_pooling2d, …; 1d on a signal."""
    dims = "1d" if step.one_d else "2d"
    if isinstance(step, ConvStep):
        return ("depthwise_conv" if step.spec.depthwise else "conv") + dims
    return ("max_pooling" if step.spec.mode is PoolMode.MAX else "average_pooling") + dims


def keras_names(steps) -> tuple[Step, ...]:
    """Name the steps the user did not name as Keras numbers layers: conv2d, conv2d_1, …

    Names the user gave are kept, and skipped by the numbering.
    """
    given = {step.name for step in steps if step.named}
    counters: dict[str, int] = {}
    named: list[Step] = []
    for step in steps:
        if step.named:
            named.append(step)
            continue
        base = keras_base_name(step)
        while True:
            count = counters.get(base, 0)
            counters[base] = count + 1
            candidate = base if count == 0 else f"{base}_{count}"
            if candidate not in given:
                break
        named.append(replace(step, name=candidate))
    return tuple(named)


@dataclass(frozen=True)
class Stack:
    """Layers applied in order; see :meth:`geometry` and :meth:`run`.

    ``signal``: the stack as it applies to a 1-D signal (made by :meth:`for_signal`).
    """

    steps: tuple[Step, ...]
    signal: bool = False

    @classmethod
    def single(cls, bank: "FilterBank | None", conv: ConvSpec, pool: PoolSpec | None = None, *,
               filters: int | None = None, kernel_size: Pair | None = None,
               use_bias: bool = True) -> "Stack":
        """The stack of the CLI's layer options: one conv step, then a pool step if asked."""
        steps: list[Step] = [ConvStep(spec=conv, bank=bank, filters=filters, kernel_size=kernel_size,
                                      use_bias=use_bias)]
        if pool is not None:
            steps.append(PoolStep(spec=pool))
        return cls(keras_names(steps))

    def for_signal(self) -> "Stack":
        """The stack as it applies to a 1-D signal (1×L×C): Keras' Conv1D meaning.

        A signal is an input read as one (a 1-D array, a one-row or one-column table) or
        ``shape --input L``; a one-row image is not one. The first layer reads values
        written as one number along the signal (:meth:`ConvStep.on_signal`). When it is
        then 1-D (Conv1D, MaxPooling1D) its output is a signal too and the next layer
        reads them the same way; a layer that is 2-D on the signal (values written as
        pairs: a kernel or window more than one row high, rows of padding) gives an image,
        and the layers after it keep their 2-D meaning. Default names become Keras' 1-D
        ones (conv1d, max_pooling1d, …).
        """
        if self.signal:
            return self
        steps: list[Step] = []
        signal = True
        for step in self.steps:
            if signal:
                step = step.on_signal()
                signal = step.one_d
            steps.append(step)
        return replace(self, steps=keras_names(steps), signal=True)

    def _check_input(self, input_shape) -> None:
        if self.signal and input_shape[0] != 1:
            h, w, c = input_shape
            raise GeometryError(f"a stack for a 1-D signal needs a 1×L×C input, got {h}×{w}×{c}")

    def _step_error(self, index: int, step: Step, err: ConvcliError) -> ConvcliError:
        """The error to raise when step ``index`` cannot work (subclasses add where it comes from)."""
        return err

    def geometry(self, input_shape: Shape3, *, locally_connected: bool = False) -> list[LayerGeometry]:
        """Per-step geometry; raises GeometryError naming the step that cannot work."""
        self._check_input(input_shape)
        out: list[LayerGeometry] = []
        shape, rf, jump = tuple(input_shape), (1, 1), (1, 1)
        for index, step in enumerate(self.steps):
            try:
                g = step.geometry(shape, locally_connected=locally_connected, rf_in=rf, jump_in=jump)  # type: ignore[arg-type]
            except ConvcliError as err:
                raise self._step_error(index, step, err) from None
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

    def check_algorithm(self, algorithm: str) -> None:
        """Raise OptionError if ``algorithm`` cannot run some conv layer on any input.

        Only ``separable`` can be impossible: it needs every kernel (every 2-D slice of a
        3-D kernel) to have rank at most ``engine.choose.MAX_RANK``, which the weights alone
        decide. Found here, it is a usage error before any input is read.
        """
        if algorithm != "separable":
            return
        import numpy as np

        from .engine import choose, separable

        for index, step in enumerate(self.steps):
            if not isinstance(step, ConvStep) or step.bank is None:
                continue
            for kernel in step.bank:
                weights = kernel.weights if kernel.weights.ndim == 3 else kernel.weights[:, :, None]
                for channel in range(weights.shape[2]):
                    if separable.decompose(weights[:, :, channel], choose.MAX_RANK) is None:
                        plane = np.asarray(weights[:, :, channel], dtype=np.float64)
                        values = np.linalg.svd(plane, compute_uv=False)
                        rank = int(np.sum(values > separable.RANK_TOL * values[0]))
                        where = f"layers[{index}] ({step.name}): " if len(self.steps) > 1 else ""
                        raise OptionError(
                            f"--algorithm separable: {where}kernel {kernel.name!r} has rank {rank}; the separable"
                            f" path takes kernels of rank at most {choose.MAX_RANK} (use --algorithm auto or direct)")

    @property
    def sums_channels_first(self) -> bool:
        """The first layer correlates 2-D kernels with every channel (the engine sums the channels).

        Its input may then be given as uint8/uint16 pixels: the engine sums them as integers.
        """
        first = self.steps[0] if self.steps else None
        return (isinstance(first, ConvStep) and first.bank is not None and first.bank.depth is None
                and not first.spec.depthwise)

    def run(self, x: "np.ndarray", *, algorithm: str = "auto", keep_all: bool = False, reuse=None):
        """Run every step on ``x`` (H×W×C float32; a 1-D signal with the stack :meth:`for_signal` returns).

        Returns ``(output, algorithms, intermediates)``: the last step's output, the
        engine path each conv step used, and — with ``keep_all`` — every step's output.
        ``reuse``: an array the last conv layer may write its output into when that is the
        stack's output (see :func:`convcli.engine.run_layer`).
        """
        from . import engine

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
