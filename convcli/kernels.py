"""Kernels: the :class:`Kernel` and :class:`FilterBank` value objects, kernel files, built-ins.

A layer's filters come from one or more *sources* (:func:`load_kernels`), each of which is

- a kernel file: YAML (``.yaml``, ``.yml``) or JSON (``.json``) with the schema below, a
  libvips matrix (``.mat``) or a numpy array (``.npy``, ``allow_pickle=False``);
- an inline matrix in ImageMagick's form, ``'3x3: 0,1,0 0,1,0 0,1,0'`` (``WxH``, width first;
  ``'3: …'`` is the square shorthand; rows separated by spaces or ``;``), or a JSON list
  such as ``'[[0,1,0],[0,1,0],[0,1,0]]'``;
- the name of a built-in kernel (``kernels/<name>.yaml``, shipped as ``convcli.kernels_data``);
- a ``numpy.ndarray``, a :class:`Kernel` or a :class:`FilterBank` (Python API only).

Filters keep the order of the sources and, inside a source, the order of the file.

Kernel file schema (SPEC §2)
----------------------------
Single kernel::

    name: vertical-line        # optional, default: the file's stem
    description: Vertical line detector
    weights: [[0, 1, 0], [0, 1, 0], [0, 1, 0]]
    bias: 0.0                  # optional, default 0
    scale: 1.0                 # optional factor on the weights
    normalize: false           # optional: divide the weights by their sum first
    layout: hwio               # optional, see below

Bank: ``filters: [{name, description, weights, bias, scale, normalize, layout}, …]`` next to
an optional top-level ``name`` and ``description`` (a filter without a name is called
``<name>[i]``, one without a description gets the bank's). A top-level list instead of a
mapping is read as ``weights``. Any other key is an error naming the key and the file, as
are duplicate keys.

How ``weights`` is read, by nesting depth and ``layout``:

===== ============== ================================================================
depth layout         result
===== ============== ================================================================
1     (none)         one kernel 1×kw (Keras Conv1D on a 1×L signal)
2     (none)         one kernel kh×kw, applied to every input channel and summed
3     ``hwc``        one kernel kh×kw×cin (the default for 3-D, as SPEC §1 says)
3     ``wio``        Keras Conv1D weights kw×cin×cout: cout kernels of shape 1×kw×cin
3     ``oiw``        PyTorch Conv1d weights cout×cin×kw: same kernels as ``wio``
4     ``hwio``       Keras Conv2D weights kh×kw×cin×cout (the default for 4-D)
4     ``oihw``       PyTorch Conv2d weights cout×cin×kh×kw, converted to HWIO
===== ============== ================================================================

So the seeds' Conv1D array ``[[[0]], [[1]], [[0]]]`` (shape 3×1×1) is a 3×1 kernel of depth 1
without a layout, and the 1×3 depth-1 kernel ``[0, 1, 0]`` the seeds mean with
``layout: wio``; their Conv2D array (3×3×1×1) loads as written, since 4-D defaults to HWIO.
A multi-filter tensor (``wio``, ``oiw``, 4-D) names filter i ``<name>[i]`` and takes ``bias``
as a list of length cout (a single number is used for every filter); a single kernel takes a
number (or a one-element list, as Keras' ``set_weights`` writes it).

``normalize: true`` divides each filter by the sum of its weights (a KernelError if that sum
is 0, i.e. below 1e-6 of the sum of magnitudes), then ``scale`` multiplies. The arithmetic is
done in float64, so a normalised box blur sums to 1 within float32 rounding.

Other formats: a libvips ``.mat`` file has a first line ``W H [scale [offset]]`` and H rows
of W numbers (separated by spaces, tabs, commas or quotes); libvips computes
``sum(w·x) / scale + offset``, so the weights are divided by ``scale`` and ``offset`` becomes
the bias. A ``.npy`` array follows the table above with the default layouts.

Untrusted input
---------------
Kernel files may come from anywhere, so reading them is bounded: files larger than
:data:`MAX_FILE_BYTES` are refused before parsing; YAML is parsed with PyYAML's safe parser
event by event (no object construction beyond plain scalars, lists and mappings), and
refused when nested deeper than :data:`MAX_NESTING` or when aliases would expand to more than
:data:`MAX_ALIAS_NODES` extra nodes (a "billion laughs" file fails at once); a kernel source
may hold at most :data:`MAX_WEIGHTS` weights. Names are kept as written (control characters
are refused); :func:`safe_name` maps one to a string fit to be part of a file name.

Every error a user can cause is a :class:`~convcli.errors.KernelError` whose message is one
line starting with the source (file path, ``built-in NAME``, ``inline kernel '…'``).
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from ._paths import check_regular_file
from ._text import shorten
from .errors import KernelError

__all__ = [
    "Kernel",
    "FilterBank",
    "BuiltinEntry",
    "load_kernels",
    "resolve_source",
    "source_file",
    "load_file",
    "parse_inline",
    "looks_inline",
    "parse_document",
    "builtin_names",
    "builtin_kernels",
    "builtin_catalog",
    "load_builtin",
    "safe_name",
    "read_text",
    "parse_document",
    "looks_inline",
    "MAX_FILE_BYTES",
    "MAX_YAML_BYTES",
    "MAX_FILTERS",
    "MAX_WEIGHTS",
    "MAX_ALIAS_NODES",
    "MAX_NESTING",
]

#: Kernel files larger than this are refused before they are parsed (from the file's length).
MAX_FILE_BYTES = 16 << 20
#: YAML kernel files larger than this are refused before they are parsed: YAML is composed
#: event by event in Python (about 1 µs per number), so a 1 MiB file of short numbers takes
#: about a second; JSON and ``.mat`` parse several times faster, and ``.npy`` is read as is.
MAX_YAML_BYTES = 1 << 20
#: Most filters one layer may have (a bank's filters are counted before they are built;
#: the widest layers of VGG and ResNet have 512–2048).
MAX_FILTERS = 4096
#: Most weights one source may hold (a 3×3×512×512 bank has 2.4 M, all of VGG16's conv layers
#: 14.7 M): 64 MiB as float32. Loading one costs about four times its float32 size at peak.
MAX_WEIGHTS = 1 << 24
#: Most nodes YAML aliases may add on expansion; legitimate kernel files need few or none.
MAX_ALIAS_NODES = 1_000_000
#: Deepest YAML/JSON nesting accepted (a bank with 4-D weights needs 6 levels).
MAX_NESTING = 32
#: Longest kernel name accepted, in characters.
MAX_NAME_CHARS = 256
#: Longest result of :func:`safe_name`, in UTF-8 bytes (file names allow 255).
SAFE_NAME_MAX_BYTES = 64

_FILE_KEYS = frozenset({"name", "description", "weights", "bias", "scale", "normalize", "layout", "filters"})
_FILTER_KEYS = frozenset({"name", "description", "weights", "bias", "scale", "normalize", "layout"})
_LAYOUTS = {1: ("w",), 2: ("hw",), 3: ("hwc", "wio", "oiw"), 4: ("hwio", "oihw")}
_ALL_LAYOUTS = ("hwio", "oihw", "hwc", "wio", "oiw", "hw", "w")
_SUFFIXES = (".yaml", ".yml", ".json", ".mat", ".npy")
_F32_MAX = float(np.finfo(np.float32).max)

Source = Union[str, os.PathLike, np.ndarray, "Kernel", "FilterBank"]


# --------------------------------------------------------------------------- value objects


def _fmt_size(shape) -> str:
    return "x".join(str(n) for n in shape)


@dataclass(frozen=True, eq=False, repr=False)
class Kernel:
    """One filter: float32 weights of shape (kh, kw) or (kh, kw, cin), a bias and a name.

    Parameters
    ----------
    name : str
        The filter's name, as written in its source (see :func:`safe_name` for file names).
    weights : array_like
        1-D (kw,), 2-D (kh, kw) or 3-D (kh, kw, cin). A 1-D kernel is stored as (1, kw). The
        weights are copied to a read-only, C-contiguous float32 array.
    bias : float, optional
        Added to every output value of this filter.
    description : str, optional
        One line for listings.
    source : str, optional
        Where the kernel came from, for messages: a file path, ``"built-in edge"``, ``"inline …"``.

    Raises
    ------
    KernelError
        Empty, non-finite or wrongly shaped weights, non-finite bias, bad name.

    Notes
    -----
    A 2-D kernel is used for every input channel and the products are summed (SPEC §1); a
    3-D kernel must match the input's channels exactly. The layer applies it as a
    cross-correlation (no flip) unless ``--flip`` is given.
    """

    name: str
    weights: np.ndarray
    bias: float = 0.0
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = f"{self.source or 'kernel'}: kernel {self.name!r}"
        if not isinstance(self.name, str):
            raise KernelError(f"{self.source or 'kernel'}: kernel name must be a string, got {shorten(self.name)}")
        try:
            # asarray: no copy of float64 weights (the float32 copy below is the kernel's own).
            weights = np.asarray(self.weights, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise KernelError(f"{where}: weights are not a numeric array ({exc})") from None
        if weights.ndim == 1:
            weights = weights.reshape(1, -1)
        if weights.ndim not in (2, 3):
            raise KernelError(
                f"{where}: weights must be 1-D, 2-D or 3-D, got {weights.ndim}-D shape {_fmt_size(weights.shape)}"
            )
        if weights.size == 0:
            raise KernelError(f"{where}: weights are empty (shape {_fmt_size(weights.shape)})")
        if weights.size > MAX_WEIGHTS:
            raise KernelError(f"{where}: {weights.size} weights, more than the {MAX_WEIGHTS} allowed")
        _check_finite(weights, where, "weights")
        # float32 end to end; the copy makes the kernel own its (read-only) weights.
        frozen = np.ascontiguousarray(weights, dtype=np.float32)
        frozen.setflags(write=False)
        try:
            bias = float(self.bias)
        except (TypeError, ValueError):
            raise KernelError(f"{where}: bias must be a number, got {shorten(self.bias)}") from None
        if not math.isfinite(bias) or abs(bias) > _F32_MAX:
            raise KernelError(f"{where}: bias {shorten(bias)} is not a finite float32 number")
        object.__setattr__(self, "weights", frozen)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "description", str(self.description or ""))
        object.__setattr__(self, "source", str(self.source or ""))

    @property
    def size(self) -> tuple[int, int]:
        """Spatial size ``(kh, kw)``."""
        return (int(self.weights.shape[0]), int(self.weights.shape[1]))

    @property
    def depth(self) -> int | None:
        """Input channels of a 3-D kernel; ``None`` for a 2-D kernel (any number of channels)."""
        return int(self.weights.shape[2]) if self.weights.ndim == 3 else None

    def __eq__(self, other: object) -> bool:
        # Two kernels are equal when they compute the same thing under the same name;
        # where they came from (``source``) does not matter.
        if not isinstance(other, Kernel):
            return NotImplemented
        return (
            self.name == other.name
            and self.bias == other.bias
            and self.description == other.description
            and self.weights.shape == other.weights.shape
            and bool(np.array_equal(self.weights, other.weights))
        )

    def __hash__(self) -> int:
        return hash((self.name, self.bias, self.weights.shape, self.weights.tobytes()))

    def __repr__(self) -> str:
        depth = f"x{self.depth}" if self.depth is not None else ""
        return f"Kernel(name={self.name!r}, size={_fmt_size(self.size)}{depth}, bias={self.bias}, source={self.source!r})"


@dataclass(frozen=True, eq=False, repr=False)
class FilterBank:
    """The ordered filters of one convolution layer.

    Parameters
    ----------
    kernels : sequence of Kernel
        At least one kernel; the order is the order of the layer's output channels.

    Notes
    -----
    All kernels of a layer must share one spatial size (:attr:`size`) and 3-D kernels one
    depth (:attr:`depth`); both are checked when asked for, and by :func:`load_kernels`.
    """

    kernels: tuple[Kernel, ...]

    def __post_init__(self) -> None:
        kernels = tuple(self.kernels)
        for item in kernels:
            if not isinstance(item, Kernel):
                raise TypeError(f"FilterBank takes Kernel objects, got {type(item).__name__}")
        if not kernels:
            raise KernelError("empty filter bank: a layer needs at least one kernel")
        object.__setattr__(self, "kernels", kernels)

    @property
    def names(self) -> list[str]:
        """The filters' names, in order."""
        return [k.name for k in self.kernels]

    @property
    def filters(self) -> int:
        """Number of filters F (output channels of a normal convolution)."""
        return len(self.kernels)

    @property
    def size(self) -> tuple[int, int]:
        """The common spatial size ``(kh, kw)``.

        Raises
        ------
        KernelError
            If two kernels differ in size; the message names both and their sizes.
        """
        first = self.kernels[0]
        for other in self.kernels[1:]:
            if other.size != first.size:
                raise KernelError(
                    f"the kernels of one layer must have the same size: {_describe(first)} is "
                    f"{_fmt_size(first.size)}, {_describe(other)} is {_fmt_size(other.size)}"
                )
        return first.size

    @property
    def depth(self) -> int | None:
        """The input depth the bank requires, or ``None`` if every kernel is 2-D.

        Raises
        ------
        KernelError
            If two 3-D kernels differ in depth.
        """
        deep = [k for k in self.kernels if k.depth is not None]
        if not deep:
            return None
        for other in deep[1:]:
            if other.depth != deep[0].depth:
                raise KernelError(
                    f"the kernels of one layer must have the same depth: {_describe(deep[0])} has "
                    f"depth {deep[0].depth}, {_describe(other)} has depth {other.depth}"
                )
        return deep[0].depth

    def weights_hwio(self, channels: int) -> np.ndarray:
        """The weights as one float32 array of shape ``(kh, kw, channels, F)`` (Keras HWIO).

        Parameters
        ----------
        channels : int
            Channels C of the input the layer is applied to.

        Returns
        -------
        numpy.ndarray
            float32, C-contiguous, shape ``(kh, kw, channels, F)``: a 2-D kernel is repeated
            over the channels (as ``np.repeat(kernel, C, axis=2)`` in the seeds), a 3-D kernel
            is used as it is.

        Raises
        ------
        KernelError
            A 3-D kernel whose depth is not ``channels``; kernels of different sizes.
        """
        kh, kw = self.size
        channels = int(channels)
        out = np.empty((kh, kw, channels, self.filters), dtype=np.float32)
        for index, kernel in enumerate(self.kernels):
            if kernel.depth is None:
                out[:, :, :, index] = kernel.weights[:, :, None]
            elif kernel.depth != channels:
                plural = "" if channels == 1 else "s"
                raise KernelError(
                    f"{_describe(kernel)} has depth {kernel.depth} but the input has {channels} channel{plural}"
                )
            else:
                out[:, :, :, index] = kernel.weights
        return out

    def biases(self) -> np.ndarray:
        """The biases as a float32 array of shape ``(F,)``."""
        return np.array([k.bias for k in self.kernels], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.kernels)

    def __iter__(self) -> Iterator[Kernel]:
        return iter(self.kernels)

    def __getitem__(self, index: int) -> Kernel:
        return self.kernels[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FilterBank):
            return NotImplemented
        return self.kernels == other.kernels

    def __hash__(self) -> int:
        return hash(self.kernels)

    def __repr__(self) -> str:
        return f"FilterBank({', '.join(repr(k) for k in self.kernels)})"


