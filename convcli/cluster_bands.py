"""A large input on a cluster: its output bands as dask.distributed tasks (``apply --scheduler``).

An input that ``apply`` would stream (a whole-image run would hold more than
``--memory-limit``: :func:`convcli.apply._streams`) and whose file is read by regions
(tiled or striped TIFF, ``.npy``, zarr) is cut into bands of output rows. Each band is a
task, :func:`convcli.streaming.compute_band`: a plain function of the input's path, the
rows and the stack, which reads only the rows its band needs (through every layer's
halo) and is bit for bit the same rows as a whole-image run.

- ``--format zarr``: the client creates the array (under a temporary name, chunked as
  :class:`convcli.io.zarr_array.ZarrSink` chunks it) and every task writes its own band,
  a whole number of chunks, so no two tasks touch one chunk; the client renames the
  array into place when every band is in.
- ``tiff``, ``npy``, ``png``/``png16``: the tasks return their bands and the client feeds
  the sinks in order (:mod:`convcli.streaming`'s), holding at most a window of bands.
  PNG with ``--normalize`` other than ``clip`` needs each map's range first: a first
  round of tasks returns each band's per-channel minima and maxima.

Other inputs that stream (PNG, JPEG… decoded whole) run as one task, streaming there.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from .apply import InputResult, Job, MapGroup


@dataclass(frozen=True)
class LargeInput:
    """What the client settled for a large input before its first task."""

    source: str  # absolute path, as the workers open it
    job: "Job"  # the stack as the input needs it (a signal's Conv1D meaning)
    files: "tuple[tuple[Path, MapGroup], ...]"  # output files and the channels each holds
    shape: tuple[int, int, int]  # the input's
    output_shape: tuple[int, int, int]
    band_rows: int
    algorithms: tuple[str, ...]

    def bands(self) -> list[tuple[int, int]]:
        height = self.output_shape[0]
        return [(start, min(height, start + self.band_rows)) for start in range(0, height, self.band_rows)]


def plan_large(source: str, job: "Job", *, rel_dir: str, inputs: frozenset[str]) -> LargeInput | None:
    """A :class:`LargeInput` if ``source`` runs as band tasks, else None (it runs as one task).

    Nothing is decoded: a region reader opens only the file's header. Errors (a file
    that cannot be read, an output that would overwrite an input) leave the input to
    the one-task path, which reports them as a local run does.
    """
    from . import apply as apply_module
    from .io.bands import open_source, region_reader_kind
    from .streaming import _sink_bytes, algorithms, build_stages, plan_bands

    try:
        if job.memory_limit is None or not apply_module._streams(source, job) or region_reader_kind(source) is None:
            return None
        read = job.read
        with open_source(source, mode=read.mode, scale=read.scale, keep_integers=job.stack.sums_channels_first,
                         max_pixels=read.max_pixels, memory_limit=job.memory_limit) as opened:
            if opened.kind == "signal":
                return None
            stages = build_stages(opened, job.stack, algorithm=job.algorithm)
            shape = tuple(opened.shape)
            final = stages[-1].shape
            name = opened.name
        stack = job.stack
        names = stack.output_names()
        in_depth = apply_module._last_conv_input_channels(stack, shape)
        directory = Path(job.output.directory) / rel_dir  # type: ignore[arg-type]
        files = apply_module._map_files(job, names, apply_module.input_stem(source), directory,
                                        depthwise=stack.last_conv.spec.depthwise, in_channels=in_depth,
                                        channels=final[2])
        paths = [path for path, _ in files]
        if len(set(paths)) != len(paths):
            return None
        for path in paths:
            apply_module._refuse_overwrite(path, job, inputs)
        # The band height a local stream would take, its sinks counted: an input a local run
        # refuses ("one band … needs more than the limit") takes the one-task path and is
        # refused the same way.
        rows = plan_bands(stages, job.memory_limit, sink_bytes=_sink_bytes(job.output.format, final, len(files)),
                          name=name).rows
    except Exception:  # noqa: BLE001 - any reader's error: the one-task path reports it as a local run does
        return None
    if job.output.format == "zarr":
        from .io.zarr_array import chunk_rows

        chunk = chunk_rows(final)
        rows = max(chunk, rows // chunk * chunk)  # whole chunks: no chunk is written by two tasks
    return LargeInput(source=source, job=job, files=tuple(files), shape=shape, output_shape=final,
                      band_rows=rows, algorithms=tuple(algorithms(stages)))


# --- tasks (plain functions of paths and values) -----------------------------------------------

def _band(large: LargeInput, rows: tuple[int, int]):
    from . import engine
    from .io import DEFAULT_MAX_PIXELS
    from .streaming import compute_band

    engine.set_threads(1)
    read = large.job.read
    return compute_band(large.source, rows, large.job.stack, mode=read.mode, scale=read.scale,
                        algorithm=large.job.algorithm,
                        max_pixels=read.max_pixels if read.max_pixels is not None else DEFAULT_MAX_PIXELS)


def _keep(large: LargeInput) -> LargeInput:
    return large


def band_task(large: LargeInput, rows: tuple[int, int]):
    """Rows [r0, r1) of the input's output, float32 (r1 − r0, W', F')."""
    return _band(large, rows)


