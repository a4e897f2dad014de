"""One input through a layer stack in bands of rows, in bounded memory (SPEC §6).

The stack becomes a chain of **stages**, each able to give any rows of its output:
the source (:class:`~convcli.io.bands.BandSource`: the file's rows, converted), then one
stage per conv layer (with the pool that follows it, as :meth:`Stack.run` fuses them;
:class:`~convcli.engine.bands.LayerPlan` computes its rows bit for bit as the
whole-image engine does) or per pooling step. A stage asked for rows [a, b) asks the
stage before it for the input rows they need — its halo grows by each layer's receptive
field and stride — and keeps the last rows it computed, so the bands of a stream overlap
only by their halos. Nothing holds a whole map.

Entry points
    :func:`compute_band` — a plain function of (input path, output rows, stack, read
    options) returning that band of the stack's output: what a cluster task runs.
    :func:`stream_input` — one input, band by band, into its output files (sinks of
    :mod:`convcli.io.bands`, committed together at the end, or all discarded on failure
    or Ctrl-C). :func:`plan_bands` says how tall its bands can be under a
    ``--memory-limit`` (whether an input fits whole is :mod:`convcli._budget`'s estimate).

``--normalize minmax`` (and ``abs``, ``offset``) maps each map's [min, max] to the PNG's
range, so the range must be known before the first row is written: the stack runs twice,
once to find each map's min and max (keeping nothing), once to write. The alternative, a
temporary float32 copy of the maps next to the output, would need as much free disk as
the maps take (an image too large for memory gives maps too large for many disks), and
reading it back costs about what recomputing a layer costs; ``--normalize clip`` and the
tiff, npy and zarr formats need one pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ._budget import DEFAULT_MEMORY_LIMIT  # noqa: F401 - the one default --memory-limit, re-exported
from .errors import InputError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .apply import Job
    from .stack import Stack

#: Most bytes a stream's bands use even when the limit allows more: larger bands gain
#: nothing (a band of a 16000-pixel-wide gray image is then ~600 rows) and leave the
#: rest of the limit free.
BAND_TARGET_BYTES = 96 << 20


class Stage:
    """Rows of one step's output, computed on demand; the last block computed is kept.

    Subclasses give :attr:`shape` (H, W, C), :attr:`unit` and :meth:`_compute`.
    """

    shape: tuple[int, int, int]
    unit: int = 1

    def __init__(self) -> None:
        self._start = 0
        self._block = None  # the rows [_start, _start + len) computed last
        self._side: list[tuple[int, Any]] = []  # small blocks asked for out of order (border rows)

    def reset(self) -> None:
        self._block = None
        self._side = []

    def _compute(self, start: int, stop: int):
        raise NotImplementedError

    def rows(self, start: int, stop: int):
        """Rows [start, stop) of this stage's output (a view of what it keeps; do not modify)."""
        import numpy as np

        block = self._block
        if block is not None and self._start <= start and stop <= self._start + len(block):
            return block[start - self._start:stop - self._start]
        for first, side in self._side:
            if first <= start and stop <= first + len(side):
                return side[start - first:stop - first]
        height = self.shape[0]
        stop_aligned = min(height, -(-stop // self.unit) * self.unit)
        end = self._start + len(block) if block is not None else -1
        if block is not None and self._start <= start <= end:
            # The stream moves on: keep the overlap, compute the rows after it.
            kept = block[start - self._start:]
            fresh = self._compute(end, stop_aligned) if stop_aligned > end else block[:0]
            self._block = np.concatenate([kept, fresh]) if len(kept) else fresh
            self._start = start
            return self._block[:stop - start]
        fresh = self._compute(start, stop_aligned)
        if block is not None and stop - start <= max(2 * self.unit, 64):
            # A few rows elsewhere (the other end of a circular border): kept aside, so the
            # stream's own block stays.
            self._side = (self._side + [(start, fresh)])[-4:]
        else:
            self._block, self._start = fresh, start
        return fresh[:stop - start]


class SourceStage(Stage):
    """The input's rows, converted (``--mode``, ``--scale``, float32 or integer pixels).

    Nothing is kept between requests but, with ``prefetch``, the rows of the next request
    are read and converted ahead on a thread of their own while the layers compute: a
    stream asks for its bands in order, each overlapping the one before by the same
    number of rows (its halo), so the next request is known. A request that was read
    ahead costs no copy; any other is read directly (the TIFF reader keeps its last row
    of tiles, so halo rows read twice are not decoded twice).
    """

    def __init__(self, source, *, prefetch: bool = False) -> None:
        super().__init__()
        self.source = source
        self.shape = tuple(source.shape)
        self._executor = None
        if prefetch:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convcli-prefetch")
        self._pending = None  # ((start, stop), future) of the rows being read ahead
        self._last: tuple[int, int] | None = None  # the last request in stream order

    def rows(self, start: int, stop: int):
        if self._last is not None and not self._last[0] <= start <= self._last[1]:
            # Off the stream (the rows a circular border brings from the other end): read
            # them, and leave the stream's own read-ahead alone.
            return self.source.read_rows(start, stop)
        pending, self._pending = self._pending, None
        result = None
        if pending is not None:
            (first, last), future = pending
            rows = future.result()  # re-raises what reading them raised
            if first <= start and stop <= last:
                result = rows[start - first:stop - first]
        if result is None:
            result = self.source.read_rows(start, stop)
        overlap = max(0, self._last[1] - start) if self._last is not None else 0
        self._last = (start, stop)
        height = self.shape[0]
        if self._executor is not None and stop < height:
            ahead = max(0, stop - overlap)
            until = min(height, ahead + (stop - start))
            self._pending = ((ahead, until), self._executor.submit(self.source.read_rows, ahead, until))
        return result

    def reset(self) -> None:
        super().reset()
        self._last = None

    def _compute(self, start: int, stop: int):
        return self.source.read_rows(start, stop)

    def close(self) -> None:
        """Stop reading ahead (the rows being read are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending = None


class LayerStage(Stage):
    """A conv layer (and the pool fused after it) over the stage before it."""

    def __init__(self, before: Stage, plan) -> None:
        super().__init__()
        self.before, self.plan = before, plan
        self.shape = tuple(plan.output_shape)
        self.unit = plan.unit

    def _compute(self, start: int, stop: int):
        return self.plan.compute(self.before.rows, (start, stop))


class PoolStage(Stage):
    """A pooling step on its own (after a pool, or at the start of a stack)."""

    def __init__(self, before: Stage, pool) -> None:
        from . import geometry

        super().__init__()
        self.before, self.pool = before, pool
        h, w, c = before.shape
        geometry.pool_layer((h, w, c), pool)
        oh, ow = geometry.pool_output_hw((h, w), pool)
        self.shape = (oh, ow, c)

    def _compute(self, start: int, stop: int):
        from .engine.bands import pool_input_rows, pool_rows_of

        in_hw = self.before.shape[:2]
        a, b = pool_input_rows(self.pool, in_hw, (start, stop))
        return pool_rows_of(self.before.rows(a, b), self.pool, in_hw=in_hw, rows=(start, stop))


def build_stages(source, stack: "Stack", *, algorithm: str = "auto", prefetch: bool = False) -> list[Stage]:
    """The source stage and one stage per step of ``stack`` (a conv fuses the pool after it).

    Raises GeometryError naming the step that cannot work (before any pixel is read).
    """
    from .engine import plan_layer
    from .stack import ConvStep, PoolStep

    stack.check_runnable()
    stack.geometry(tuple(source.shape))
    stages: list[Stage] = [SourceStage(source, prefetch=prefetch)]
    steps = list(stack.steps)
    index = 0
    while index < len(steps):
        step = steps[index]
        before = stages[-1]
        if isinstance(step, ConvStep):
            following = steps[index + 1] if index + 1 < len(steps) else None
            pool = following.spec if isinstance(following, PoolStep) else None
            stages.append(LayerStage(before, plan_layer(before.shape, step.bank, step.spec, pool,
                                                        algorithm=algorithm)))
            index += 2 if pool is not None else 1
        else:
            stages.append(PoolStage(before, step.spec))
            index += 1
    return stages


def algorithms(stages: list[Stage]) -> list[str]:
    """Each conv stage's path, named as :meth:`Stack.run` names them (``direct``, ``separable/opencv``…)."""
    names = []
    for stage in stages:
        if isinstance(stage, LayerStage):
            backend = "" if stage.plan.backend == "numpy" else f"/{stage.plan.backend}"
            names.append(stage.plan.algorithm + backend)
    return names


def compute_band(source_path: str, rows: tuple[int, int], stack: "Stack", *, mode: str = "keep",
                 scale: str = "raw", algorithm: str = "auto", max_pixels: int | None = None) -> "np.ndarray":
    """Rows [r0, r1) of ``stack``'s output on the file ``source_path``: float32 (r1 − r0, W', F').

    A plain function of paths and values, for a task that computes one band of a large
    input (a cluster worker): it opens the input, reads only the rows the band needs
    (through every layer's halo) and returns the band, identical to the same rows of a
    whole-image run. A 1-D signal gets the stack's Conv1D meaning, as ``apply`` gives it.
    """
    from .io.bands import open_source

    with open_source(source_path, mode=mode, scale=scale, keep_integers=stack.sums_channels_first,
                     max_pixels=max_pixels) as source:
        if source.kind == "signal":
            stack = stack.for_signal()
        stages = build_stages(source, stack, algorithm=algorithm)
        try:
            return stages[-1].rows(*rows).copy()
        finally:
            from .engine import _common

            _common.release_buffers()


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class BandPlan:
    """How a stream runs: ``rows`` of final output per band, and the memory it expects."""

    rows: int
    bands: int
    fixed_bytes: int
    row_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.fixed_bytes + self.rows * self.row_bytes


def plan_bands(stages: list[Stage], budget: int, *, sink_bytes: int = 0, held_bytes: int = 0,
               name: str = "input") -> BandPlan:
    """Band height (final output rows) whose working set fits ``budget`` bytes.

    Per final row, every stage holds the rows it contributes (its vertical stride times
    the rows of the stages after it) twice (its kept block and the new rows), and a conv
    stage its float32 input window; fixed costs are the halos, the engine's scratch per
    layer (at most a quarter of its output, and its tiles' caps), ``sink_bytes`` and
    ``held_bytes`` (an input decoded whole). Bands are a whole number of the last stage's
    units and at most :data:`BAND_TARGET_BYTES` of working set.

    Raises
    ------
    InputError
        Not even one unit of rows fits: the message gives the sizes and the remedy.
    """
    from .engine import _threads

    ratio = 1.0
    row_bytes = 0.0
    fixed = sink_bytes + held_bytes
    for stage in reversed(stages):
        h, w, c = stage.shape
        row = 4 * w * c
        row_bytes += ratio * (3 if isinstance(stage, SourceStage) else 2) * row  # the source also reads one band ahead
        if isinstance(stage, LayerStage):
            plan = stage.plan
            step = plan.row_step
            in_row = 4 * plan.input_shape[1] * plan.input_shape[2]
            fixed += 2 * plan.halo_rows * in_row
            whole_out = 4 * h * w * c
            fixed += min(whole_out // 4, 16 << 20) * (_threads.CPUS if plan.algorithm == "fft" else 1)
            if plan.pool is not None:
                fixed += min(whole_out // 4, 32 << 20)
            ratio *= step
            row_bytes += ratio * in_row
        elif isinstance(stage, PoolStage):
            ratio *= stage.pool.strides[0]
    unit = stages[-1].unit
    height = stages[-1].shape[0]
    minimum = fixed + unit * row_bytes
    if minimum > budget:
        from ._budget import format_bytes

        raise InputError(f"{name}: one band of {unit} output rows needs about {format_bytes(int(minimum))}, more than "
                         f"the {format_bytes(budget)} memory limit; raise --memory-limit")
    room = min(budget, max(BAND_TARGET_BYTES, minimum)) - fixed
    rows = max(unit, int(room // max(1.0, row_bytes)) // unit * unit)
    rows = min(rows, height)
    return BandPlan(rows=rows, bands=-(-height // rows), fixed_bytes=int(fixed), row_bytes=int(row_bytes))


# --------------------------------------------------------------------------- progress

#: ``factory(total, label)`` → context manager with ``advance()``: set by the command line
#: when a bar over bands should be drawn (a terminal, one input); None draws nothing.
band_progress: Callable[[int, str], Any] | None = None


@contextlib.contextmanager
def _progress(total: int, label: str):
    class _Null:
        def advance(self) -> None:
            return None

    if band_progress is None or total <= 1:
        yield _Null()
        return
    with band_progress(total, label) as bar:
        yield bar


# --------------------------------------------------------------------------- one input


@dataclass
class StreamResult:
    input_shape: list[int]
    output_shape: list[int]
    algorithm: list[str]
    outputs: list[str]
    bands: int


def stream_input(source_path: str, job: "Job", *, directory: Path, stem: str, inputs: frozenset[str],
                 budget: int) -> StreamResult:
    """Run ``job``'s stack on one input band by band and write its output files (see the module docstring).

    The files are those the whole-image path writes (same names; PNG bytes identical;
    TIFF as tiled BigTIFF; npy identical; zarr), committed together once every band is
    written; any failure or Ctrl-C removes them all.
    """
    from .io import DEFAULT_MAX_PIXELS
    from .io.bands import open_source

    read = job.read
    with open_source(source_path, mode=read.mode, scale=read.scale, keep_integers=job.stack.sums_channels_first,
                     max_pixels=read.max_pixels if read.max_pixels is not None else DEFAULT_MAX_PIXELS,
                     memory_limit=budget) as source:
        stack = job.stack.for_signal() if source.kind == "signal" else job.stack
        if stack is not job.stack:
            job = replace(job, stack=stack)
        stages = build_stages(source, stack, algorithm=job.algorithm, prefetch=True)
        try:
            return _stream(source, stages, job, stack, directory=directory, stem=stem, inputs=inputs, budget=budget)
        finally:
            stages[0].close()


def _stream(source, stages: list[Stage], job: "Job", stack: "Stack", *, directory: Path, stem: str,
            inputs: frozenset[str], budget: int) -> StreamResult:
    """The body of :func:`stream_input` once the source and the stages are open."""
    import numpy as np

    from . import apply as apply_module
    from .engine import _common
    from .io.bands import Sinks

    final = stages[-1]
    height, width, channels = final.shape
    names = stack.output_names()
    conv = stack.last_conv
    in_depth = apply_module._last_conv_input_channels(stack, tuple(source.shape))
    out = job.output
    files = apply_module._map_files(job, names, stem, directory, depthwise=conv.spec.depthwise,
                                    in_channels=in_depth, channels=channels)
    paths = [path for path, _ in files]
    if len(set(paths)) != len(paths):
        raise OptionError(f"--name: {out.name!r} gives the same file name to several maps; add {{filter}} or {{index}}")
    for path in paths:
        apply_module._refuse_overwrite(path, job, inputs)
    groups = [group for _, group in files]
    held = 0 if source.streams else int(np.prod(source.reader.shape)) * source.reader.dtype.itemsize
    plan = plan_bands(stages, budget, sink_bytes=_sink_bytes(out.format, final.shape, len(groups)),
                      held_bytes=held, name=source.name)
    display = out.format in ("png", "png16")
    ranges = None
    try:
        if display and out.normalize != "clip":
            ranges = _extrema(stages, plan, groups, names=[g.name for g in groups], label=f"{source.name} (range)")
            for stage in stages[1:]:
                stage.reset()
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        sinks = _sinks(out, files, final.shape)
        with Sinks(sinks) as all_sinks, _progress(plan.bands, source.name) as bar, _stream_memory(stages):
            for start in range(0, height, plan.rows):
                band = final.rows(start, min(height, start + plan.rows))
                _dispatch(band, files, sinks, out, ranges)
                bar.advance()
            all_sinks.commit()
    finally:
        _common.release_buffers()
    return StreamResult(input_shape=list(source.shape), output_shape=[height, width, channels],
                        algorithm=algorithms(stages), outputs=[str(p) for p in paths], bands=plan.bands)


@contextlib.contextmanager
def _stream_memory(stages: list[Stage]):
    """Settings for many bands of the same sizes, set back (as far as they can be) after.

    glibc keeps freed band-sized blocks for the next band instead of returning them to
    the system (its default, mmap for blocks over a size it raises only slowly, makes every
    band pay its page faults again), numpy does not ask for huge pages (each fresh one is
    zeroed by the kernel), and OpenCV's pool stays at one thread count for the whole
    stream. On a 16000² image these took the system time from about 2 s to 1 s. glibc's
    thresholds cannot be made dynamic again: they are left at the values its dynamic rule
    reaches at most (32 MiB, 64 MiB), and what the stream kept is trimmed.
    """
    import ctypes
    import ctypes.util

    from .engine import get_threads, opencv

    libc = None
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    hugepages = None
    with contextlib.suppress(Exception):
        from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage

        hugepages = _get_madvise_hugepage()
        _set_madvise_hugepage(False)
    with_opencv = [s.plan for s in stages if isinstance(s, LayerStage) and s.plan.backend == "opencv"]
    cv2 = opencv.module() if with_opencv else None
    # One-call layers use OpenCV's threads over a whole window, the others the engine's.
    threads = get_threads() if all(plan._opencv_whole for plan in with_opencv) else 1
    try:
        with opencv.pool_threads(cv2, threads) if cv2 is not None else contextlib.nullcontext():
            yield
    finally:
        if hugepages is not None:
            _set_madvise_hugepage(hugepages)
        if libc is not None:
            with contextlib.suppress(Exception):
                libc.mallopt(-3, 32 << 20)
                libc.mallopt(-1, 64 << 20)
                libc.malloc_trim(0)


def _sink_bytes(fmt: str, shape, files: int) -> int:
    """Buffers the sinks hold: TIFF about three rows of tiles per file, PNG a deflate part
    and an IDAT chunk per file, zarr a chunk and zarr's copy of it."""
    h, w, c = shape
    if fmt == "tiff":
        from .io.tiff import TILE

        per = 3 * TILE * w * 4 * max(1, c // max(1, files))
        return files * min(per, 3 * TILE * w * 4 * c)
    if fmt in ("png", "png16"):
        return files * min(20 << 20, 2 * h * (w + 1) * 2 * max(1, c // max(1, files)))
    if fmt == "zarr":
        from .io.zarr_array import chunk_rows

        return 3 * chunk_rows(shape) * w * c * 4
    return 0


def _sinks(out, files, shape) -> list:
    from .io.npy import NpySink
    from .io.png import PngSink
    from .io.tiff import TiffSink
    from .io.zarr_array import ZarrSink

    h, w, c = shape
    if out.format == "npy":
        return [NpySink(files[0][0], (h, w, c))]
    if out.format == "zarr":
        return [ZarrSink(files[0][0], (h, w, c))]
    sinks: list = []
    try:
        for path, group in files:
            k = len(group.channels)
            if out.format == "tiff":
                sinks.append(TiffSink(path, (h, w) if k == 1 else (h, w, k),
                                      compression=getattr(out, "tiff_compression", "none")))
            else:
                from .engine import get_threads

                sinks.append(PngSink(path, h, w, k, bits=16 if out.format == "png16" else 8,
                                     compress_level=out.compress_level,
                                     workers=max(1, get_threads() // max(1, len(files)))))
    except BaseException:
        for sink in sinks:
            sink.discard()
        raise
    return sinks


def _group_band(band, group):
    first, count = group.channels[0], len(group.channels)
    if count == 1:
        return band[:, :, first]
    if group.channels == tuple(range(first, first + count)):
        return band[:, :, first:first + count]
    return band[:, :, list(group.channels)]


def _dispatch(band, files, sinks, out, ranges) -> None:
    """One band of the final output to every sink (PNG maps through ``--normalize``)."""
    import numpy as np

    from .io.display import to_display_planes

    if out.format in ("npy", "zarr"):
        sinks[0].write(band)
        return
    bits = 16 if out.format == "png16" else 8
    for index, ((path, group), sink) in enumerate(zip(files, sinks)):
        values = _group_band(band, group)
        if out.format == "tiff":
            sink.write(values)
            continue
        low, high = (None, None) if ranges is None else (ranges[0][index:index + 1], ranges[1][index:index + 1])
        # A group of several channels (a depthwise colour image) shares one scale, as to_display gives it.
        plane = np.ascontiguousarray(values, dtype=np.float32).reshape(values.shape[0], -1, 1)
        pixels = to_display_planes(plane, normalize=out.normalize, bits=bits, names=[group.name], low=low, high=high)
        sink.write(pixels[0].reshape(values.shape[0], values.shape[1], -1))


def _extrema(stages: list[Stage], plan: BandPlan, groups, *, names: list[str], label: str):
    """Each output group's (min, max) over the whole output, band by band (the first pass)."""
    import numpy as np

    from .errors import OutputError
    from .io.display import channel_extrema

    final = stages[-1]
    height = final.shape[0]
    count = len(groups)
    low = np.full(count, np.inf)
    high = np.full(count, -np.inf)
    with _progress(plan.bands, label) as bar:
        for start in range(0, height, plan.rows):
            band = final.rows(start, min(height, start + plan.rows))
            band_low, band_high = channel_extrema(band)
            for index, group in enumerate(groups):
                channels = list(group.channels)
                low[index] = min(low[index], float(np.min(band_low[channels])))
                high[index] = max(high[index], float(np.max(band_high[channels])))
            bar.advance()
    broken = ~(np.isfinite(low) & np.isfinite(high))
    if broken.any():
        index = int(np.argmax(broken))
        raise OutputError(f"{names[index]}: NaN/Inf values cannot be shown as pixels; use --format tiff or npy")
    return low.astype(np.float32), high.astype(np.float32)


__all__ = ["DEFAULT_MEMORY_LIMIT", "Stage", "SourceStage", "LayerStage", "PoolStage", "build_stages",
           "compute_band", "plan_bands", "BandPlan", "stream_input", "StreamResult",
           "band_progress", "algorithms"]