def _describe(kernel: Kernel) -> str:
    return f"kernel {kernel.name!r} ({kernel.source})" if kernel.source else f"kernel {kernel.name!r}"


@dataclass(frozen=True)
class BuiltinEntry:
    """One built-in kernel file, for ``convcli kernels``: its name, description and filters."""

    name: str
    description: str
    bank: FilterBank

    @property
    def size(self) -> tuple[int, int]:
        """Spatial size of the file's kernels."""
        return self.bank.size

    @property
    def filters(self) -> int:
        """How many filters the file holds (1 for a single kernel)."""
        return self.bank.filters


# --------------------------------------------------------------------------- public loaders


def load_kernels(*sources: Source, base_dir: str | os.PathLike | None = None) -> FilterBank:
    """Load the filters of one layer from several sources, in order.

    Parameters
    ----------
    *sources : str, path, numpy.ndarray, Kernel or FilterBank
        Each string is resolved by :func:`resolve_source` (file, inline matrix, built-in); an
        array follows the shape rules of ``weights`` (module docstring) with default layouts.
    base_dir : path, optional
        Relative file paths are looked up here first (pipeline files name kernels relative
        to themselves).

    Returns
    -------
    FilterBank
        All filters of all sources, in the order given: F = the sum of the sources' filters.

    Raises
    ------
    KernelError
        No sources, a bad source (see :func:`resolve_source`), or filters that cannot form
        one layer (different spatial sizes or 3-D depths).
    """
    if not sources:
        raise KernelError("no kernels given: a layer needs at least one kernel source")
    kernels: list[Kernel] = []
    for position, source in enumerate(sources):
        if isinstance(source, FilterBank):
            kernels.extend(source.kernels)
        elif isinstance(source, Kernel):
            kernels.append(source)
        elif isinstance(source, np.ndarray):
            name = "array" if len(sources) == 1 else f"array{position}"
            kernels.extend(_kernels_from_array(source, source=f"array argument {position}", name=name))
        elif isinstance(source, (str, os.PathLike)):
            kernels.extend(resolve_source(source, base_dir=base_dir).kernels)
        else:
            raise TypeError(
                f"kernel source {position} must be a path, name, inline string, numpy array, "
                f"Kernel or FilterBank, got {type(source).__name__}"
            )
    if len(kernels) > MAX_FILTERS:
        raise KernelError(f"{len(kernels)} filters in one layer, more than the {MAX_FILTERS} allowed")
    bank = FilterBank(tuple(kernels))
    # Fail at load time (usage error) rather than when the first image is processed.
    bank.size
    bank.depth
    return bank