def extrema_task(large: LargeInput, rows: tuple[int, int]):
    """Each output channel's (min, max) over the band's rows (``--normalize``'s first pass)."""
    from .io.display import channel_extrema

    return channel_extrema(_band(large, rows))


def zarr_band_task(large: LargeInput, rows: tuple[int, int], array_path: str) -> int:
    """Compute the band and write it into the zarr array at ``array_path``; returns its row count."""
    import zarr

    from .io.zarr_array import write_error

    band = _band(large, rows)
    try:
        array = zarr.open_array(store=array_path, mode="r+")
        array[rows[0]:rows[1]] = band
    except OSError as err:  # with the OS's errno: a full disk stops the batch, as it does locally
        raise write_error(large.files[0][0], err) from None
    return rows[1] - rows[0]


# --- the client's side -------------------------------------------------------------------------

def run_large(client, large: LargeInput, *, window: int) -> "InputResult":
    """Run ``large``'s bands on the cluster and write its outputs; the input's result.

    At most ``window`` bands are in flight; those returned to this process (formats
    other than zarr) are also held to ``--memory-limit``. Raises the first failed band's
    error (a :class:`~convcli.errors.ConvcliError` with the message a local run gives, or
    the cluster's exception); the outputs are then discarded.
    """
    from .apply import InputResult

    started = time.perf_counter()
    if large.job.output.format != "zarr" and large.job.memory_limit:
        h, w, c = large.output_shape
        window = max(2, min(window, large.job.memory_limit // max(1, 4 * large.band_rows * w * c)))
    if large.job.output.format == "zarr":
        outputs = _run_zarr(client, large, window=window)
    else:
        outputs = _run_in_order(client, large, window=window)
    return InputResult(input=large.source, input_shape=list(large.shape), output_shape=list(large.output_shape),
                       filters=large.job.stack.output_names(), outputs=outputs, algorithm=list(large.algorithms),
                       seconds=time.perf_counter() - started)


def _results(client, function, large: LargeInput, bands: list[tuple[int, int]], *, window: int,
             extra: tuple = (), label: str = "") -> Iterator[tuple[int, object]]:
    """Each band's task result, in band order, with at most ``window`` tasks in flight or held.

    A bar over the bands is drawn as they finish when the batch draws one (a terminal,
    one input: :data:`convcli.streaming.band_progress`).
    """
    from .streaming import _progress

    with _progress(len(bands), label or Path(large.source).name) as bar:
        yield from _in_order(client, function, large, bands, window=window, extra=extra, bar=bar)


def _in_order(client, function, large: LargeInput, bands: list[tuple[int, int]], *, window: int, extra: tuple,
              bar) -> Iterator[tuple[int, object]]:
    from distributed import as_completed

    # Sent once as a task's result (not with every task, and recomputed if its worker dies).
    shared = client.submit(_keep, large, pure=False)
    running = as_completed(loop=client.loop, with_results=True, raise_errors=False)
    futures: dict = {}
    held: dict[int, object] = {}
    submitted = 0
    done = 0
    try:
        while done < len(bands):
            while submitted < len(bands) and len(futures) + len(held) < window:
                future = client.submit(function, shared, bands[submitted], *extra, pure=False)
                futures[future] = submitted
                running.add(future)
                submitted += 1
            future, result = next(running)
            index = futures.pop(future)
            # A failed band is raised in band order, as a local stream meets it (the first
            # broken tile from the top), whichever band happened to fail first here.
            held[index] = _Failed(_task_error(result)) if future.status != "finished" else result
            bar.advance()
            while done in held:
                value = held.pop(done)
                if isinstance(value, _Failed):
                    _drain(futures)
                    raise value.error
                yield done, value
                done += 1
    finally:
        if client.status == "running":
            client.cancel([*futures, shared], force=True)


#: How long a failed input waits for its bands still running (see :func:`_drain`).
DRAIN_SECONDS = 60


def _drain(futures) -> None:
    """Wait (at most :data:`DRAIN_SECONDS`) for the band tasks still in flight to end.

    A running task is not stopped by cancelling it: one still writing zarr chunks after
    the caller removed the temporary array would create its folder again.
    """
    from distributed import wait

    with contextlib.suppress(Exception):
        wait(list(futures), timeout=DRAIN_SECONDS)


@dataclass(frozen=True)
class _Failed:
    """A band whose task failed, held until the bands before it are in."""

    error: BaseException


def _task_error(result) -> BaseException:
    """The exception of a failed or cancelled band task, as :func:`distributed.as_completed` gives it."""
    return result[1] if isinstance(result, tuple) else result


def _run_zarr(client, large: LargeInput, *, window: int) -> list[str]:
    import zarr

    from .io.bands import put_in_place, remove_quietly, temporary_path
    from .io.zarr_array import chunk_rows, write_error

    path = large.files[0][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path, directory=True)
    try:
        shape = large.output_shape
        try:
            zarr.create_array(store=str(temporary), shape=shape, chunks=(chunk_rows(shape),) + shape[1:],
                              dtype="float32", zarr_format=3, overwrite=True)
        except Exception as err:  # noqa: BLE001 - zarr raises many kinds
            raise write_error(path, err) from None
        for _ in _results(client, zarr_band_task, large, large.bands(), window=window, extra=(str(temporary),)):
            pass
        put_in_place(temporary, path)
        temporary = None
    finally:
        remove_quietly(temporary)
    return [str(path)]


def _run_in_order(client, large: LargeInput, *, window: int) -> list[str]:
    import numpy as np

    from .errors import OutputError
    from .io.bands import Sinks
    from .streaming import _dispatch, _sinks

    out = large.job.output
    files = list(large.files)
    ranges = None
    if out.format in ("png", "png16") and out.normalize != "clip":
        count = len(files)
        low, high = np.full(count, np.inf), np.full(count, -np.inf)
        for _, (band_low, band_high) in _results(client, extrema_task, large, large.bands(), window=window,
                                                 label=f"{Path(large.source).name} (range)"):
            for index, (_, group) in enumerate(files):
                channels = list(group.channels)
                low[index] = min(low[index], float(np.min(band_low[channels])))
                high[index] = max(high[index], float(np.max(band_high[channels])))
        broken = ~(np.isfinite(low) & np.isfinite(high))
        if broken.any():
            name = files[int(np.argmax(broken))][1].name
            raise OutputError(f"{name}: NaN/Inf values cannot be shown as pixels; use --format tiff or npy")
        ranges = (low.astype(np.float32), high.astype(np.float32))
    for path, _ in files:
        path.parent.mkdir(parents=True, exist_ok=True)
    sinks = _sinks(out, files, large.output_shape)
    with Sinks(sinks) as all_sinks:
        for _, band in _results(client, band_task, large, large.bands(), window=window):
            _dispatch(band, files, sinks, out, ranges)
        all_sinks.commit()
    return [str(path) for path, _ in files]


__all__ = ["LargeInput", "plan_large", "run_large", "band_task", "extrema_task", "zarr_band_task"]
