"""Typed, immutable settings of one convolution or pooling layer.

Options become these values as early as possible (the CLI parses strings into them,
the Python API accepts plain ints and strings and converts them here), so no dict of
option strings travels through the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Union

from ._text import shorten
from .errors import OptionError

Pair = tuple[int, int]
PairLike = Union[int, tuple[int, int], list[int], str, Pair]


class SinglePair(tuple):
    """An (N, N) pair that was written as the single number N (``--stride 2``, ``size: 2``).

    To geometry and the engine it is the plain 2-tuple (N, N), and it compares equal to
    one. It differs on a 1-D signal only: there one number acts along the length, as
    Keras' ``Conv1D(kernel_size=3)`` and ``MaxPooling1D(2)`` read it, so
    :func:`on_signal` makes it (1, N); a pair written ``NH,NW`` keeps its 2-D meaning.
    """

    __slots__ = ()

    def __new__(cls, n: int) -> "SinglePair":
        return super().__new__(cls, (n, n))

    def __getnewargs__(self) -> tuple[int]:  # pickling (batch workers): rebuild from N
        return (self[1],)


def on_signal(pair: Pair) -> Pair:
    """What ``pair`` means on a 1-D signal: (1, N) if it was written as one number N, else itself."""
    return (1, pair[1]) if isinstance(pair, SinglePair) else pair


class Border(str, Enum):
    """What the padding holds (PyTorch's ``padding_mode`` names)."""

    ZEROS = "zeros"
    REFLECT = "reflect"  # mirror excluding the edge pixel, like numpy 'reflect'
    REPLICATE = "replicate"
    CIRCULAR = "circular"


class Activation(str, Enum):
    """Element-wise activation applied after the bias."""

    NONE = "none"
    RELU = "relu"
    LEAKY_RELU = "leaky-relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    ABS = "abs"


class PoolMode(str, Enum):
    MAX = "max"
    AVG = "avg"


class PaddingMode(str, Enum):
    VALID = "valid"
    SAME = "same"
    FULL = "full"
    CAUSAL = "causal"
    EXPLICIT = "explicit"


def _enum_value(enum_type, value, name: str):
    if isinstance(value, enum_type):
        return value
    if value is None and enum_type is Activation:
        return Activation.NONE
    text = str(value).strip().lower().replace("_", "-")
    if enum_type is Activation and text in ("leakyrelu", "leaky"):
        text = "leaky-relu"
    if enum_type is Border and text in ("zero", "constant"):
        text = "zeros"
    for member in enum_type:
        if member.value == text:
            return member
    choices = ", ".join(m.value for m in enum_type if m is not PaddingMode.EXPLICIT)
    raise OptionError(f"{name}: {shorten(value)} is not one of {choices}")


def parse_border(value, name: str = "--border") -> Border:
    return _enum_value(Border, value, name)


def parse_activation(value, name: str = "--activation") -> Activation:
    return _enum_value(Activation, value, name)


def parse_pool_mode(value, name: str = "--pool") -> PoolMode:
    return _enum_value(PoolMode, value, name)


#: Largest whole number a size, stride, dilation or padding may be (Keras and TensorFlow use
#: 32-bit sizes). Bounding it keeps every count convcli prints a number Python can print.
MAX_INTEGER = 2**31 - 1


def _ints(value, name: str) -> list[int]:
    parts = _parse_ints(value, name)
    for part in parts:
        if abs(part) > MAX_INTEGER:
            raise OptionError(f"{name}: {shorten(part)} is more than {MAX_INTEGER}")
    return parts


def _parse_ints(value, name: str) -> list[int]:
    if isinstance(value, bool):
        raise OptionError(f"{name}: expected a whole number or N,M, got {shorten(value)}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").replace("X", ",").split(",")]
        for part in parts:
            # int() refuses more than 4,300 digits like any non-number; such a number is only too large.
            if len(part) > 18 and part.lstrip("+-").isdigit():
                raise OptionError(f"{name}: {shorten(part)} is more than {MAX_INTEGER}")
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise OptionError(f"{name}: expected N or N,M with whole numbers, got {shorten(value)}") from None
    try:
        items = list(value)
    except TypeError:
        raise OptionError(f"{name}: expected N or N,M, got {shorten(value)}") from None
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or (
                isinstance(item, float) and not item.is_integer()):
            raise OptionError(f"{name}: expected whole numbers, got {shorten(value)}")
        out.append(int(item))
    return out


def parse_pair(value: PairLike, name: str, *, minimum: int = 1) -> Pair:
    """Parse ``N`` or ``NH,NW`` (also an int or a 1- or 2-sequence) into an (h, w) pair.

    One number N gives a :class:`SinglePair` (N, N), which remembers how it was written
    (on a 1-D signal it means 1×N); a parsed pair is returned as it is. Every part must
    be at least ``minimum``; the message names the option.
    """
    single = isinstance(value, SinglePair)
    parts = [value[1]] if single else _ints(value, name)  # type: ignore[index]
    if len(parts) == 1:
        single, parts = True, parts * 2
    if len(parts) != 2:
        raise OptionError(f"{name}: expected N or NH,NW, got {len(parts)} numbers ({shorten(value)})")
    for part in parts:
        if part < minimum:
            raise OptionError(f"{name}: must be at least {minimum}, got {value if isinstance(value, str) else tuple(parts)}")
    return SinglePair(parts[0]) if single else (parts[0], parts[1])