def resolve_source(value: str | os.PathLike, *, base_dir: str | os.PathLike | None = None) -> FilterBank:
    """Load what one ``-k`` value names: a file, an inline matrix or a built-in kernel.

    The value is tried, in this order, as an existing path (relative ones under ``base_dir``
    first, if given; a directory only if no built-in has its name), an inline matrix (``'WxH: …'``, ``'N: …'`` or a JSON list ``'[…]'``), and
    the name of a built-in kernel (case-insensitive, ``_`` taken as ``-``).

    Returns
    -------
    FilterBank
        The source's filters in file order.

    Raises
    ------
    KernelError
        ``"kernel 'foo': no such file or built-in kernel (built-ins: …)"`` when nothing
        matches; otherwise the error of the file or inline parser.
    """
    text = os.fspath(value)
    if not isinstance(text, str):  # a bytes path
        text = os.fsdecode(text)
    if not text.strip():
        raise KernelError("kernel '': an empty kernel name or path")
    key = text.strip().lower().replace("_", "-")
    path = source_file(text, base_dir=base_dir)
    if path is not None:
        return load_file(path)
    if looks_inline(text):
        return parse_inline(text)
    if key in builtin_names():
        return load_builtin(key)
    names = ", ".join(builtin_names())
    raise KernelError(f"kernel {shorten(text, 60)}: no such file or built-in kernel (built-ins: {names})")


def source_file(value: str | os.PathLike, *, base_dir: str | os.PathLike | None = None) -> Path | None:
    """The path a kernel source names, as :func:`resolve_source` reads it; None for the others.

    None for an inline matrix, a built-in kernel or a value that names nothing. ``apply``
    uses it to protect the kernel files it reads from being overwritten by its outputs.
    """
    text = os.fspath(value)
    if not isinstance(text, str):  # a bytes path
        text = os.fsdecode(text)
    if not text.strip():
        return None
    key = text.strip().lower().replace("_", "-")
    path = _existing_path(text, base_dir)
    # A directory that happens to share a built-in's name (``./edge/``) is not a kernel file.
    if path is not None and not (path.is_dir() and key in builtin_names()):
        return path
    return None


def _existing_path(text: str, base_dir) -> Path | None:
    candidates = []
    if base_dir is not None and not os.path.isabs(text):
        candidates.append(Path(base_dir) / text)
    candidates.append(Path(text))
    for candidate in candidates:
        try:
            if candidate.exists():
                return candidate
        except (OSError, ValueError):  # NUL bytes, names too long: not a path
            continue
    return None


def load_file(path: str | os.PathLike) -> FilterBank:
    """Load a kernel file, choosing the format by its extension.

    Parameters
    ----------
    path : path
        ``.yaml``/``.yml``/``.json`` (SPEC §2 schema), ``.mat`` (libvips) or ``.npy``.

    Returns
    -------
    FilterBank
        The file's filters in file order.

    Raises
    ------
    KernelError
        Unsupported extension, unreadable or oversized file, or any problem in its content.
    """
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise KernelError(
            f"{source}: unsupported kernel file type {suffix or '(no extension)'!r} "
            f"(use .yaml, .yml, .json, .mat or .npy)"
        )
    if suffix == ".npy":
        return FilterBank(tuple(_load_npy(path, source)))
    if suffix in (".yaml", ".yml"):
        data = _read_bounded(path, source, limit=min(MAX_YAML_BYTES, MAX_FILE_BYTES),
                             limit_what="YAML kernel file",
                             hint="; save large banks as .json or .npy")
    else:
        data = _read_bounded(path, source)
    text = _decode(data, source)
    if suffix == ".mat":
        return FilterBank(tuple(_parse_mat(text, source, path.stem)))
    document = _parse_json(text, source) if suffix == ".json" else _parse_yaml(text, source)
    return FilterBank(tuple(_kernels_from_document(document, source, path.stem)))


