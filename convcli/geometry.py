"""Layer geometry: output sizes, padding amounts, weight shapes, parameter and MAC counts.

This module is the single source of truth for shapes: the engine pads with
:func:`conv_pad_amounts` / :func:`pool_pad_amounts`, ``apply`` checks inputs with
:func:`conv_layer`, and ``shape`` reports what :func:`conv_layer` and
:func:`pool_layer` compute, so the two commands cannot disagree.

Sizes follow Keras/TensorFlow. With the effective kernel extent
``ke = (k - 1) * d + 1`` along an axis of input size ``n``, stride ``s``:

* valid:  ``out = floor((n - ke) / s) + 1``
* same:   ``out = ceil(n / s)``, ``pad_total = max((out - 1) * s + ke - n, 0)``,
  ``pad_before = pad_total // 2`` (the odd pixel goes after: bottom/right)
* full:   ``k - 1`` dilated taps, ``(k - 1) * d`` on each side
* causal: ``(k - 1) * d`` before (left), 1-D signals only
* explicit: the given amounts, then as valid.

A layer on a 1-D signal (``one_d``: a 1×L×C input, a 1×K kernel or window and no rows
of padding) is reported as Keras' Conv1D family reports it: types ``conv1d``,
``depthwise_conv1d``, ``max_pooling1d``…, weights ``(K, C, F)``. Its sizes are those of
the 2-D rules with height 1, so output shapes stay H×W×C lists (1×L'×F).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import GeometryError
from .layer import ConvSpec, Pair, Padding, PaddingMode, PoolMode, PoolSpec

Shape3 = tuple[int, int, int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right


def _fmt(n: int) -> str:
    return f"{n:,}"


def kernel_extent(kernel: int, dilation: int) -> int:
    """Span in input pixels of a kernel of ``kernel`` taps dilated by ``dilation``."""
    return (kernel - 1) * dilation + 1


def _same_pads(size: int, extent: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def conv_pad_amounts(in_hw: Pair, kernel_hw: Pair, *, stride: Pair, dilation: Pair, padding: Padding) -> Pads:
    """Padding (top, bottom, left, right) a convolution adds, by the rules above."""
    eh, ew = kernel_extent(kernel_hw[0], dilation[0]), kernel_extent(kernel_hw[1], dilation[1])
    mode = padding.mode
    if mode is PaddingMode.VALID:
        return (0, 0, 0, 0)
    if mode is PaddingMode.SAME:
        return _same_pads(in_hw[0], eh, stride[0]) + _same_pads(in_hw[1], ew, stride[1])
    if mode is PaddingMode.FULL:
        return (eh - 1, eh - 1, ew - 1, ew - 1)
    if mode is PaddingMode.CAUSAL:
        if in_hw[0] != 1:
            raise GeometryError(
                f"padding 'causal' is for 1-D signals (1×L), but the input is {in_hw[0]}×{in_hw[1]}"
            )
        return (0, 0, ew - 1, 0)
    return padding.amounts


def _valid_out(size: int, extent: int, stride: int) -> int:
    return (size - extent) // stride + 1 if size >= extent else 0


def conv_output_hw(in_hw: Pair, kernel_hw: Pair, *, stride: Pair, dilation: Pair, padding: Padding) -> Pair:
    """Output (height, width) of a convolution; 0 in an axis where the kernel does not fit."""
    top, bottom, left, right = conv_pad_amounts(in_hw, kernel_hw, stride=stride, dilation=dilation, padding=padding)
    eh, ew = kernel_extent(kernel_hw[0], dilation[0]), kernel_extent(kernel_hw[1], dilation[1])
    return (
        _valid_out(in_hw[0] + top + bottom, eh, stride[0]),
        _valid_out(in_hw[1] + left + right, ew, stride[1]),
    )


def pool_pad_amounts(in_hw: Pair, pool: PoolSpec) -> Pads:
    """Padding Keras' pooling adds: none for valid, TensorFlow 'same' rule otherwise."""
    if pool.padding is PaddingMode.VALID:
        return (0, 0, 0, 0)
    sh, sw = pool.strides
    return _same_pads(in_hw[0], pool.size[0], sh) + _same_pads(in_hw[1], pool.size[1], sw)


