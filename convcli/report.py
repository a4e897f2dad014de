"""Reports on standard output: the ``shape`` table and JSON, and the ``kernels`` listing.

Tables are drawn with rich (imported here, on use); JSON is plain ``json``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from .geometry import LayerGeometry, Shape3

if TYPE_CHECKING:  # pragma: no cover
    from .kernels import BuiltinEntry, FilterBank, Kernel


class _Plain:
    """A console for piped output: wide (no wrapping at 80 columns), no colour, no trailing blanks."""

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(width=200, soft_wrap=False, highlight=False, color_system=None)

    def print(self, *objects, **kwargs) -> None:
        with self._console.capture() as capture:
            self._console.print(*objects, **kwargs)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))


def _console():
    if not sys.stdout.isatty():
        return _Plain()
    from rich.console import Console

    return Console(file=sys.stdout, soft_wrap=False, highlight=False)


def _shape(shape) -> str:
    return "×".join(str(v) for v in shape) if shape is not None else "—"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:,.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:,.1f} {unit}"


def shape_dict(input_shape: Shape3, layers: list[LayerGeometry]) -> dict:
    """The ``shape --json`` object (SPEC §3 field names, plus a few extras per layer)."""
    return {
        "input_shape": list(input_shape),
        "layers": [layer.as_dict() for layer in layers],
        "output_shape": list(layers[-1].output_shape) if layers else list(input_shape),
        "total_params": sum(layer.params for layer in layers),
        "total_macs": sum(layer.macs for layer in layers),
        "total_activation_bytes": sum(layer.activation_bytes for layer in layers),
    }


def shape_json(input_shape: Shape3, layers: list[LayerGeometry]) -> str:
    return json.dumps(shape_dict(input_shape, layers))


def print_shape_table(input_shape: Shape3, layers: list[LayerGeometry], *, explain: bool = False) -> None:
    """One row per layer, as Keras' ``model.summary()``, plus receptive field, jump and memory."""
    from rich.table import Table

    table = Table(title=f"input {_shape(input_shape)}", title_justify="left", show_footer=True)
    total_params = sum(layer.params for layer in layers)
    total_macs = sum(layer.macs for layer in layers)
    total_mem = sum(layer.activation_bytes for layer in layers)
    table.add_column("Layer (type)", footer="Total")
    table.add_column("Output shape", footer=_shape(layers[-1].output_shape) if layers else "")
    table.add_column("Weights", footer="")
    table.add_column("Param #", justify="right", footer=f"{total_params:,}")
    table.add_column("MACs", justify="right", footer=f"{total_macs:,}")
    table.add_column("Receptive field", justify="right", footer="")
    table.add_column("Jump", justify="right", footer="")
    table.add_column("Memory (f32)", justify="right", footer=_bytes(total_mem))
    for layer in layers:
        weights = _shape(layer.weights_shape)
        if layer.bias_shape is not None:
            weights += f" + {_shape(layer.bias_shape)}"
        table.add_row(
            f"{layer.name} ({layer.type})", _shape(layer.output_shape), weights, f"{layer.params:,}",
            f"{layer.macs:,}", f"{layer.receptive_field[0]}×{layer.receptive_field[1]}",
            f"{layer.jump[0]}×{layer.jump[1]}", _bytes(layer.activation_bytes),
        )
    console = _console()
    console.print(table)
    if explain:
        for layer in layers:
            console.print(f"[bold]{layer.name}[/bold] ({layer.type}, input {_shape(layer.input_shape)}):")
            for line in layer.explain:
                console.print(f"  {line}", markup=False)


def kernel_dict(kernel: "Kernel") -> dict:
    return {
        "name": kernel.name,
        "size": list(kernel.size),
        "depth": kernel.depth,
        "description": kernel.description,
        "bias": float(kernel.bias),
        "weights": kernel.weights.tolist(),
    }


def print_kernel_list(entries: list["BuiltinEntry"], *, as_json: bool = False) -> None:
    """``convcli kernels``: name, size, filter count and description of each built-in."""
    rows = []
    for entry in entries:
        depth = entry.bank.depth
        size = f"{entry.size[0]}×{entry.size[1]}" + (f"×{depth}" if depth is not None else "")
        rows.append((entry, size))
    if as_json:
        sys.stdout.write(json.dumps([{"name": e.name, "size": list(e.size), "depth": e.bank.depth,
                                      "filters": e.filters, "description": e.description} for e, _ in rows]) + "\n")
        return
    from rich.table import Table

    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("name")
    table.add_column("size")
    table.add_column("filters", justify="right")
    table.add_column("description")
    for entry, size in rows:
        table.add_row(entry.name, size, str(entry.filters), entry.description)
    _console().print(table)


def _number(value: float) -> str:
    return f"{value:.6g}"


def print_kernel(bank: "FilterBank", *, as_json: bool = False) -> None:
    """``convcli kernels NAME``: each filter's weights as aligned rows, then its bias."""
    if as_json:
        sys.stdout.write(json.dumps([kernel_dict(k) for k in bank.kernels]) + "\n")
        return
    out = sys.stdout
    for number, kernel in enumerate(bank.kernels):
        if number:
            out.write("\n")
        size = "×".join(str(v) for v in kernel.weights.shape)
        out.write(f"{kernel.name} ({size})" + (f": {kernel.description}" if kernel.description else "") + "\n")
        weights = kernel.weights
        planes = [weights] if weights.ndim == 2 else [weights[:, :, c] for c in range(weights.shape[2])]
        for c, plane in enumerate(planes):
            if weights.ndim == 3:
                out.write(f"channel {c}:\n")
            cells = [[_number(float(v)) for v in row] for row in plane]
            width = max(len(cell) for row in cells for cell in row)
            for row in cells:
                out.write("  " + "  ".join(cell.rjust(width) for cell in row) + "\n")
        out.write(f"bias: {_number(float(kernel.bias))}\n")