def parse_inline(text: str) -> FilterBank:
    """Parse an inline kernel: ImageMagick's ``'WxH: v,v,v v,v,v'`` or a JSON list.

    ``WxH`` is width × height (ImageMagick's order), ``N`` alone means N×N. Values are
    separated by commas and/or spaces and fill the rows in order; when rows are marked (by
    ``;`` or by space-separated groups of comma-separated values) each row must hold W
    values. A JSON list follows the ``weights`` rules. The kernel is named ``inline``.

    Returns
    -------
    FilterBank
        One kernel of shape (H, W) (or as the JSON list says).

    Raises
    ------
    KernelError
        Wrong number of values, ragged rows, non-numeric or non-finite values, an origin
        offset (``3x3+1+1:``), which convcli does not support.
    """
    source = f"inline kernel {_clip(text)!r}"
    if len(text) > MAX_FILE_BYTES:
        raise KernelError(f"{source}: {len(text)} characters, more than the {MAX_FILE_BYTES} allowed")
    if text.lstrip().startswith("["):
        document = _parse_json(text, source)
        return FilterBank(tuple(_kernels_from_document({"weights": document}, source, "inline")))
    match = _INLINE.fullmatch(text)
    if match is None:
        raise KernelError(f"{source}: expected 'WxH: values', e.g. '3x3: 0,1,0 0,1,0 0,1,0'")
    width_text, height_text, origin, body = match.groups()
    if origin:
        raise KernelError(f"{source}: origin offsets ({origin.strip()}) are not supported; the kernel is centred as in Keras")
    width = int(width_text)
    height = int(height_text) if height_text is not None else width
    if width < 1 or height < 1:
        raise KernelError(f"{source}: the size {width}x{height} is empty")
    body = body.strip()
    if ";" in body:
        rows = [row for row in body.split(";")]
    else:
        groups = re.sub(r"\s*,\s*", ",", body).split()
        rows = groups if "," in body and len(groups) > 1 else [body]
    values: list[float] = []
    marked_rows = len(rows) > 1
    for row_index, row in enumerate(rows):
        tokens = [tok for tok in re.split(r"[\s,]+", row.strip()) if tok]
        if marked_rows and len(tokens) != width:
            raise KernelError(
                f"{source}: row {row_index + 1} has {len(tokens)} values, the width is {width} (ragged rows)"
            )
        for tok in tokens:
            values.append(_number(tok, source, f"value {len(values) + 1}"))
    if not values:
        raise KernelError(f"{source}: no values (an empty kernel)")
    if len(values) != width * height:
        raise KernelError(f"{source}: expected {width * height} values for {width}x{height}, got {len(values)}")
    kernel = Kernel("inline", np.array(values, dtype=np.float64).reshape(height, width), source=source)
    return FilterBank((kernel,))


def looks_inline(value: str) -> bool:
    """Whether a string has the form of an inline kernel (``'WxH: …'``, ``'N: …'`` or ``'[…]'``)."""
    return bool(_INLINE_HEAD.match(value)) or value.lstrip().startswith("[")


def parse_document(text: str, source: str, *, json_format: bool = False) -> Any:
    """Parse YAML (or JSON) text with the kernel files' bounds, into lists, dicts and scalars.

    The same safe, bounded parser kernel files use (nesting ≤ :data:`MAX_NESTING`, alias
    expansion ≤ :data:`MAX_ALIAS_NODES`, duplicate keys refused); for other YAML files of
    convcli such as pipelines. Errors are :class:`KernelError` starting with ``source``.
    """
    return _parse_json(text, source) if json_format else _parse_yaml(text, source)