def pool_output_hw(in_hw: Pair, pool: PoolSpec) -> Pair:
    """Output (height, width) of a pooling step (valid: floor, same: ceil(n / s))."""
    sh, sw = pool.strides
    if pool.padding is PaddingMode.SAME:
        return (-(-in_hw[0] // sh), -(-in_hw[1] // sw))
    return (_valid_out(in_hw[0], pool.size[0], sh), _valid_out(in_hw[1], pool.size[1], sw))


@dataclass(frozen=True)
class LayerGeometry:
    """What one layer does to shapes, and what it costs.

    ``receptive_field`` and ``jump`` are (h, w) pairs describing one output pixel in
    input pixels of the network's first layer (jump: the distance in input pixels
    between neighbouring outputs, also called the effective stride).
    """

    # "conv2d", "depthwise_conv2d", "locally_connected2d", "max_pool", "avg_pool"; on a 1-D
    # signal "conv1d", "depthwise_conv1d", "locally_connected1d", "max_pooling1d", "average_pooling1d"
    type: str
    name: str
    input_shape: Shape3
    output_shape: Shape3
    weights_shape: tuple[int, ...] | None
    bias_shape: tuple[int, ...] | None
    params: int
    macs: int
    pads: Pads
    receptive_field: Pair = (1, 1)
    jump: Pair = (1, 1)
    explain: tuple[str, ...] = field(default=(), compare=False)

    @property
    def activation_bytes(self) -> int:
        """Memory of this layer's output in float32."""
        return 4 * self.output_shape[0] * self.output_shape[1] * self.output_shape[2]

    def as_dict(self) -> dict:
        return {
            "type": self.type,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "weights_shape": list(self.weights_shape) if self.weights_shape is not None else None,
            "bias_shape": list(self.bias_shape) if self.bias_shape is not None else None,
            "params": self.params,
            "macs": self.macs,
            "padding": list(self.pads),
            "receptive_field": list(self.receptive_field),
            "jump": list(self.jump),
            "activation_bytes": self.activation_bytes,
        }


def _axis_explain(axis: str, size: int, pad_before: int, pad_after: int, k: int, d: int, s: int,
                  padding: Padding, out: int) -> str:
    ext = f"(({k}−1)·{d}+1)"
    if padding.mode is PaddingMode.SAME:
        total = pad_before + pad_after
        return (f"{axis}: same → ceil({size} / {s}) = {out}; pad_total = max(({out}−1)·{s} + {ext} − {size}, 0)"
                f" = {total} → {pad_before} before, {pad_after} after")
    return (f"{axis}: floor(({size} + {pad_before} + {pad_after} − {ext}) / {s}) + 1 = {out}"
            f"  [{padding.mode.value} padding]")


def _rf(rf_in: Pair, jump_in: Pair, k: Pair, d: Pair, s: Pair) -> tuple[Pair, Pair]:
    rf = (rf_in[0] + (k[0] - 1) * d[0] * jump_in[0], rf_in[1] + (k[1] - 1) * d[1] * jump_in[1])
    return rf, (jump_in[0] * s[0], jump_in[1] * s[1])


def conv_layer(
    input_shape: Shape3,
    *,
    kernel_size: Pair,
    filters: int,
    spec: ConvSpec = ConvSpec(),
    kernel_depth: int | None = None,
    use_bias: bool = True,
    locally_connected: bool = False,
    name: str = "conv",
    rf_in: Pair = (1, 1),
    jump_in: Pair = (1, 1),
    one_d: bool = False,
) -> LayerGeometry:
    """Geometry of a convolution layer on an H×W×C input.

    ``kernel_depth`` is the depth of 3-D kernels (must equal C); ``None`` means 2-D
    kernels, which act on every channel (summed, or separately with ``depthwise``).
    Parameters follow Keras: ``(kh·kw·C + 1)·F`` for Conv2D, ``kh·kw·C·F + C·F`` for
    DepthwiseConv2D with ``depth_multiplier=F``, and ``oh·ow·(kh·kw·C·F + F)`` for a
    locally-connected layer. Raises :class:`GeometryError` when the output is empty or
    the depths disagree.

    ``one_d``: the layer is Keras' Conv1D (DepthwiseConv1D, LocallyConnected1D) on a
    1-D signal 1×L×C with a 1×K kernel: the same sizes and counts, reported with
    Conv1D's type names and kernel shape (K, C, F) — for DepthwiseConv1D F is the depth
    multiplier.
    """
    h, w, c = input_shape
    kh, kw = kernel_size
    if one_d and (h != 1 or kh != 1 or spec.padding.pads_rows):
        raise GeometryError(
            f"{name}: a 1-D layer needs a 1×L input, a 1×K kernel and no rows of padding; got input {h}×{w},"
            f" kernel {kh}×{kw}, padding {spec.padding}"
        )
    if filters < 1:
        raise GeometryError(f"{name}: filters must be at least 1, got {filters}")
    if kh < 1 or kw < 1:
        raise GeometryError(f"{name}: kernel size must be at least 1×1, got {kh}×{kw}")
    if kernel_depth is not None and kernel_depth != c and not spec.depthwise:
        raise GeometryError(
            f"{name}: kernels are {kh}×{kw}×{kernel_depth} but the input has {c} channel{'s' * (c != 1)}"
            f" ({h}×{w}×{c})"
        )
    if kernel_depth is not None and spec.depthwise and kernel_depth not in (1, c):
        raise GeometryError(
            f"{name}: depthwise kernels of depth {kernel_depth} do not match the input's {c} channels"
        )
    pads = conv_pad_amounts((h, w), kernel_size, stride=spec.stride, dilation=spec.dilation, padding=spec.padding)
    oh, ow = conv_output_hw((h, w), kernel_size, stride=spec.stride, dilation=spec.dilation, padding=spec.padding)
    eh, ew = kernel_extent(kh, spec.dilation[0]), kernel_extent(kw, spec.dilation[1])
    if oh < 1 or ow < 1:
        ph, pw = h + pads[0] + pads[1], w + pads[2] + pads[3]
        raise GeometryError(
            f"{name}: kernel extent {eh}×{ew} (kernel {kh}×{kw}, dilation {spec.dilation[0]},{spec.dilation[1]})"
            f" is larger than the padded input {ph}×{pw} (input {h}×{w}, padding {spec.padding});"
            f" the output would be {oh}×{ow}"
        )
    sh, sw = spec.stride
    dh, dw = spec.dilation
    if spec.depthwise and locally_connected:
        raise GeometryError(f"{name}: --locally-connected counts one full filter per output position; "
                            "it cannot be combined with a depthwise layer")
    width_line = _axis_explain("length" if one_d else "width", w, pads[2], pads[3], kw, dw, sw, spec.padding, ow)
    lines = [width_line] if one_d else [
        _axis_explain("height", h, pads[0], pads[1], kh, dh, sh, spec.padding, oh), width_line]
    # Keras' Conv1D kernels are (K, C, F); Conv2D's (KH, KW, C, F). The counts are the same.
    window = (kw,) if one_d else (kh, kw)
    taps = "·".join(str(k) for k in window)
    dims = "1d" if one_d else "2d"
    if spec.depthwise:
        out_c = c * filters
        weights = window + (c, filters)
        bias = (c * filters,) if use_bias else None
        params = kh * kw * c * filters + (c * filters if use_bias else 0)
        macs = oh * ow * c * filters * kh * kw
        kind = f"depthwise_conv{dims}"
        lines.append(f"channels: {c} inputs × {filters} per input (depthwise) = {out_c}")
        lines.append(
            f"params = {taps}·{c}·{filters}" + (f" + {c}·{filters}" if use_bias else "") + f" = {_fmt(params)}"
        )
        lines.append(f"MACs = {_positions(oh, ow, one_d)}·{c}·{filters}·{taps} = {_fmt(macs)}")
    elif locally_connected:
        out_c = filters
        weights = (oh * ow, kh * kw * c, filters)
        bias = ((ow,) if one_d else (oh, ow)) + (filters,) if use_bias else None
        params = oh * ow * (kh * kw * c * filters + (filters if use_bias else 0))
        macs = oh * ow * filters * kh * kw * c
        kind = f"locally_connected{dims}"
        lines.append(
            f"params = {_positions(oh, ow, one_d)}·({taps}·{c}·{filters}" + (f" + {filters}" if use_bias else "")
            + f") = {_fmt(params)}  (one filter per output position)"
        )
        lines.append(f"MACs = {_positions(oh, ow, one_d)}·{filters}·{taps}·{c} = {_fmt(macs)}")
    else:
        out_c = filters
        weights = window + (c, filters)
        bias = (filters,) if use_bias else None
        params = (kh * kw * c + (1 if use_bias else 0)) * filters
        macs = oh * ow * filters * kh * kw * c
        kind = f"conv{dims}"
        lines.append(
            f"params = ({taps}·{c}" + (" + 1" if use_bias else "") + f")·{filters} = {_fmt(params)}"
        )
        lines.append(f"MACs = {_positions(oh, ow, one_d)}·{filters}·{taps}·{c} = {_fmt(macs)}")
    rf, jump = _rf(rf_in, jump_in, kernel_size, spec.dilation, spec.stride)
    if one_d:
        lines.append(f"receptive field = {rf_in[1]} + ({kw}−1)·{dw}·{jump_in[1]} = {rf[1]}; jump = {jump[1]}")
    else:
        lines.append(
            f"receptive field = {rf_in[0]} + ({kh}−1)·{dh}·{jump_in[0]} = {rf[0]} (h), "
            f"{rf_in[1]} + ({kw}−1)·{dw}·{jump_in[1]} = {rf[1]} (w); jump = {jump[0]}, {jump[1]}"
        )
    return LayerGeometry(
        type=kind, name=name, input_shape=(h, w, c), output_shape=(oh, ow, out_c),
        weights_shape=weights, bias_shape=bias, params=params, macs=macs, pads=pads,
        receptive_field=rf, jump=jump, explain=tuple(lines),
    )


def _positions(oh: int, ow: int, one_d: bool) -> str:
    return str(ow) if one_d else f"{oh}·{ow}"


def pool_layer(input_shape: Shape3, pool: PoolSpec, *, name: str = "pool",
               rf_in: Pair = (1, 1), jump_in: Pair = (1, 1), one_d: bool = False) -> LayerGeometry:
    """Geometry of a max/avg pooling step (no parameters, no multiply-accumulates).

    ``one_d``: Keras' MaxPooling1D/AveragePooling1D on a 1×L×C signal with a 1×N window.
    """
    h, w, c = input_shape
    if one_d and (h != 1 or pool.size[0] != 1):
        raise GeometryError(f"{name}: a 1-D pool needs a 1×L input and a 1×N window; got input {h}×{w},"
                            f" window {pool.size[0]}×{pool.size[1]}")
    oh, ow = pool_output_hw((h, w), pool)
    pads = pool_pad_amounts((h, w), pool)
    if oh < 1 or ow < 1:
        raise GeometryError(
            f"{name}: pool {pool.size[0]}×{pool.size[1]} is larger than its input {h}×{w}"
            f" (padding {pool.padding.value}); the output would be {oh}×{ow}"
        )
    sh, sw = pool.strides
    width_axis = ("length" if one_d else "width", w, pool.size[1], sw, ow)
    axes = [width_axis] if one_d else [("height", h, pool.size[0], sh, oh), width_axis]
    if pool.padding is PaddingMode.SAME:
        lines = [f"{axis}: ceil({n} / {s}) = {out}" for axis, n, _, s, out in axes]
    else:
        lines = [f"{axis}: floor(({n} − {k}) / {s}) + 1 = {out}" for axis, n, k, s, out in axes]
    lines.append("params = 0")
    rf, jump = _rf(rf_in, jump_in, pool.size, (1, 1), pool.strides)
    if one_d:
        lines.append(f"receptive field = {rf[1]}; jump = {jump[1]}")
        kind = "max_pooling1d" if pool.mode is PoolMode.MAX else "average_pooling1d"
    else:
        lines.append(f"receptive field = {rf[0]}×{rf[1]}; jump = {jump[0]}, {jump[1]}")
        kind = "max_pool" if pool.mode is PoolMode.MAX else "avg_pool"
    return LayerGeometry(
        type=kind, name=name, input_shape=(h, w, c), output_shape=(oh, ow, c), weights_shape=None,
        bias_shape=None, params=0, macs=0, pads=pads, receptive_field=rf, jump=jump, explain=tuple(lines),
    )


def parse_input_shape(text: str) -> Shape3:
    """Parse ``HxWxC``, ``H,W,C``, ``HxW`` (one channel) or ``L`` (a 1-D signal, 1×L×1)."""
    return parse_input(text)[0]


def parse_input(text: str) -> tuple[Shape3, bool]:
    """``shape --input``: the shape as :func:`parse_input_shape`, and whether it is a 1-D signal.

    Only ``L`` (one number) is a signal; ``1xL`` or ``1xLxC`` is a one-row image (Conv2D).
    """
    from ._text import shorten
    from .errors import OptionError
    from .layer import MAX_INTEGER

    cleaned = text.strip().lower().replace("×", "x").replace(",", "x").replace(" ", "")
    pieces = cleaned.split("x")
    if len(pieces) > 3:
        raise OptionError(f"--input: expected HxWxC, H,W,C, HxW or L, got {shorten(text)}")
    for piece in pieces:
        # int() refuses more than 4,300 digits; a size that long is only too large.
        if len(piece) > 18 and piece.lstrip("+-").isdigit():
            raise OptionError(f"--input: the size {shorten(piece)} is more than {MAX_INTEGER}")
    try:
        parts = [int(p) for p in pieces]
    except ValueError:
        raise OptionError(f"--input: expected HxWxC, H,W,C, HxW or L, got {shorten(text)}") from None
    for part in parts:
        if part > MAX_INTEGER:
            raise OptionError(f"--input: the size {part} is more than {MAX_INTEGER}")
    signal = len(parts) == 1
    if signal:
        parts = [1, parts[0], 1]
    elif len(parts) == 2:
        parts = parts + [1]
    if len(parts) != 3:
        raise OptionError(f"--input: expected HxWxC, H,W,C, HxW or L, got {shorten(text)}")
    if any(p < 1 for p in parts):
        raise OptionError(f"--input: every size must be at least 1, got {shorten(text)}")
    return (parts[0], parts[1], parts[2]), signal


def output_shape(
    input_shape,
    *,
    kernel_size=3,
    filters: int = 1,
    stride=1,
    padding="valid",
    dilation=1,
    depthwise: bool = False,
) -> Shape3:
    """Output H'×W'×F of a convolution layer, as Keras computes it (public API).

    >>> output_shape((725, 1280, 3), kernel_size=4, filters=32)
    (722, 1277, 32)
    """
    from .layer import parse_pair

    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 2:
        shape = shape + (1,)
    spec = ConvSpec.from_options(stride=stride, padding=padding, dilation=dilation, depthwise=depthwise)
    return conv_layer(shape, kernel_size=parse_pair(kernel_size, "kernel_size"), filters=filters,
                      spec=spec).output_shape  # type: ignore[arg-type]
