"""Layer stacks from ``--pipeline`` files (YAML or JSON): conv and pool layers in order.

The file format (SPEC §3)::

    layers:
      - conv: {kernels: [sobel-x, sobel-y], padding: same, activation: relu}
      - pool: {mode: max, size: 2}
      - conv: {filters: 8, kernel_size: 3}   # shape-only: fine for `shape`, not `apply`

Every ``conv`` entry takes the keys and value syntax of ``apply``'s layer options
(``stride``, ``padding``, ``border``, ``dilation``, ``depthwise``, ``flip``,
``activation``, ``negative_slope``) plus:

``kernels``
    A list (or one string) of kernel sources, as ``-k`` takes them: kernel files
    (paths relative to the pipeline file), built-in names, inline ImageMagick
    matrices ``'3x3: 0,1,0 0,1,0 0,1,0'``.
``filters`` + ``kernel_size``
    Instead of ``kernels``: a layer with a size but no weights, for ``shape``.
``bias``
    ``true`` (default) or ``false`` as Keras' ``use_bias`` (``false`` also drops
    any bias the kernel files hold, so ``apply`` and the parameter count agree);
    or a number (every filter's bias) or a list with one number per filter, which
    replaces the kernels' biases — e.g. ``bias: -100`` with ``activation: relu``
    keeps only strong edges.
``name``
    The layer's name in ``shape`` tables, messages and ``--save-all`` folders
    (``01-conv2d``). Default: Keras' names ``conv2d``, ``conv2d_1``, …,
    ``depthwise_conv2d``, ``max_pooling2d``, ``average_pooling2d`` (``conv1d``, … for
    the layers that are 1-D on a signal).

A ``pool`` entry takes ``mode`` (max|avg, default max), ``size`` (default 2),
``stride`` (default: the size) and ``padding`` (valid|same, default valid).

On a 1-D signal (an input read as one: a 1-D array, a one-row or one-column table, or
``shape --input L``), values written as one number — ``kernel_size``, ``stride``,
``dilation``, explicit ``padding``, the pool's ``size`` and ``stride`` — act along its
length only, as in Keras' Conv1D/MaxPooling1D: ``size: 2`` pools 1×2, ``padding: 1``
pads the two ends. Values written as pairs (``"2,2"``, ``[1, 3]``) keep their 2-D
meaning, and a one-row image is 2-D throughout (see :meth:`Stack.for_signal`).

Errors name the file, the layer and the key: ``net.yaml: layers[2].stride: must be at
least 1, got (0, 0)``; shape errors found later name the layer: ``layers[3] (conv2d_1): …``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._paths import path_text, regular_file_problem
from ._text import shorten
from .errors import ConvcliError, GeometryError, KernelError, OptionError
from .layer import (
    ConvSpec,
    Padding,
    PaddingMode,
    PoolSpec,
    parse_activation,
    parse_border,
    parse_pair,
    parse_pool_mode,
    MAX_INTEGER,
)
from .stack import ConvStep, PoolStep, Stack, Step, keras_names

#: Largest pipeline file read; a stack of layers is a few kilobytes.
MAX_PIPELINE_BYTES = 1 << 20  # 1 MiB

CONV_KEYS = ("kernels", "filters", "kernel_size", "stride", "padding", "border", "dilation", "depthwise",
             "flip", "activation", "negative_slope", "bias", "name")
POOL_KEYS = ("mode", "size", "stride", "padding", "name")
TOP_KEYS = ("layers", "name", "description")

#: Layer names become folder names (``--save-all``): keep them to safe file-name characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Kernel files a ``kernels`` entry may name (anything else is a built-in or an inline matrix).
_KERNEL_SUFFIXES = (".yaml", ".yml", ".json", ".npy", ".mat")


@dataclass(frozen=True)
class Pipeline(Stack):
    """A :class:`~convcli.stack.Stack` read from a pipeline file.

    It behaves like any stack; its shape errors name the file and the layer
    (``net.yaml: layers[3] (conv2d_1): kernels are 3×3×4 but the input has 3 channels``).
    """

    source: str = ""
    #: The kernel files its ``kernels`` entries name (paths as read, relative to the
    #: pipeline file's folder), in file order.
    kernel_files: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def _step_error(self, index: int, step: Step, err: ConvcliError) -> ConvcliError:
        where = f"{self.source}: " if self.source else ""
        return type(err)(f"{where}layers[{index}] ({step.name}): " + _strip_name(str(err), step.name))

    def check_runnable(self) -> None:
        """Raise GeometryError naming the file and the first conv layer without weights."""
        try:
            super().check_runnable()
        except GeometryError as err:
            if self.source:
                raise GeometryError(f"{self.source}: {err}") from None
            raise


def _strip_name(message: str, name: str) -> str:
    # geometry's messages start with "name: "; the prefix already names the layer.
    return message[len(name) + 2:] if message.startswith(f"{name}: ") else message


def load_pipeline(path: str | Path) -> Pipeline:
    """Read a pipeline file (``.json``: JSON; anything else: YAML, safe loader).

    Kernel paths inside are relative to the file's folder.

    Returns
    -------
    Pipeline
        A :class:`~convcli.stack.Stack` with one step per entry of ``layers``.

    Raises
    ------
    OptionError
        The file cannot be read, is too large, is not valid YAML/JSON, or an entry is
        malformed (the message names ``layers[i].key``).
    KernelError
        A kernel named by an entry cannot be loaded (the message names the entry).
    """
    from . import kernels

    path = Path(path)
    source = str(path)
    try:
        text = kernels.read_text(path, limit=MAX_PIPELINE_BYTES, what="pipeline file")
    except KernelError as err:  # a bad pipeline file is a bad option (exit 2)
        raise OptionError(str(err)) from None
    data = _parse_text(text, source, json_format=path.suffix.lower() == ".json")
    return parse_pipeline(data, base_dir=path.parent, source=source)


def _parse_text(text: str, source: str, *, json_format: bool) -> Any:
    # The kernel files' parsers: safe YAML composed with nesting and alias-expansion limits,
    # JSON with duplicate keys refused. Their errors are about this file, an option (exit 2).
    from . import kernels

    try:
        return kernels.parse_document(text, source, json_format=json_format)
    except KernelError as err:
        raise OptionError(str(err)) from None


def parse_pipeline(data: Any, *, base_dir: Path | str = ".", source: str = "pipeline") -> Pipeline:
    """Build a stack from a parsed pipeline document (a dict with a ``layers`` list).

    ``base_dir`` is the folder kernel paths are relative to; ``source`` names the
    document in messages. See the module docstring for the format.
    """
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise OptionError(f"{where}expected a mapping with a 'layers' list at the top, got {_kind(data)}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise OptionError(f"{where}unknown key {shorten(unknown[0])} (known: {', '.join(TOP_KEYS)})")
    if "layers" not in data:
        raise OptionError(f"{where}no 'layers' list; give a list of conv and pool layers")
    layers = data["layers"]
    if not isinstance(layers, list):
        raise OptionError(f"{where}layers: expected a list of conv and pool layers, got {_kind(layers)}")
    if not layers:
        raise OptionError(f"{where}layers: the list is empty; give at least one conv layer")

    entries = [_entry(item, index, where) for index, item in enumerate(layers)]
    if not any(kind == "conv" for kind, _ in entries):
        raise OptionError(f"{where}layers: no conv layer among the {len(entries)} layers; give at least one")
    _check_names(entries, where)
    base = Path(base_dir)
    steps: list[Step] = []
    files: list[str] = []
    for index, (kind, options) in enumerate(entries):
        label = f"{where}layers[{index}]"
        step = _conv_step(options, label, base, files) if kind == "conv" else _pool_step(options, label)
        steps.append(replace(step, name=options["name"], named=True) if "name" in options else step)
    return Pipeline(steps=keras_names(steps), source=source, kernel_files=tuple(dict.fromkeys(files)))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}")


def _entry(item: Any, index: int, where: str) -> tuple[str, dict]:
    """Check one ``layers`` item is ``{conv: {...}}`` or ``{pool: {...}}``; return (kind, options)."""
    label = f"{where}layers[{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        got = f"keys {', '.join(repr(k) for k in item)}" if isinstance(item, dict) and item else _kind(item)
        raise OptionError(f"{label}: expected one of {{conv: {{...}}}} or {{pool: {{...}}}}, got {got}")
    (kind, options), = item.items()
    if kind not in ("conv", "pool"):
        raise OptionError(f"{label}: {shorten(kind)} is not a layer type; use conv or pool")
    if options is None and kind == "pool":
        options = {}  # `- pool:` alone: a 2×2 max pool, as Keras' MaxPooling2D()
    if not isinstance(options, dict):
        raise OptionError(f"{label}.{kind}: expected a mapping of options, got {_kind(options)}")
    known = CONV_KEYS if kind == "conv" else POOL_KEYS
    for key in options:
        if key not in known:
            raise OptionError(f"{label}.{kind}: unknown key {shorten(key)} (known: {', '.join(known)})")
    return kind, options


def _check_names(entries: list[tuple[str, dict]], where: str) -> None:
    """Names the user gave are safe folder names (``--save-all``) and unique; the others follow Keras."""
    given: dict[str, int] = {}
    for index, (kind, options) in enumerate(entries):
        if "name" not in options:
            continue
        name = options["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise OptionError(
                f"{where}layers[{index}].name: {shorten(name)} is not a layer name (1-64 letters, digits, '_', '-', '.';"
                " starting with a letter or digit)"
            )
        if name in given:
            raise OptionError(f"{where}layers[{index}].name: {shorten(name)} is already the name of layers[{given[name]}]")
        given[name] = index


def _bool(options: dict, key: str, label: str) -> bool:
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise OptionError(f"{label}.{key}: expected true or false, got {shorten(value)}")
    return value


def _conv_step(options: dict, label: str, base_dir: Path, files: list[str]) -> ConvStep:
    """One ``conv`` entry; the kernel files it reads are appended to ``files``."""
    has_kernels = "kernels" in options
    has_size = "filters" in options or "kernel_size" in options
    if has_kernels and has_size:
        given = [k for k in ("filters", "kernel_size") if k in options]
        raise OptionError(
            f"{label}.conv: give either kernels or filters + kernel_size, not both (got kernels and {' and '.join(given)})"
        )
    if not has_kernels and not has_size:
        raise OptionError(
            f"{label}.conv: needs kernels (built-in names or kernel files) or filters + kernel_size (shape only)"
        )

    depthwise = _bool(options, "depthwise", label)
    flip = _bool(options, "flip", label)
    slope = options.get("negative_slope", 0.3)
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not _finite(slope):
        raise OptionError(f"{label}.negative_slope: expected a number, got {shorten(slope)}")
    spec = ConvSpec.from_options(
        stride=parse_pair(options.get("stride", 1), f"{label}.stride"),
        padding=Padding.parse(options.get("padding", "valid"), f"{label}.padding"),
        dilation=parse_pair(options.get("dilation", 1), f"{label}.dilation"),
        border=parse_border(options.get("border", "zeros"), f"{label}.border"),
        flip=flip,
        depthwise=depthwise,
        activation=parse_activation(options.get("activation"), f"{label}.activation"),
        negative_slope=float(slope),
    )

    bias = options.get("bias", True)
    if isinstance(bias, bool):
        use_bias, bias_values = bias, None
    else:
        use_bias, bias_values = True, _bias_values(bias, label)

    if has_kernels:
        bank = _load_bank(options["kernels"], label, base_dir, files)
        if bias_values is not None:
            if len(bias_values) not in (1, bank.filters):
                raise OptionError(
                    f"{label}.bias: {len(bias_values)} values for {bank.filters} filters; give one number or {bank.filters}"
                )
            values = bias_values * bank.filters if len(bias_values) == 1 else bias_values
            bank = _with_biases(bank, values)
        elif not use_bias:
            bank = _with_biases(bank, [0.0] * bank.filters)  # Keras use_bias=False: no bias at all
        return ConvStep(spec=spec, bank=bank, use_bias=use_bias)

    if "filters" not in options or "kernel_size" not in options:
        missing = "kernel_size" if "filters" in options else "filters"
        raise OptionError(f"{label}.conv: a shape-only layer needs both filters and kernel_size; {missing} is missing")
    filters = options["filters"]
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise OptionError(f"{label}.filters: expected a whole number of at least 1, got {shorten(filters)}")
    if filters > MAX_INTEGER:
        raise OptionError(f"{label}.filters: {shorten(filters)} is more than {MAX_INTEGER}")
    kernel_size = parse_pair(options["kernel_size"], f"{label}.kernel_size")
    if bias_values is not None and len(bias_values) not in (1, filters):
        raise OptionError(f"{label}.bias: {len(bias_values)} values for {filters} filters; give one number or {filters}")
    return ConvStep(spec=spec, bank=None, filters=filters, kernel_size=kernel_size, use_bias=use_bias)


def _bias_values(bias: Any, label: str) -> list[float]:
    items = bias if isinstance(bias, list) else [bias]
    if not items:
        raise OptionError(f"{label}.bias: the list is empty; give true, false, a number or one number per filter")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not _finite(item):
            raise OptionError(f"{label}.bias: expected true, false, a number or a list of numbers, got {shorten(bias)}")
    return [float(v) for v in items]


def _finite(number: int | float) -> bool:
    """A finite number that float32 holds (an int of thousands of digits is not)."""
    try:
        return math.isfinite(number) and abs(float(number)) <= 3.4028234663852886e38
    except OverflowError:
        return False


def _with_biases(bank, values: list[float]):
    from .kernels import FilterBank

    return FilterBank(kernels=tuple(replace(k, bias=float(v)) for k, v in zip(bank.kernels, values)))


def _kernel_source(value: Any, label: str, base_dir: Path):
    """What one ``kernels`` item names: a file relative to the pipeline, an inline matrix or a built-in.

    Unlike ``-k``, a relative path is never looked up in the working folder: the same
    pipeline must mean the same layers wherever it is run from.
    """
    from . import kernels

    if not isinstance(value, str) or not value.strip():
        raise OptionError(
            f"{label}.kernels: expected kernel file paths, built-in names or inline matrices, got {shorten(value)}"
        )
    if kernels.looks_inline(value):
        return kernels.parse_inline(value)
    try:
        candidate = base_dir / Path(value).expanduser()
    except RuntimeError:  # '~name…' of no such user: "Could not determine home directory."
        candidate = base_dir / value
    path_like = "/" in value or "\\" in value or value.lower().endswith(_KERNEL_SUFFIXES)
    problem = regular_file_problem(candidate)  # never raises, unlike Path.is_file() on a name too long
    too_long = problem is not None and not problem.startswith("is ")
    exists = not too_long and os.path.lexists(candidate)
    if exists and (problem is None or path_like or not problem.startswith("is a directory")):
        return str(candidate)  # a regular file; anything else is refused, in one line, by the kernel reader
    if path_like:
        why = f"no such kernel file: {problem}" if too_long else "no such kernel file"
        raise KernelError(f"{shorten(value, 60)}: {why} (looked for {path_text(candidate)})")
    key = value.strip().lower().replace("_", "-")
    if key not in kernels.builtin_names():
        raise KernelError(
            f"{shorten(value, 60)}: no kernel file {path_text(candidate)} and no built-in kernel of that name"
            f" (built-ins: {', '.join(kernels.builtin_names())})"
        )
    return kernels.load_builtin(key)


def _load_bank(value: Any, label: str, base_dir: Path, files: list[str]):
    from .kernels import FilterBank, Kernel, load_kernels

    items = value if isinstance(value, list) else [value]
    if not items:
        raise OptionError(f"{label}.kernels: the list is empty; give at least one kernel")
    try:
        sources = [_kernel_source(item, label, base_dir) for item in items]
        files += [source for source in sources if not isinstance(source, (FilterBank, Kernel))]
        # load_kernels checks that the filters share one size and one depth.
        return load_kernels(*sources)
    except KernelError as err:
        raise KernelError(f"{label}.kernels: {err}") from None


def _pool_step(options: dict, label: str) -> PoolStep:
    mode = parse_pool_mode(options.get("mode", "max"), f"{label}.mode")
    size = parse_pair(options.get("size", 2), f"{label}.size")
    stride = options.get("stride")
    strides = None if stride is None else parse_pair(stride, f"{label}.stride")
    padding = options.get("padding", "valid")
    text = padding.strip().lower() if isinstance(padding, str) else None
    if text not in (PaddingMode.VALID.value, PaddingMode.SAME.value):
        raise OptionError(f"{label}.padding: {shorten(padding)} is not one of valid, same")
    spec = PoolSpec.from_options(mode=mode, size=size, stride=strides, padding=text)
    return PoolStep(spec=spec)


__all__ = ["Pipeline", "load_pipeline", "parse_pipeline", "MAX_PIPELINE_BYTES", "CONV_KEYS", "POOL_KEYS"]