@dataclass(frozen=True)
class Padding:
    """How a convolution pads its input.

    ``mode`` is one of valid, same (TensorFlow: odd pixel bottom/right), full, causal
    (1-D: all on the left) or explicit, in which case ``amounts`` holds
    (top, bottom, left, right) in pixels. ``single``: the amounts were written as one
    number P, which on a 1-D signal pads its two ends only (:meth:`on_signal`).
    """

    mode: PaddingMode = PaddingMode.VALID
    amounts: tuple[int, int, int, int] = (0, 0, 0, 0)
    single: bool = False

    @classmethod
    def parse(cls, value, name: str = "--padding") -> "Padding":
        """Accept a mode name, ``P``, ``PH,PW`` or ``T,B,L,R`` (also ints and sequences)."""
        if isinstance(value, Padding):
            return value
        if isinstance(value, PaddingMode):
            return cls(value)
        if value is None:
            return cls()
        if isinstance(value, str) and value.strip().lower() in {m.value for m in PaddingMode} - {"explicit"}:
            return cls(PaddingMode(value.strip().lower()))
        try:
            parts = _ints(value, name)
        except OptionError:
            raise OptionError(
                f"{name}: {shorten(value)} is not valid, same, full, causal, P, PH,PW or T,B,L,R"
            ) from None
        if any(p < 0 for p in parts):
            raise OptionError(f"{name}: padding amounts must be >= 0, got {shorten(value)}")
        if len(parts) == 1:
            amounts = (parts[0],) * 4
        elif len(parts) == 2:
            amounts = (parts[0], parts[0], parts[1], parts[1])
        elif len(parts) == 4:
            amounts = tuple(parts)
        else:
            raise OptionError(f"{name}: expected P, PH,PW or T,B,L,R, got {len(parts)} numbers ({shorten(value)})")
        return cls(PaddingMode.EXPLICIT, amounts, single=len(parts) == 1)  # type: ignore[arg-type]

    def on_signal(self) -> "Padding":
        """This padding on a 1-D signal: one number P pads the two ends only (Keras ZeroPadding1D(P))."""
        if self.mode is PaddingMode.EXPLICIT and self.single:
            return Padding(PaddingMode.EXPLICIT, (0, 0, self.amounts[2], self.amounts[3]))
        return self

    @property
    def pads_rows(self) -> bool:
        """Explicit amounts above or below: the layer adds rows (on a signal it is then 2-D)."""
        return self.mode is PaddingMode.EXPLICIT and (self.amounts[0] > 0 or self.amounts[1] > 0)

    def __str__(self) -> str:
        if self.mode is PaddingMode.EXPLICIT:
            return ",".join(str(a) for a in self.amounts)
        return self.mode.value


def parse_slope(value, name: str) -> float:
    """A finite leaky-relu slope (``nan`` or ``inf`` would fill the maps with NaN/Inf)."""
    try:
        slope = float(value)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"{name}: expected a number, got {shorten(value)}") from None
    if isinstance(value, bool) or not math.isfinite(slope):
        raise OptionError(f"{name}: expected a finite number, got {shorten(value)}")
    return slope


@dataclass(frozen=True)
class ConvSpec:
    """Settings of one convolution layer (everything but the weights)."""

    stride: Pair = SinglePair(1)
    padding: Padding = field(default_factory=Padding)
    dilation: Pair = SinglePair(1)
    border: Border = Border.ZEROS
    flip: bool = False
    depthwise: bool = False
    activation: Activation = Activation.NONE
    negative_slope: float = 0.3

    @classmethod
    def from_options(
        cls,
        *,
        stride: PairLike = 1,
        padding=None,
        dilation: PairLike = 1,
        border="zeros",
        flip: bool = False,
        depthwise: bool = False,
        activation=None,
        negative_slope: float = 0.3,
    ) -> "ConvSpec":
        return cls(
            stride=parse_pair(stride, "stride"),
            padding=Padding.parse(padding if padding is not None else "valid", "padding"),
            dilation=parse_pair(dilation, "dilation"),
            border=parse_border(border, "border"),
            flip=bool(flip),
            depthwise=bool(depthwise),
            activation=parse_activation(activation, "activation"),
            negative_slope=parse_slope(negative_slope, "negative-slope"),
        )

    def on_signal(self) -> "ConvSpec":
        """These settings on a 1-D signal: values written as one number act along its length."""
        return replace(self, stride=on_signal(self.stride), dilation=on_signal(self.dilation),
                       padding=self.padding.on_signal())


@dataclass(frozen=True)
class PoolSpec:
    """Pooling after the activation (Keras MaxPooling2D / AveragePooling2D)."""

    mode: PoolMode = PoolMode.MAX
    size: Pair = SinglePair(2)
    stride: Pair | None = None  # None: the pool size, as Keras
    padding: PaddingMode = PaddingMode.VALID  # valid or same only

    @property
    def strides(self) -> Pair:
        return self.stride if self.stride is not None else self.size

    @classmethod
    def from_options(cls, *, mode, size: PairLike = 2, stride: PairLike | None = None, padding="valid") -> "PoolSpec":
        pad = str(padding.value if isinstance(padding, PaddingMode) else padding).strip().lower()
        if pad not in ("valid", "same"):
            raise OptionError(f"pool-padding: {shorten(padding)} is not one of valid, same")
        return cls(
            mode=parse_pool_mode(mode, "pool"),
            size=parse_pair(size, "pool-size"),
            stride=None if stride is None else parse_pair(stride, "pool-stride"),
            padding=PaddingMode(pad),
        )

    def on_signal(self) -> "PoolSpec":
        """This pool on a 1-D signal: a size or stride written as one number N is 1×N (MaxPooling1D(N))."""
        return replace(self, size=on_signal(self.size),
                       stride=None if self.stride is None else on_signal(self.stride))