_INLINE_HEAD = re.compile(r"\s*\d+\s*(?:[xX]\s*\d+)?\s*(?:[+-]\d+\s*[+-]\d+)?\s*:")
_INLINE = re.compile(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?(\s*[+-]\d+\s*[+-]\d+)?\s*:(.*)", re.S)


# --------------------------------------------------------------------------- built-ins


def _builtin_root():
    """The folder of the built-in kernel files.

    A plain folder next to the package's ``__init__`` in every normal install; only a
    zipped install needs :mod:`importlib.resources`, whose import costs about 15 ms of
    every command's start-up.
    """
    try:
        from . import kernels_data
    except ImportError:  # the package imported from a source checkout, not installed
        folder = Path(__file__).resolve().parent.parent / "kernels"
    else:
        folder = Path(kernels_data.__file__).parent
    if folder.is_dir():
        return folder
    from importlib.resources import files  # pragma: no cover - zip imports only

    return files("convcli.kernels_data")  # pragma: no cover


@lru_cache(maxsize=1)
def _builtin_files() -> dict[str, Any]:
    found = {}
    for entry in _builtin_root().iterdir():
        name, dot, suffix = entry.name.rpartition(".")
        if dot and "." + suffix.lower() in (".yaml", ".yml", ".json") and entry.is_file() and not name.startswith("_"):
            found[name.lower()] = entry
    return dict(sorted(found.items()))


#: The parsed built-in files, so loading one needs no YAML parser (importing PyYAML is
#: about 20 ms of a command's start-up). Written by ``tools/kernel_index.py``; an entry is
#: used only while the file's CRC-32 and size match, so an edited file is simply parsed.
INDEX_NAME = "_index.json"


@lru_cache(maxsize=1)
def _builtin_index() -> dict[str, Any]:
    try:
        index = json.loads((_builtin_root() / INDEX_NAME).read_text(encoding="utf-8"))
        return index["kernels"] if index.get("format") == 1 else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def parse_builtin_file(file_name: str, data: bytes, source: str) -> Any:
    """The document of a built-in kernel file (JSON or YAML by its suffix)."""
    text = _decode(data, source)
    return _parse_json(text, source) if file_name.endswith(".json") else _parse_yaml(text, source)


def file_fingerprint(data: bytes) -> str:
    """What the index stores to tell that a built-in file is unchanged: CRC-32 and size."""
    return f"{zlib.crc32(data):08x}-{len(data)}"


def builtin_names() -> list[str]:
    """Names of the built-in kernel files, sorted (``kernels/<name>.yaml`` in the repo)."""
    return list(_builtin_files())


@lru_cache(maxsize=None)
def _load_builtin_cached(name: str) -> tuple[FilterBank, str]:
    entry = _builtin_files()[name]
    source = f"built-in {name}"
    data = entry.read_bytes()
    cached = _builtin_index().get(name)
    if isinstance(cached, dict) and cached.get("file") == entry.name and cached.get("fingerprint") == file_fingerprint(data):
        document = cached["document"]
    else:
        document = parse_builtin_file(entry.name, data, source)
    description = document.get("description", "") if isinstance(document, dict) else ""
    return FilterBank(tuple(_kernels_from_document(document, source, name))), str(description or "")


def load_builtin(name: str) -> FilterBank:
    """Load a built-in kernel by name (case-insensitive, ``_`` taken as ``-``).

    Raises
    ------
    KernelError
        ``"kernel 'foo': no such built-in kernel (built-ins: …)"``.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _builtin_files():
        raise KernelError(f"kernel {shorten(name, 60)}: no such built-in kernel (built-ins: {', '.join(builtin_names())})")
    return _load_builtin_cached(key)[0]


def builtin_catalog() -> list[BuiltinEntry]:
    """Every built-in file, sorted by name: its name, description and filters (banks included)."""
    entries = []
    for name in builtin_names():
        bank, description = _load_builtin_cached(name)
        entries.append(BuiltinEntry(name, description, bank))
    return entries


def builtin_kernels() -> list[Kernel]:
    """The single-kernel built-ins, sorted by name (banks are in :func:`builtin_catalog`)."""
    return [entry.bank.kernels[0] for entry in builtin_catalog() if entry.filters == 1]


# --------------------------------------------------------------------------- safe names

_UNSAFE_CHARS = set('/\\:*?"<>|')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}


def safe_name(name: str) -> str:
    """Map a kernel name to a string that is safe as one component of a file name.

    The result has no path separators (``/``, ``\\``), no ``..``, no leading ``.`` or ``-``,
    no control, format or space characters (each becomes ``_``), none of ``:*?"<>|``, is not a
    Windows device name, is at most :data:`SAFE_NAME_MAX_BYTES` bytes of UTF-8, and is never
    empty (``"kernel"`` then). ``safe_name(safe_name(s)) == safe_name(s)``. Different names may
    map to the same result, so a writer must still avoid collisions (e.g. with ``{index}``).

    Examples
    --------
    >>> safe_name("../../etc/passwd")
    '_etc_passwd'
    >>> safe_name("sobel-x[0]")
    'sobel-x[0]'
    """
    text = unicodedata.normalize("NFC", str(name))
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in _UNSAFE_CHARS or category[0] in ("C", "Z"):
            chars.append("_")
        else:
            chars.append(ch)
    result = re.sub(r"\.{2,}", "_", "".join(chars))
    result = re.sub(r"_{2,}", "_", result)
    result = _trim(result.lstrip(".-"))
    if result.split(".")[0].upper() in _WINDOWS_RESERVED:
        result = _trim("_" + result)
    return result or "kernel"


def _trim(text: str) -> str:
    encoded = text.encode("utf-8")[:SAFE_NAME_MAX_BYTES]
    # Cut at a character boundary; Windows drops trailing dots and spaces, so no name ends in one.
    return encoded.decode("utf-8", errors="ignore").rstrip(". ")


# --------------------------------------------------------------------------- reading files


def _read_bounded(path: Path, source: str, *, limit: int | None = None, what: str = "kernel file",
                  limit_what: str | None = None, hint: str = "") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, its length checked before it is opened.

    A FIFO, device or socket is refused before it is opened (reading one would block);
    ``limit_what`` (default ``what``) and ``hint`` word the message of a file that is too large.
    """
    limit = MAX_FILE_BYTES if limit is None else limit
    check_regular_file(path, KernelError, what=what)
    try:
        size = path.stat().st_size
        if size > limit:
            raise KernelError(f"{source}: {_size(size)}, larger than the {_size(limit)} allowed for a"
                              f" {limit_what or what}{hint}")
        with open(path, "rb") as handle:
            # Read one byte more than allowed: pipes and special files report size 0.
            data = handle.read(limit + 1)
    except OSError as exc:
        raise KernelError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise KernelError(f"{source}: larger than the {_size(limit)} allowed for a {limit_what or what}{hint}")
    return data


def _size(count: int) -> str:
    """Bytes for a message: ``16 MiB``, ``5.0 MiB``, ``12 kB``, ``10 bytes``."""
    if count >= 1 << 20:
        return f"{count >> 20} MiB" if count % (1 << 20) == 0 else f"{count / 2**20:.1f} MiB"
    if count >= 1 << 10:
        return f"{count >> 10} KiB" if count % (1 << 10) == 0 else f"{count / 2**10:.1f} KiB"
    return f"{count} bytes"


def read_text(path: str | os.PathLike, *, limit: int | None = None, what: str = "kernel file") -> str:
    """A UTF-8 text file of at most ``limit`` bytes (default :data:`MAX_FILE_BYTES`).

    For convcli's other small YAML/JSON files (pipelines); errors are one-line
    :class:`KernelError` messages naming the file.
    """
    path = Path(path)
    return _decode(_read_bounded(path, str(path), limit=limit, what=what), str(path))


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KernelError(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_json(text: str, source: str) -> Any:
    def pairs(items):
        mapping = {}
        for key, value in items:
            if key in mapping:
                raise KernelError(f"{source}: duplicate key {shorten(key)}")
            mapping[key] = value
        return mapping

    huge: list[str] = []

    def integer(digits: str):
        # Python refuses to convert an integer of more than 4,300 digits (sys.int_info):
        # keep a marker, and name the field it is in once the document is parsed.
        if len(digits) > _MAX_INT_CHARS:
            huge.append(digits)
            return _HugeNumber(digits)
        return int(digits)

    try:
        document = json.loads(text, object_pairs_hook=pairs, parse_int=integer)
        if huge:
            _raise_huge(document, source)
        return document
    except json.JSONDecodeError as exc:
        raise KernelError(f"{source}: invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise KernelError(f"{source}: JSON nested too deeply") from None


#: Longest integer literal accepted in a YAML or JSON file: Python's own limit for
#: converting text to int (4,300 digits); far beyond float32's 39-digit range anyway.
_MAX_INT_CHARS = 4300


class _HugeNumber:
    """An integer literal too long to convert, kept only to say where it is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _huge_message(source: str, where: str, text: str) -> str:
    return f"{source}: {where}: the number {shorten(text, 12)} is too large"


def _raise_huge(document: Any, source: str) -> None:
    """Raise for the first :class:`_HugeNumber` in ``document``, naming its field (``weights[0][2]``)."""
    pending: list[tuple[Any, str]] = [(document, "")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, _HugeNumber):
            raise KernelError(_huge_message(source, where or "the document", value.text))
        if isinstance(value, dict):
            pending.extend((item, f"{where}.{key}" if where else str(key)) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{i}]") for i, item in reversed(list(enumerate(value))))


def _yaml_field(stack: list) -> str:
    """Where the composer is in the document: ``layers[0].conv.stride``, ``weights[1][2]``."""
    where = ""
    for frame in stack:
        if frame.is_map:
            key = frame.key if frame.key is not _NO_KEY else "?"
            where = f"{where}.{key}" if where else str(key)
        else:
            where = f"{where}[{len(frame.container)}]"
    return where or "the document"


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


class _Frame:
    __slots__ = ("container", "is_map", "count", "anchor", "key", "line", "merges")

    def __init__(self, container, is_map, anchor, line):
        self.container = container
        self.is_map = is_map
        self.count = 1
        self.anchor = anchor
        self.key = _NO_KEY
        self.line = line
        self.merges: list = []  # values of '<<' keys, merged when the mapping ends


_NO_KEY = object()
_MERGE = object()  # the YAML merge key ``<<``
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_YAML12_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")


def _parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document into plain lists, dicts and scalars, with bounds.

    PyYAML's composer recurses (libyaml's crashes the interpreter on very deep nesting) and
    builds the whole node graph before anyone can count alias expansion, so the document is
    composed here from the parser's events instead: iteratively, with a nesting limit, and
    counting how many nodes every alias adds, which stops a "billion laughs" file at once.
    Scalars are resolved and constructed by PyYAML's safe constructor.
    """
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        return _compose(loader, source, yaml)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if "nesting depth" in str(getattr(exc, "problem", "")) and mark is not None:
            # The libyaml of recent PyYAML wheels (6.0.4) stops at 1000 levels while it scans ahead, before
            # the events reach the limit below: the same refusal, so the same message.
            raise KernelError(f"{source}: line {mark.line + 1}: nested deeper than {MAX_NESTING} levels") from None
        raise KernelError(f"{source}: invalid YAML: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


def _compose(loader, source: str, yaml) -> Any:
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int]] = {}
    open_anchors: set[str] = set()
    unique = 0  # nodes written in the file
    expanded = 0  # nodes after alias expansion
    documents = 0
    result: Any = None
    resolve = loader.resolve
    constructors = loader.yaml_constructors
    scalar_node = yaml.ScalarNode

    def line_of(event) -> int:
        mark = getattr(event, "start_mark", None)
        return mark.line + 1 if mark is not None else 0

    def add(value, count, event):
        nonlocal result
        if not stack:
            result = value
            return
        frame = stack[-1]
        frame.count += count
        if not frame.is_map:
            frame.container.append(value)
        elif frame.key is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise KernelError(f"{source}: line {line_of(event)}: a mapping key must be a plain value")
            if value in frame.container and value is not _MERGE:
                raise KernelError(f"{source}: line {line_of(event)}: duplicate key {shorten(value)}")
            frame.key = value
        else:
            if frame.key is _MERGE:
                frame.merges.append((value, line_of(event)))
            else:
                frame.container[frame.key] = value
            frame.key = _NO_KEY

    while True:
        event = loader.get_event()
        kind = type(event)
        if kind is yaml.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(scalar_node, event.value, event.implicit)
            if tag == _STR_TAG and event.implicit[0] and _YAML12_FLOAT.fullmatch(event.value):
                # YAML 1.1 reads 1e-3 (no dot) as a string; read it as the number everyone means (YAML 1.2).
                tag = _FLOAT_TAG
            constructor = constructors.get(tag)
            if tag == _MERGE_TAG:
                value = _MERGE
            elif constructor is None or tag is None:
                raise KernelError(f"{source}: line {line_of(event)}: unsupported YAML tag {shorten(event.tag, 80)}")
            else:
                try:
                    value = constructor(loader, scalar_node(tag, event.value, style=event.style))
                except ValueError:
                    # int() of more than 4,300 digits (Python's int-string limit), say where it is.
                    if len(event.value) <= _MAX_INT_CHARS:
                        raise
                    where = _yaml_field(stack)
                    raise KernelError(_huge_message(f"{source}: line {line_of(event)}", where,
                                                    event.value)) from None
            unique += 1
            expanded += 1
            if event.anchor is not None:
                anchors[event.anchor] = (value, 1)
            add(value, 1, event)
        elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
            is_map = kind is yaml.MappingStartEvent
            if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                raise KernelError(f"{source}: line {line_of(event)}: unsupported YAML tag {shorten(event.tag, 80)}")
            if len(stack) >= MAX_NESTING:
                raise KernelError(f"{source}: line {line_of(event)}: nested deeper than {MAX_NESTING} levels")
            unique += 1
            expanded += 1
            if event.anchor is not None:
                open_anchors.add(event.anchor)
            stack.append(_Frame({} if is_map else [], is_map, event.anchor, line_of(event)))
        elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
            frame = stack.pop()
            for merged, line in frame.merges:
                _merge(frame.container, merged, source, line)
            if frame.anchor is not None:
                anchors[frame.anchor] = (frame.container, frame.count)
                open_anchors.discard(frame.anchor)
            add(frame.container, frame.count, event)
        elif kind is yaml.AliasEvent:
            if event.anchor in open_anchors:
                raise KernelError(f"{source}: line {line_of(event)}: recursive YAML alias *{event.anchor}")
            if event.anchor not in anchors:
                raise KernelError(f"{source}: line {line_of(event)}: undefined YAML alias *{event.anchor}")
            value, count = anchors[event.anchor]
            expanded += count
            if expanded - unique > MAX_ALIAS_NODES:
                raise KernelError(f"{source}: YAML aliases expand to more than {MAX_ALIAS_NODES} nodes; refusing the file")
            add(value, count, event)
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise KernelError(f"{source}: line {line_of(event)}: more than one YAML document")
        elif kind is yaml.StreamEndEvent:
            return result


def _merge(target: dict, value: Any, source: str, line: int) -> None:
    # YAML merge keys (``<<: *defaults``): the mapping's own keys win, as in PyYAML.
    parts = value if isinstance(value, list) else [value]
    for part in parts:
        if not isinstance(part, dict):
            raise KernelError(f"{source}: line {line}: a '<<' merge needs a mapping")
        for key, item in part.items():
            target.setdefault(key, item)


# --------------------------------------------------------------------------- documents


def _kernels_from_document(document: Any, source: str, default_name: str) -> list[Kernel]:
    if document is None:
        raise KernelError(f"{source}: the file is empty; expected 'weights' or 'filters'")
    if isinstance(document, list):
        document = {"weights": document}
    if not isinstance(document, dict):
        raise KernelError(
            f"{source}: expected a mapping with 'weights' or 'filters', got {_type_name(document)}"
        )
    _check_keys(document, _FILE_KEYS, source, "")
    name = _name(document.get("name", default_name), source, "name")
    description = _text(document.get("description", ""), source, "description")
    if "filters" not in document:
        if "weights" not in document:
            raise KernelError(f"{source}: no 'weights' or 'filters' key")
        return _kernels_from_entry(document, source, "", name, description)
    clash = sorted(set(document) & {"weights", "bias", "scale", "normalize", "layout"})
    if clash:
        raise KernelError(f"{source}: key {shorten(clash[0])} cannot be used together with 'filters' (put it in each filter)")
    filters = document["filters"]
    if not isinstance(filters, list) or not filters:
        raise KernelError(f"{source}: 'filters' must be a non-empty list of filters, got {_type_name(filters)}")
    if len(filters) > MAX_FILTERS:
        raise KernelError(f"{source}: 'filters' holds {len(filters)} filters, more than the {MAX_FILTERS} allowed"
                          " in one layer")
    kernels: list[Kernel] = []
    for index, entry in enumerate(filters):
        where = f"filters[{index}]"
        if not isinstance(entry, dict):
            raise KernelError(f"{source}: {where} must be a mapping with 'weights', got {_type_name(entry)}")
        _check_keys(entry, _FILTER_KEYS, source, where + " ")
        if "weights" not in entry:
            raise KernelError(f"{source}: {where} has no 'weights'")
        entry_name = _name(entry.get("name", f"{name}[{index}]"), source, where + ".name")
        entry_description = _text(entry.get("description", description), source, where + ".description")
        kernels.extend(_kernels_from_entry(entry, source, where + ".", entry_name, entry_description))
    return kernels


def _check_keys(mapping: dict, allowed: frozenset, source: str, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise KernelError(
                f"{source}: {where}unknown key {shorten(key)} (allowed: {', '.join(sorted(allowed))})"
            )


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {shorten(value)}"
    if isinstance(value, str):
        return f"the string {_clip(value, 30)!r}"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _name(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str):
        raise KernelError(f"{source}: '{key}' must be a string, got {_type_name(value)}")
    if not value.strip():
        raise KernelError(f"{source}: '{key}' is empty")
    if len(value) > MAX_NAME_CHARS:
        raise KernelError(f"{source}: '{key}' is {len(value)} characters, more than {MAX_NAME_CHARS}")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise KernelError(f"{source}: '{key}' {_clip(value, 30)!r} contains control characters")
    return value


def _text(value: Any, source: str, key: str) -> str:
    if not isinstance(value, str):
        raise KernelError(f"{source}: '{key}' must be a string, got {_type_name(value)}")
    return value


def _scalar(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KernelError(f"{source}: '{key}' must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or abs(number) > _F32_MAX:
        raise KernelError(f"{source}: '{key}' is {shorten(value)}, not a finite float32 number")
    return number


def _kernels_from_entry(entry: dict, source: str, prefix: str, name: str, description: str) -> list[Kernel]:
    weights = _weights_array(entry["weights"], source, prefix + "weights")
    layout = entry.get("layout")
    scale = _scalar(entry.get("scale", 1.0), source, prefix + "scale")
    if scale == 0:
        raise KernelError(f"{source}: '{prefix}scale' is 0, which would zero every weight")
    normalize = entry.get("normalize", False)
    if not isinstance(normalize, bool):
        raise KernelError(f"{source}: '{prefix}normalize' must be true or false, got {_type_name(normalize)}")
    return _build(weights, source, prefix, name, description, layout, entry.get("bias", 0.0), scale, normalize)


def _build(
    weights: np.ndarray,
    source: str,
    prefix: str,
    name: str,
    description: str,
    layout: Any,
    bias: Any,
    scale: float = 1.0,
    normalize: bool = False,
) -> list[Kernel]:
    """Split a weights array into kernels following ``layout`` (module docstring).

    ``weights`` is float64, or float32 as a ``.npy`` holds it: each filter is converted
    to float64 on its own, so a large bank is never copied whole.
    """
    if layout is not None and (not isinstance(layout, str) or layout.lower() not in _ALL_LAYOUTS):
        raise KernelError(f"{source}: unknown '{prefix}layout' {shorten(layout)} (use {', '.join(_ALL_LAYOUTS)})")
    layout = layout.lower() if layout is not None else None
    if layout is not None and layout not in _LAYOUTS[weights.ndim]:
        raise KernelError(
            f"{source}: '{prefix}layout' {layout!r} needs {_ALL_LAYOUTS_NDIM[layout]}-D weights, "
            f"got {weights.ndim}-D (shape {_fmt_size(weights.shape)})"
        )
    count = _filter_count(weights.shape, layout)
    if count > MAX_FILTERS:
        raise KernelError(f"{source}: '{prefix}weights' of shape {_fmt_size(weights.shape)} hold {count} filters,"
                          f" more than the {MAX_FILTERS} allowed in one layer")
    if weights.ndim == 4:
        hwio = weights.transpose(2, 3, 1, 0) if layout == "oihw" else weights
        filters = [hwio[:, :, :, o] for o in range(hwio.shape[3])]
    elif weights.ndim == 3 and layout in ("wio", "oiw"):
        wio = weights.transpose(2, 1, 0) if layout == "oiw" else weights
        filters = [wio[None, :, :, o] for o in range(wio.shape[2])]
    else:
        filters = None
    if filters is None:
        biases = [_bias_list(bias, 1, source, prefix)[0]]
        arrays, names = [weights], [name]
    else:
        biases = _bias_list(bias, len(filters), source, prefix)
        arrays, names = filters, [f"{name}[{o}]" for o in range(len(filters))]
    kernels = []
    for array, kernel_name, kernel_bias in zip(arrays, names, biases):
        array = np.asarray(array, dtype=np.float64)
        if normalize:
            total = float(array.sum())
            if abs(total) <= 1e-6 * float(np.abs(array).sum()):
                raise KernelError(
                    f"{source}: '{prefix}normalize' on kernel {kernel_name!r}: its weights sum to 0, cannot divide by the sum"
                )
            array = array / total
        if scale != 1.0:
            with np.errstate(over="ignore", invalid="ignore"):  # refused just below, in one line
                array = array * scale
        if np.abs(array).max() > _F32_MAX:
            raise KernelError(f"{source}: kernel {kernel_name!r}: weights times scale {shorten(scale)} overflow float32")
        kernels.append(Kernel(kernel_name, array, float(kernel_bias), description, source))
    return kernels


_ALL_LAYOUTS_NDIM = {layout: ndim for ndim, names in _LAYOUTS.items() for layout in names}


def _filter_count(shape: tuple[int, ...], layout: str | None) -> int:
    """How many filters weights of ``shape`` hold under ``layout`` (the table in the module docstring)."""
    if len(shape) == 4:
        return int(shape[0] if layout == "oihw" else shape[3])
    if len(shape) == 3 and layout in ("wio", "oiw"):
        return int(shape[2] if layout == "wio" else shape[0])
    return 1


def _bias_list(bias: Any, count: int, source: str, prefix: str) -> list[float]:
    key = prefix + "bias"
    if isinstance(bias, (list, tuple, np.ndarray)):
        values = list(np.asarray(bias, dtype=object).ravel()) if isinstance(bias, np.ndarray) else list(bias)
        if len(values) == 1 and count > 1:
            raise KernelError(f"{source}: '{key}' has 1 value for {count} filters; give {count} values or one number")
        if len(values) != count:
            raise KernelError(f"{source}: '{key}' has {len(values)} values for {count} filter{'s' if count != 1 else ''}")
        return [_scalar(v, source, f"{key}[{i}]") for i, v in enumerate(values)]
    return [_scalar(bias, source, key)] * count


def _weights_array(value: Any, source: str, key: str) -> np.ndarray:
    """Validate a nested list of numbers and return it as a float64 array (1-D to 4-D).

    The shape comes from the first element at every level; every other list must match it.
    """
    if not isinstance(value, list):
        raise KernelError(f"{source}: '{key}' must be a list of numbers (1-D to 4-D), got {_type_name(value)}")
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    if 0 in shape:
        raise KernelError(f"{source}: '{key}' is empty (an empty list at depth {len(shape)})")
    if len(shape) > 4:
        raise KernelError(f"{source}: '{key}' is nested {len(shape)} deep; weights are 1-D to 4-D")
    if math.prod(shape) > MAX_WEIGHTS:
        raise KernelError(f"{source}: '{key}' has {math.prod(shape)} weights, more than the {MAX_WEIGHTS} allowed")
    level = [value]
    for depth, length in enumerate(shape):
        flat = []
        for item in level:
            if not isinstance(item, list) or len(item) != length:
                _raise_ragged(value, shape, source, key)
            flat.extend(item)
        level = flat
    for position, item in enumerate(level):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            index = np.unravel_index(position, shape)
            where = key + "".join(f"[{i}]" for i in index)
            if isinstance(item, list):
                raise KernelError(f"{source}: '{where}' is a list, but '{key}' is {len(shape)}-D here (shape {_fmt_size(shape)})")
            raise KernelError(f"{source}: '{where}' is not a number: {_type_name(item)}")
    try:
        array = np.array(level, dtype=np.float64).reshape(shape)
    except OverflowError:
        array = np.array([float(v) if abs(v) < 2**1023 else math.inf for v in level]).reshape(shape)
    _check_finite(array, f"{source}", f"'{key}'")
    return array


def _raise_ragged(value: list, shape: list[int], source: str, key: str) -> None:
    # Slow path, only for the message: find the first list whose length or kind differs.
    def walk(item, index: tuple[int, ...]):
        depth = len(index)
        where = key + "".join(f"[{i}]" for i in index)
        reference = key + "".join("[0]" for _ in index)
        if not isinstance(item, list):
            raise KernelError(
                f"{source}: '{where}' is {_type_name(item)}, but '{reference}' is a list of {shape[depth]} (ragged weights)"
            )
        if len(item) != shape[depth]:
            raise KernelError(
                f"{source}: '{where}' has {_count(len(item), 'entry', 'entries')}, '{reference}' has "
                f"{shape[depth]} (ragged rows)"
            )
        if depth + 1 < len(shape):
            for i, child in enumerate(item):
                walk(child, index + (i,))

    walk(value, ())
    raise AssertionError("ragged weights not found")  # pragma: no cover - unreachable


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def _check_finite(array: np.ndarray, where: str, what: str) -> None:
    if np.isfinite(array).all() and (array.dtype == np.float32 or np.abs(array).max(initial=0) <= _F32_MAX):
        return  # the common case, without index arrays
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[index]
        raise KernelError(f"{where}: {what}{''.join(f'[{i}]' for i in index)} is {value}; NaN and Inf are not allowed")
    big = np.abs(array) > _F32_MAX
    if big.any():
        index = tuple(int(i) for i in np.argwhere(big)[0])
        raise KernelError(f"{where}: {what}{''.join(f'[{i}]' for i in index)} = {array[index]:g} does not fit in float32")


def _kernels_from_array(array: np.ndarray, *, source: str, name: str, layout: str | None = None) -> list[Kernel]:
    if array.dtype.kind not in "iuf":
        raise KernelError(f"{source}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim not in (1, 2, 3, 4):
        raise KernelError(f"{source}: weights must be 1-D to 4-D, got {array.ndim}-D shape {_fmt_size(array.shape)}")
    if array.size == 0:
        raise KernelError(f"{source}: the array is empty (shape {_fmt_size(array.shape)})")
    if array.size > MAX_WEIGHTS:
        raise KernelError(f"{source}: {array.size} weights, more than the {MAX_WEIGHTS} allowed")
    # float32 and float64 stay as they are (no whole copy); each filter becomes float64 in _build.
    weights = array if array.dtype in (np.float32, np.float64) else np.asarray(array, dtype=np.float64)
    _check_finite(weights, source, "weights")
    return _build(weights, source, "", name, "", layout, 0.0)


def _load_npy(path: Path, source: str) -> list[Kernel]:
    """The kernels of a ``.npy`` file, its header checked before any weight is read.

    Shape, dtype, weight and filter counts come from the header, and the file's length
    must hold what the header declares: a huge or malformed array is refused in
    microseconds, without loading it.
    """
    check_regular_file(path, KernelError, what="kernel file")
    try:
        with open(path, "rb") as handle:
            shape, fortran, dtype = _npy_kernel_header(handle, source)
            _check_npy_shape(shape, dtype, source)
            offset = handle.tell()
            size = os.fstat(handle.fileno()).st_size
            needed = math.prod(shape) * dtype.itemsize
            if size - offset < needed:
                raise KernelError(f"{source}: not a valid .npy file: truncated: the header declares {_fmt_size(shape)} {dtype}"
                                  f" ({needed} bytes of data), the file holds {max(0, size - offset)}")
            array = np.fromfile(handle, dtype=dtype, count=math.prod(shape))
    except OSError as exc:
        raise KernelError(f"{source}: cannot read: {exc.strerror or exc}") from None
    array = array.reshape(shape, order="F" if fortran else "C")
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    return _kernels_from_array(array, source=source, name=path.stem)


def _npy_kernel_header(handle, source: str):
    """(shape, fortran_order, dtype) from a ``.npy`` header; KernelError for anything malformed."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(handle)
        raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with tokenize and ast: any error
        # ValueError, SyntaxError, tokenize errors, EOFError, MemoryError, RecursionError...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise KernelError(f"{source}: not a valid .npy file: its header cannot be read ({shorten(detail, 80)})"
                          ) from None


def _check_npy_shape(shape: tuple[int, ...], dtype, source: str) -> None:
    """The shape rules of ``weights`` (1-D to 4-D, not empty, bounded), from the header alone."""
    if dtype.kind not in "iuf" or dtype.hasobject:
        raise KernelError(f"{source}: expected a numeric array, got dtype {dtype}")
    if len(shape) not in (1, 2, 3, 4):
        raise KernelError(f"{source}: weights must be 1-D to 4-D, got {len(shape)}-D shape {_fmt_size(shape)}")
    if any(side < 0 for side in shape):
        # numpy's header reader lets (-1, 5) through: -5 weights would read the whole file.
        raise KernelError(f"{source}: not a valid .npy file: a negative size in its shape {_fmt_size(shape)}")
    count = math.prod(shape)
    if count == 0:
        raise KernelError(f"{source}: the array is empty (shape {_fmt_size(shape)})")
    if count > MAX_WEIGHTS:
        raise KernelError(f"{source}: shape {_fmt_size(shape)} holds {count} weights, more than the {MAX_WEIGHTS}"
                          " allowed")
    filters = _filter_count(shape, None)
    if filters > MAX_FILTERS:
        raise KernelError(f"{source}: shape {_fmt_size(shape)} holds {filters} filters, more than the {MAX_FILTERS}"
                          " allowed in one layer")


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"\+?\d+")


def _number(token: str, source: str, where: str) -> float:
    if _NUMBER.fullmatch(token):
        value = float(token)
        if math.isfinite(value) and abs(value) <= _F32_MAX:
            return value
        raise KernelError(f"{source}: {where} {shorten(token, 20)} does not fit in float32")
    if token.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise KernelError(f"{source}: {where} is {shorten(token, 20)}; NaN and Inf are not allowed")
    raise KernelError(f"{source}: {where} {_clip(token, 20)!r} is not a number")


def _parse_mat(text: str, source: str, name: str) -> list[Kernel]:
    """Read a libvips matrix file: ``W H [scale [offset]]`` then H rows of W numbers."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise KernelError(f"{source}: the file is empty; expected a first line 'W H [scale [offset]]'")
    split = re.compile(r'[\s,"]+')

    def tokens(line: str) -> list[str]:
        return [tok for tok in split.split(line) if tok]

    header_line, header = lines[0]
    fields = tokens(header)
    if not 2 <= len(fields) <= 4 or not all(_INTEGER.fullmatch(f) for f in fields[:2]):
        raise KernelError(f"{source}: line {header_line} must be 'W H [scale [offset]]', got {_clip(header.strip(), 40)!r}")
    width, height = int(fields[0]), int(fields[1])
    if width < 1 or height < 1:
        raise KernelError(f"{source}: line {header_line}: the size {width}x{height} is empty")
    if width * height > MAX_WEIGHTS:
        raise KernelError(f"{source}: {width}x{height} is more than the {MAX_WEIGHTS} weights allowed")
    scale = _number(fields[2], source, "scale") if len(fields) > 2 else 1.0
    offset = _number(fields[3], source, "offset") if len(fields) > 3 else 0.0
    if scale == 0:
        raise KernelError(f"{source}: line {header_line}: scale is 0 (libvips divides by it)")
    rows = lines[1:]
    if len(rows) != height:
        raise KernelError(f"{source}: {len(rows)} rows of numbers, the header says height {height}")
    values = []
    for line_number, line in rows:
        row = tokens(line)
        if len(row) != width:
            raise KernelError(f"{source}: line {line_number} has {len(row)} numbers, the header says width {width} (ragged rows)")
        values.extend(_number(tok, source, f"line {line_number}: value") for tok in row)
    weights = np.array(values, dtype=np.float64).reshape(height, width) / scale
    return _build(weights, source, "", name, "", None, offset)
