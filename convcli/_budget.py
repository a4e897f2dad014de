"""How much memory one input needs through a layer stack, checked before any work.

SPEC §6: the working set of one run stays under the memory limit (``--memory-limit``,
default 1 GiB); an input that cannot fit is refused before any work, with the sizes.
:func:`working_set` estimates it from the input's shape and the stack's geometry alone
(no pixel read), the way :func:`convcli.apply.process` holds its arrays today:

- the input as float32 (H·W·C·4 bytes);
- at each layer, its input and its output held together (a conv layer's pooled output when
  a pool follows it; with ``--save-all`` every layer's output is kept to the end);
- a single conv layer written one PNG/TIFF file per filter runs
  :data:`~convcli.apply.FILTER_GROUP` filters at a time, so only that many maps are held,
  plus what the PNG encodes in flight hold: two groups' 8-bit display planes, three groups'
  worth for 16 bits (measured peaks, 64 filters on a 4K RGB PNG: 905 MiB against 853
  estimated for png, 1293 MiB against 1359 for png16, 571 MiB against 600 for tiff; the
  maps alone counted 600 MiB before);
- ``--format npy`` and ``tiff`` encode the whole output into one more buffer.

The limit comes from :func:`memory_limit`, the one place that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

#: The working set allowed for one input when no ``--memory-limit`` is given (SPEC §6).
DEFAULT_MEMORY_LIMIT = 1 << 30

_FLOAT32 = 4


def memory_limit(job=None) -> int:
    """The memory limit in bytes for ``job``: its ``memory_limit`` when it has one, else the default."""
    limit = getattr(job, "memory_limit", None)
    return int(limit) if limit else DEFAULT_MEMORY_LIMIT


def format_bytes(count: float) -> str:
    """``1.2 GiB``, ``530.8 MiB``, ``12 KiB``, ``10 bytes`` (binary units, as the limit is written)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(count)} bytes"


@dataclass(frozen=True)
class WorkingSet:
    """The estimate: total bytes, and the largest array in it (for the message)."""

    total: int
    largest: int
    largest_what: str


def working_set(stack, input_shape: tuple[int, int, int], *, grouped: bool = False, keep_all: bool = False,
                encodes_whole: bool = False, group: int = 16, group_format: str | None = None) -> WorkingSet:
    """Bytes :func:`convcli.apply.process` holds for an input of ``input_shape`` (see the module docstring).

    ``grouped``: a single conv layer written ``group`` filters at a time (``group_format``, the
    files' format, says what its encodes in flight hold: ``png``, ``png16``); ``keep_all``: every
    layer's output kept (``--save-all``); ``encodes_whole``: the final output is encoded into
    one more buffer (``npy``, ``tiff`` of a whole output).
    """
    from .stack import ConvStep, PoolStep

    geometry = stack.geometry(tuple(input_shape))
    h, w, c = input_shape
    input_bytes = h * w * c * _FLOAT32  # held until the input is done
    largest, largest_what = input_bytes, f"the {h}×{w}×{c} input as float32"
    peak = input_bytes
    previous = 0  # the previous layer's output, this layer's input (the first layer's is the input)
    kept = 0  # --save-all: every earlier output
    steps = list(stack.steps)
    index = 0
    while index < len(steps):
        step = steps[index]
        g = geometry[index]
        # A pool right after a conv runs inside the conv's row chunks: only the pooled maps are whole.
        if isinstance(step, ConvStep) and index + 1 < len(steps) and isinstance(steps[index + 1], PoolStep) \
                and not keep_all:
            index += 1
            g = geometry[index]
        oh, ow, oc = g.output_shape
        held = min(oc, group) if grouped else oc
        out_bytes = oh * ow * held * _FLOAT32
        if out_bytes > largest:
            shown = f"{held} of the {oc}" if held < oc else f"{oc}"
            largest, largest_what = out_bytes, f"{shown} {oh}×{ow} float32 maps of {g.name}"
        if keep_all:
            kept += previous
            peak = max(peak, input_bytes + kept + out_bytes)
        else:
            peak = max(peak, input_bytes + previous + out_bytes)
        previous = out_bytes
        index += 1
    if encodes_whole:
        peak = max(peak, input_bytes + kept + 2 * previous)
    if grouped and group_format is not None:
        # While a group is computed, the groups before it may still be encoding their display
        # planes (PNG; TIFF encodes the float maps themselves).
        samples = previous // _FLOAT32
        encoding = {"png": 2 * samples, "png16": 3 * 2 * samples}.get(group_format, 0)
        peak = max(peak, input_bytes + previous + encoding)
    return WorkingSet(peak, largest, largest_what)


def check_fits(name: str, stack, input_shape: tuple[int, int, int], *, limit: int, **kwargs) -> None:
    """Raise InputError if :func:`working_set` of this input exceeds ``limit`` bytes.

    The message names the input, the estimate, its largest array and the limit.
    """
    need = working_set(stack, input_shape, **kwargs)
    if need.total > limit:
        h, w, c = input_shape
        raise InputError(
            f"{name}: needs about {format_bytes(need.total)} of memory ({need.largest_what}:"
            f" {format_bytes(need.largest)}), more than the {format_bytes(limit)} memory limit;"
            " use a smaller image or fewer filters per run")


__all__ = ["DEFAULT_MEMORY_LIMIT", "WorkingSet", "check_fits", "format_bytes", "memory_limit", "working_set"]
