"""Many inputs: expand folders, plan the outputs, run the inputs in worker processes.

:func:`expand_inputs` turns the command line's INPUTs into :class:`InputItem` s,
:func:`plan_batch` checks the whole batch before any work starts (two inputs that
would write the same file, an output that would overwrite an input,
``--skip-existing``), and :func:`run_batch` processes the inputs — in this process
for ``-j 1``, else in ``N`` spawned worker processes — and reports each one.

Standard output carries data only (``--print`` rows in input order, ``--json``
lines as inputs finish, the ``-o -`` bytes); the progress bar, per-input errors
and the closing summary go to standard error.

Workers are started with the ``spawn`` method: a forked child inherits the
parent's OpenBLAS/OpenMP thread pools and locks (and the progress bar's refresh
thread), which can deadlock; a spawned child starts clean, with
``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` set before numpy
loads so that N workers use N cores, not N × cores threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

from .apply import (
    STDOUT,
    InputResult,
    Job,
    PlannedFile,
    check_job,
    folder_problem,
    input_stem,
    overwritten_read,
    planned_files,
    process,
)
from .errors import ConvcliError, ExitStatus, OptionError, OutputError, is_disk_full, one_line

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import ClusterSpec, Session

#: File extensions a directory contributes (lower case). Hidden files and folders
#: (names starting with ``.``) are left out, and so are symbolic links to folders.
INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".npy", ".csv", ".txt")

#: Environment variables that size the BLAS/OpenMP thread pools of a worker.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")

#: Tasks queued per worker: enough to keep every worker busy, few enough that a
#: batch of 10,000 inputs never holds 10,000 pending results.
TASKS_PER_WORKER = 2

#: Seconds a worker gets to finish its clean-up after SIGTERM before it is killed.
TERMINATE_GRACE = 2.0

#: Least share of ``--memory-limit`` a worker process gets: -j is lowered to keep it.
MIN_WORKER_MEMORY = 96 << 20


class _restore:
    """Sets ``obj.name`` back to ``value`` when the block ends."""

    def __init__(self, obj, name: str, value) -> None:
        self.obj, self.name, self.value = obj, name, value

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        setattr(self.obj, self.name, self.value)


@dataclass(frozen=True)
class InputItem:
    """One input of a batch.

    ``source`` is a path, or ``"-"`` for standard input; ``rel_dir`` is the
    input's folder relative to the folder named on the command line (``""`` for
    a file named directly), which its outputs mirror under ``-o``.
    """

    source: str
    rel_dir: str = ""


@dataclass(frozen=True)
class BatchSummary:
    """How a batch went: inputs done, failed and skipped, and the wall time."""

    done: int
    failed: int
    skipped: int
    seconds: float
    not_processed: int = 0  # left when the batch stopped early (the disk is full)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.INPUT_FAILED if self.failed else ExitStatus.OK

    def line(self) -> str:
        """The closing line on standard error."""
        rate = f", {self.done / self.seconds:.1f} inputs/s" if self.done and self.seconds > 0 else ""
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        left = f", {self.not_processed} not processed" if self.not_processed else ""
        return f"convcli: {self.done} done, {self.failed} failed{skipped}{left} in {self.seconds:.2f} s{rate}"


# --- inputs ------------------------------------------------------------------------------------

def expand_inputs(args: list[str], *, recursive: bool = False) -> list[InputItem]:
    """Turn command-line INPUTs into the list of inputs, in command-line order.

    A folder contributes its files whose extension is in :data:`INPUT_EXTENSIONS`
    (sorted by path; with ``recursive``, those of its sub-folders too, each with
    its ``rel_dir``). A file or ``-`` is taken as it is — a missing or unreadable
    file fails later, as one failed input of the batch.

    Raises
    ------
    OptionError
        If ``-`` (standard input, which can be read once) is given more than once.
    """
    items: list[InputItem] = []
    if args.count(STDOUT) > 1:
        raise OptionError(f"INPUT: '-' (standard input) is given {args.count(STDOUT)} times; it can be read once")
    for arg in args:
        path = Path(arg)
        # isdir: False, not an error, for a name too long; a zarr array is a folder but one input.
        if arg != STDOUT and os.path.isdir(path) and not _is_zarr(path):
            items.extend(InputItem(str(path / rel), "" if rel.parent == Path(".") else rel.parent.as_posix())
                         for rel in _folder_files(path, recursive=recursive))
        else:
            items.append(InputItem(arg))
    return items


def _folder_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Input files under ``folder``, as paths relative to it, sorted."""
    found: list[Path] = []
    # os.walk does not follow symbolic links to folders, so a link loop cannot trap it.
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        # A zarr array is a folder, but one input.
        arrays = [d for d in dirs if d.lower().endswith(".zarr") and not d.startswith(".")
                  and _is_zarr(Path(root) / d)]
        found.extend(base / d for d in arrays)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in arrays) if recursive else []
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in INPUT_EXTENSIONS:
                if os.path.isfile(os.path.join(root, name)):
                    found.append(base / name)
    return sorted(found, key=lambda p: p.parts)


def _is_zarr(path: Path) -> bool:
    from .io.zarr_array import is_zarr

    return is_zarr(path)


# --- planning ----------------------------------------------------------------------------------

@dataclass
class BatchPlan:
    """What :func:`plan_batch` settled before any work: which inputs run, which are skipped."""

    run: list[int] = field(default_factory=list)  # indices of the inputs to process
    skipped: dict[int, list[str]] = field(default_factory=dict)  # index → its existing outputs
    outputs: dict[Path, set[str]] = field(default_factory=dict)  # folder → planned output names
    inputs: frozenset[str] = frozenset()  # resolved input paths, never overwritten


def _resolved(path: Path | str) -> str:
    return str(Path(path).resolve())


def plan_batch(items: list[InputItem], job: Job) -> BatchPlan:
    """Check the batch as a whole and decide what runs, before any input is read.

    Raises
    ------
    OptionError
        If an input is given twice; if two inputs would write the same output file
        (``a/x.png b/x.png`` both give ``x_edge.png``; name their common folder with
        ``--recursive`` instead, so the outputs mirror the sub-folders); if two filters
        of one input would (``--name`` without ``{filter}`` or ``{index}``); if an output
        or the ``--montage`` file would overwrite an input (``--name '{stem}.png' -o``
        the input folder) or a file the job reads (:attr:`Job.reads`: kernel and
        pipeline files, under any name); or if an output's folder lies inside a file.
        The message names the option and both files.
    """
    sources: dict[str, str] = {}  # resolved input path → the input as given
    for item in items:
        if item.source != STDOUT:
            sources.setdefault(_resolved(item.source), item.source)
    plan = BatchPlan(inputs=frozenset(sources))
    owner: dict[str, tuple[int, PlannedFile]] = {}  # resolved output path → who writes it
    seen: dict[str, int] = {}
    folders: set[Path] = set()  # output folders already checked
    for index, item in enumerate(items):
        if item.source != STDOUT:
            key = _resolved(item.source)
            if key in seen:
                raise OptionError(f"INPUT: {item.source} is given twice (also as {items[seen[key]].source})")
            seen[key] = index
        planned = planned_files(job, input_stem(item.source), None, item.rel_dir)
        for out in planned:
            path = out.path
            key = _resolved(path)
            option, what, instead = (("--montage", f"{item.source}'s montage", "another --montage file")
                                     if out.montage else
                                     ("--name/-o", f"{item.source}'s output", "another -o folder or --name"))
            if key in sources:
                raise OptionError(f"{option}: {what} {path} would overwrite the input {sources[key]}; choose {instead}")
            read = overwritten_read(path, job.reads, resolved=key)
            if read is not None:
                raise OptionError(f"{option}: {what} {path} would overwrite {read}; choose {instead}")
            if key in owner:
                first_index, first = owner[key]
                raise OptionError(_collision_message(path, items[first_index].source, first, item.source, out,
                                                     same_input=first_index == index))
            owner[key] = (index, out)
            folder = Path(path).parent
            if folder not in folders:
                folders.add(folder)
                problem = folder_problem(folder)
                if problem:
                    raise OptionError(f"{option}: {what} {path} cannot be written: {folder}: {problem}")
            plan.outputs.setdefault(folder, set()).add(Path(path).name)
        if job.output.skip_existing and planned and all(os.path.exists(p.path) for p in planned):
            plan.skipped[index] = [str(p.path) for p in planned]
        else:
            plan.run.append(index)
    return plan


def _collision_message(path: Path, first_source: str, first: PlannedFile, source: str, second: PlannedFile, *,
                       same_input: bool) -> str:
    """Why two planned files are one: two filters of an input, a montage and a map, or two inputs."""
    if first.montage and second.montage:  # two inputs of one stem
        return (f"--montage: {first_source} and {source} would both write the montage {path} (the same {{stem}});"
                " run them separately")
    if first.montage or second.montage:
        def role(src: str, planned: PlannedFile) -> str:
            return f"{src}'s montage" if planned.montage else f"{src}'s map {planned.filter}"

        return (f"--montage: {role(first_source, first)} and {role(source, second)} would both write {path};"
                " choose another --montage file")
    if same_input:
        return (f"--name: filters {first.filter} and {second.filter} of {source} would both write {path};"
                " put {filter} or {index} in --name")
    return (f"INPUT: {first_source} and {source} would both write {path}; name their common folder"
            " with --recursive (outputs mirror sub-folders under -o) or run them separately")


# --- outcomes and reporting --------------------------------------------------------------------

@dataclass
class Outcome:
    """What came back for one input (picklable, small)."""

    index: int
    result: InputResult
    usage_error: bool = False  # an OptionError: the same for every input, so the batch stops
    disk_full: bool = False  # a write failed for lack of space: nothing more can succeed, the batch stops


#: numpy's messages for an array too large to exist (np.empty/np.pad of a huge shape).
_TOO_BIG = re.compile(r"array is too big|Maximum allowed dimension exceeded|maximum possible size")


def _failed(index: int, item: InputItem, message: str, seconds: float, *, usage_error: bool = False,
            disk_full: bool = False) -> Outcome:
    return Outcome(index, InputResult(input=item.source, seconds=seconds, error=message), usage_error, disk_full)


def run_one(index: int, item: InputItem, job: Job, inputs: frozenset[str], many: bool) -> Outcome:
    """Process one input; every failure becomes an :class:`Outcome` with ``error`` set.

    Errors a user can cause keep their message; anything else (a bug) is reported
    with its exception type, so one bad input never stops or hangs the batch.

    With ``--skip-existing`` the input is first *claimed* (:func:`convcli.io.claim`, an
    exclusive lock on ``.NAME.claim`` next to its first output): an input another convcli
    process (or worker) is working on right now is skipped, and so is one whose outputs
    all exist once the claim is held — so two runs into one folder split the work.
    """
    from ._noise import translated

    started = time.perf_counter()
    try:
        with translated() as notes:
            if job.output.skip_existing and item.source != STDOUT and not job.output.to_stdout:
                outcome = _claimed(index, item, job, inputs, many)
            else:
                outcome = Outcome(index, process(item.source, job, rel_dir=item.rel_dir, inputs=inputs, many=many))
        outcome.result.warnings = notes  # library warnings that matter, as lines (a failed input has its error only)
        return outcome
    except OptionError as err:
        return _failed(index, item, str(err), time.perf_counter() - started, usage_error=True)
    except OutputError as err:
        return _failed(index, item, str(err), time.perf_counter() - started, disk_full=err.disk_full)
    except ConvcliError as err:
        return _failed(index, item, str(err), time.perf_counter() - started)
    except MemoryError:
        return _failed(index, item, f"{item.source}: out of memory", time.perf_counter() - started)
    except ValueError as err:
        if not _TOO_BIG.search(str(err)):
            return _failed(index, item, f"{item.source}: internal error: {type(err).__name__}: {err}",
                           time.perf_counter() - started)
        # numpy refuses an array larger than the address space before allocating anything.
        return _failed(index, item, f"{item.source}: out of memory: the layer needs an array larger than this "
                       "machine can hold", time.perf_counter() - started)
    except OSError as err:
        return _failed(index, item, f"{item.source}: {err.strerror or err}", time.perf_counter() - started,
                       disk_full=is_disk_full(err.errno))
    except Exception as err:  # a bug: report it for this input, go on with the others
        return _failed(index, item, f"{item.source}: internal error: {type(err).__name__}: {err}",
                       time.perf_counter() - started)


def _claimed(index: int, item: InputItem, job: Job, inputs: frozenset[str], many: bool) -> Outcome:
    """:func:`run_one` under ``--skip-existing``: claim the input, re-check its outputs, process."""
    from .io import claim, make_folder

    planned = [str(p.path) for p in planned_files(job, input_stem(item.source), None, item.rel_dir)]
    if not planned:
        return Outcome(index, process(item.source, job, rel_dir=item.rel_dir, inputs=inputs, many=many))
    make_folder(Path(planned[0]).parent)
    with claim(planned[0]) as mine:
        if not mine or all(os.path.exists(p) for p in planned):
            # Another process is on it now, or finished it since this batch was planned.
            return Outcome(index, InputResult(input=item.source, outputs=planned, skipped=True))
        return Outcome(index, process(item.source, job, rel_dir=item.rel_dir, inputs=inputs, many=many))


class _Reporter:
    """Writes each finished input: errors on stderr, JSON lines, and ordered stdout data."""

    def __init__(self, items: list[InputItem], *, out: IO[bytes], progress, json_lines: bool) -> None:
        self.items = items
        self.out = out
        self.progress = progress
        self.json_lines = json_lines
        self.done = self.failed = self.skipped = 0
        self._next = 0  # the next index whose --print text / -o - bytes may be written
        self._held: dict[int, bytes] = {}  # finished out of order, waiting for earlier inputs

    @property
    def next_index(self) -> int:
        return self._next

    def skip(self, index: int, outputs: list[str]) -> None:
        self.skipped += 1
        result = InputResult(input=self.items[index].source, outputs=outputs, skipped=True)
        self._json(result)
        self._ordered(index, b"")
        self.progress.advance()

    def finish(self, outcome: Outcome) -> None:
        result = outcome.result
        if result.skipped:
            self.skipped += 1
        elif result.error is not None:
            self.failed += 1
            message = one_line(result.error)  # a name with a newline stays on its line
            source = one_line(self.items[outcome.index].source)
            self.progress.print(f"convcli: {message}" if source in message else f"convcli: {source}: {message}")
        else:
            self.done += 1
            for note in result.warnings:
                self.progress.print(one_line(f"convcli: {result.input}: warning: {note}"))
        self._json(result)
        self._ordered(outcome.index, result.printed.encode() + result.stdout_bytes)
        self.progress.advance()

    def _json(self, result: InputResult) -> None:
        if self.json_lines:
            self._write((json.dumps(result.as_json()) + "\n").encode())

    def _ordered(self, index: int, data: bytes) -> None:
        self._held[index] = data
        while self._next in self._held:
            chunk = self._held.pop(self._next)
            if chunk:
                self._write(chunk)
            self._next += 1

    def _write(self, data: bytes) -> None:
        """Data to standard output; a full disk or an I/O error there is one line, exit 1."""
        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away: the CLI ends quietly
        except OSError as err:
            silence_stdout(self.out)
            raise OutputError.from_os("standard output", err) from None


# --- progress ----------------------------------------------------------------------------------

class NullProgress:
    """The do-nothing progress display (``--quiet``, or standard error not a terminal)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def __enter__(self) -> "NullProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def advance(self) -> None:
        return None

    def print(self, message: str) -> None:
        if self.stream is not None:
            print(message, file=self.stream, flush=True)


class BarProgress(NullProgress):
    """A transient rich progress bar on ``stream``: done/total, rate, elapsed, ETA."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f}/s" if speed else "–/s")

        self._console = Console(file=stream, force_terminal=True)
        # redirect_*=False: data goes to stdout through its own buffer, never through rich.
        self._progress = Progress(TextColumn("convcli"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  console=self._console, transient=True, redirect_stdout=False,
                                  redirect_stderr=False, refresh_per_second=4)
        self._task = self._progress.add_task("inputs", total=total)

    def __enter__(self) -> "BarProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self) -> None:
        self._progress.advance(self._task)

    @contextlib.contextmanager
    def bands(self, total: int, label: str):
        """A second bar, over the bands of one large input, while it streams."""
        task = self._progress.add_task("bands", total=total)

        class _Bar:
            def advance(bar) -> None:
                self._progress.advance(task)

        try:
            yield _Bar()
        finally:
            self._progress.remove_task(task)

    def print(self, message: str) -> None:
        # Through rich's console, so the line appears above the bar instead of tearing it.
        self._console.print(message, markup=False, highlight=False, soft_wrap=True)


def silence_stdout(stream=None) -> None:
    """Point file descriptor 1 at the null device after a failed write to standard output.

    Bytes still buffered would otherwise be flushed again at exit, and fail again with
    an "Exception ignored" message after convcli's own one line.
    """
    if stream is not None and stream not in (sys.stdout, getattr(sys.stdout, "buffer", None)):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def make_progress(total: int, *, stream: IO[str], quiet: bool = False,
                  stdout: IO | None = None) -> NullProgress:
    """A bar when ``stream`` is a terminal and not ``quiet``, else a :class:`NullProgress`.

    No bar either when the data written to standard output goes to the same
    terminal (``stdout`` given and a terminal): the two would tear each other.
    """
    def is_tty(s) -> bool:
        try:
            return bool(s.isatty())
        except (AttributeError, ValueError):
            return False

    if quiet or not is_tty(stream) or (stdout is not None and is_tty(stdout)):
        return NullProgress(stream)
    return BarProgress(total, stream)


# --- running -----------------------------------------------------------------------------------

def default_jobs() -> int:
    """The number of CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_batch(items: list[InputItem], job: Job, *, jobs: int | None = None, quiet: bool = False,
              json_lines: bool = False, stdout: IO[bytes] | None = None,
              stderr: IO[str] | None = None, cluster: ClusterSpec | None = None) -> BatchSummary:
    """Process every input; a failing input is reported and the others go on.

    ``jobs`` worker processes (default: the CPUs; ``1``, a single input or
    standard input run in this process). Outputs are the same bytes whatever
    ``jobs`` is. ``KeyboardInterrupt`` stops the workers, removes temporary files
    and propagates (the CLI exits 130).

    With ``cluster`` (``--scheduler``) the inputs run as dask.distributed tasks
    (:mod:`convcli.cluster`; ``jobs`` is then the LocalCluster's worker count for
    ``local``); standard input is still read here. The scheduler is reached after
    the batch is planned and before anything is written or reported.

    Raises
    ------
    OptionError
        From :func:`plan_batch` (before any work), from :func:`convcli.cluster.connect`
        (an unreachable scheduler, a worker without convcli), or when an input shows a
        usage error that every input would repeat (the batch then stops).
    """
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr
    started = time.perf_counter()
    check_job(job, len(items), json_lines=json_lines)
    plan = plan_batch(items, job)
    _sweep_stale(plan)
    writes_stdout = json_lines or job.print_maps or job.output.to_stdout
    progress = make_progress(len(items), stream=err, quiet=quiet,
                             stdout=(sys.stdout if stdout is None else stdout) if writes_stdout else None)
    reporter = _Reporter(items, out=out, progress=progress, json_lines=json_lines)
    many = len(items) > 1
    workers = min(jobs or default_jobs(), len(plan.run))
    if job.memory_limit is not None and workers > 1 and (cluster is None or cluster.local):
        # The workers of this machine share the limit: fewer of them when each would get too little.
        # (A remote cluster's workers each have their own memory: the limit is then per task.)
        workers = max(1, min(workers, job.memory_limit // MIN_WORKER_MEMORY))
        if workers > 1:
            job = replace(job, memory_limit=job.memory_limit // workers)
    session = None
    if cluster is not None and any(items[i].source != STDOUT for i in plan.run):
        from .cluster import connect

        session = connect(cluster, workers=workers)
    usage: Outcome | None = None
    full: Outcome | None = None
    from . import streaming

    # One input in this process: a large one draws a bar over its bands.
    saved_factory = streaming.band_progress
    if len(plan.run) == 1 and isinstance(progress, BarProgress):  # on a cluster: its band tasks
        streaming.band_progress = progress.bands
    try:
        stream = _outcomes(items, job, plan, reporter, workers, many, session)
        with progress, _restore(streaming, "band_progress", saved_factory):
            for index, outputs in plan.skipped.items():
                reporter.skip(index, outputs)
            try:
                for outcome in stream:
                    if outcome.usage_error:
                        # The same for every input: said once, as the command's usage error
                        # (exit 2), not also as this input's failure.
                        usage = outcome
                        break
                    reporter.finish(outcome)
                    if outcome.disk_full:
                        full = outcome
                        break
            except BaseException:
                stream.close()  # stops the workers now, before the sweep
                if session is not None:
                    session.close()  # a LocalCluster's workers are gone after this
                _sweep_temporaries(plan)
                raise
            finally:
                stream.close()
    finally:
        if session is not None:
            session.close()
            # A worker killed mid-write (its task then ran again elsewhere) left a temporary file.
            _sweep_temporaries(plan)
    if usage is not None:
        raise OptionError(_without_input(usage.result.error or "usage error", items[usage.index].source))
    not_processed = len(items) - reporter.done - reporter.failed - reporter.skipped
    if full is not None:
        _sweep_temporaries(plan)  # what workers stopped in the middle of a write may have left
        reason = (full.result.error or "").rpartition(": ")[2] or "no space left on device"
        print(f"convcli: stopping: {reason.lower()} — no more outputs can be written there; "
              f"{not_processed} input{'s' if not_processed != 1 else ''} not processed", file=err, flush=True)
    summary = BatchSummary(reporter.done, reporter.failed, reporter.skipped, time.perf_counter() - started,
                           not_processed=not_processed)
    if not quiet and many:
        print(summary.line(), file=err, flush=True)
    return summary


def _without_input(message: str, source: str) -> str:
    """A usage error's message without the ``INPUT: `` a per-input report would start with."""
    prefix = f"{source}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# --- the worker pool ---------------------------------------------------------------------------

class _Terminated(SystemExit):
    """Raised in a worker by SIGTERM, so ``finally`` blocks (temporary files) run."""


_worker: dict = {}


def _worker_init(job: Job, inputs: frozenset[str], many: bool, threads: int) -> None:
    """Runs first in each worker: signals, thread counts, and the shared job."""
    # Ctrl-C in a terminal reaches every process of the group: the parent alone
    # decides what to do; a worker ends on the parent's SIGTERM, cleaning up first.
    _worker_signals()
    from . import engine

    if hasattr(engine, "set_threads"):
        engine.set_threads(threads)
    from ._noise import silence_libraries

    silence_libraries()
    _worker.update(job=job, inputs=inputs, many=many)


def _worker_signals() -> None:
    """A worker ignores Ctrl-C and ends on SIGTERM (see :func:`_on_sigterm`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if not hasattr(signal, "setitimer"):
        return
    # SIGTERM can come while Python runs a weakref callback or a __del__, where an exception
    # is printed ("Exception ignored in …", a traceback) and dropped: the task would go on.
    # Such a _Terminated is raised again 1 ms later, from SIGALRM, in the task's own code.
    signal.signal(signal.SIGALRM, lambda _signum, frame: _on_sigterm(signal.SIGTERM, frame))
    previous = sys.unraisablehook

    def unraisable(hook_args) -> None:
        if isinstance(hook_args.exc_value, _Terminated):
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        previous(hook_args)

    sys.unraisablehook = unraisable


def _on_sigterm(signum, frame) -> None:
    if not _worker.get("busy"):
        # Still starting (importing numpy…) or between tasks: nothing to clean up, and an
        # exception here would reach the pool's initializer and print a traceback.
        os._exit(128 + signum)
    raise _Terminated(128 + signum)


def _worker_task(index: int, item: InputItem) -> Outcome:
    _worker["busy"] = True
    try:
        return run_one(index, item, _worker["job"], _worker["inputs"], _worker["many"])
    except _Terminated:
        # The temporary file of an interrupted write is gone (write_atomic's finally);
        # leave now rather than take the next task.
        os._exit(143)
    finally:
        _worker["busy"] = False


class _Environment:
    """Sets environment variables for the children started inside the block."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _SigintBlocked:
    """Blocks SIGINT while a worker is being started, so it inherits a blocked SIGINT.

    A spawned worker then cannot die of a terminal Ctrl-C before its initializer
    has set SIGINT to ignored (it unblocks it after that).
    """

    def __enter__(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def __exit__(self, *exc) -> None:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _Pool:
    """A spawn-method ProcessPoolExecutor whose workers run one thread each way."""

    def __init__(self, job: Job, plan: BatchPlan, workers: int, many: bool) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.threads = max(1, default_jobs() // workers)
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_init,
                                            initargs=(job, plan.inputs, many, self.threads))

    def submit(self, index: int, item: InputItem):
        # Workers are spawned inside submit(): they inherit this environment (read
        # before numpy loads its BLAS) and the blocked SIGINT.
        with _Environment({name: str(self.threads) for name in THREAD_VARIABLES}), _SigintBlocked():
            future = self.executor.submit(_worker_task, index, item)
        return future

    def stop(self) -> None:
        """Stop every worker now: SIGTERM (they clean up and exit), then SIGKILL stragglers."""
        # ProcessPoolExecutor has no public way to end busy workers before Python 3.14.
        processes = list(getattr(self.executor, "_processes", {}).values())
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def _outcomes(items: list[InputItem], job: Job, plan: BatchPlan, reporter: _Reporter, workers: int,
              many: bool, session: Session | None = None) -> Iterator[Outcome]:
    """Every planned input's outcome: standard input and ``-j 1`` here, the rest in workers.

    With a cluster ``session``, every input but standard input runs on the cluster.
    """
    # Standard input belongs to this process: read it here, whatever -j is.
    local = {i for i in plan.run if items[i].source == STDOUT or (workers <= 1 and session is None)}
    for index in plan.run:
        if index in local:
            yield run_one(index, items[index], job, plan.inputs, many)
    remote = [i for i in plan.run if i not in local]
    if remote and session is not None:
        from .cluster import cluster_outcomes

        yield from cluster_outcomes(session, remote, items, job, plan, reporter, many)
    elif remote:
        yield from _run_pool(remote, items, job, plan, reporter, min(workers, len(remote)), many)


def _run_pool(indices: list[int], items: list[InputItem], job: Job, plan: BatchPlan, reporter: _Reporter,
              workers: int, many: bool) -> Iterator[Outcome]:
    """Run ``indices`` on ``workers`` processes; yield each outcome as it finishes.

    At most ``TASKS_PER_WORKER × workers`` inputs are in flight. With ``--print``
    (output in input order) an input is only started when it is fewer than that
    many places ahead of the earliest unwritten one, so held text stays bounded.
    A worker that dies (killed, out of memory, a crash in native code) breaks the
    pool: the inputs that were in flight are retried one at a time in a worker of
    their own, and one that kills that worker too is reported as failed.
    """
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    window = TASKS_PER_WORKER * workers
    ordered = job.print_maps
    queue = deque(indices)
    pool = _Pool(job, plan, workers, many)
    pending: dict = {}
    try:
        while queue or pending:
            while queue and len(pending) < window and (
                    not ordered or not pending or queue[0] < reporter.next_index + window):
                index = queue.popleft()
                pending[pool.submit(index, items[index])] = index
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            suspects: list[int] = []
            for future in finished:
                index = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    suspects.append(index)
                    continue
                except Exception as err:  # e.g. a result that would not pickle: a bug
                    outcome = _failed(index, items[index], f"{items[index].source}: internal error:"
                                      f" {type(err).__name__}: {err}", 0.0)
                yield outcome
            if suspects:
                # The pool is broken: every input still in flight is lost with it.
                suspects += pending.values()
                pending.clear()
                pool.stop()
                _sweep_temporaries(plan)
                for index in sorted(suspects):
                    yield _run_alone(index, items, job, plan, many)
                pool = _Pool(job, plan, workers, many)
    except BaseException:
        pool.stop()
        raise
    pool.close()


def _run_alone(index: int, items: list[InputItem], job: Job, plan: BatchPlan, many: bool) -> Outcome:
    """Retry one input in a worker of its own (after a worker died)."""
    from concurrent.futures.process import BrokenProcessPool

    pool = _Pool(job, plan, 1, many)
    try:
        return pool.submit(index, items[index]).result()
    except BrokenProcessPool:
        _sweep_temporaries(plan)
        return _failed(index, items[index], f"{items[index].source}: the worker process died while processing"
                       " it (killed, out of memory, or a crash in native code)", 0.0)
    finally:
        pool.stop()


def _sweep_stale(plan: BatchPlan) -> None:
    """Before any work: remove temporary files of this batch's outputs left by killed processes.

    Only those whose process is gone (:func:`convcli.io.sweep_stale`): a convcli writing
    into the same folder right now keeps its files.
    """
    from .io import sweep_stale

    for folder, names in plan.outputs.items():
        sweep_stale(folder, names)


def _sweep_temporaries(plan: BatchPlan) -> None:
    """Remove temporary files a killed worker may have left next to this batch's outputs.

    A worker killed in the middle of :func:`convcli.io.atomic.write_atomic` cannot run
    its clean-up. Its temporary file is ``.NAME.PID-XXXXXXXX.tmp`` for a planned output
    NAME; those of a process that is gone are removed (and those of the older
    ``.NAME.XXXXXXXX.tmp`` form). Other files in the folder, and the temporary files of
    a live process — another convcli writing into the same folder — are left alone.
    A zarr array's temporary is such a folder (a band task may still write into it after
    convcli removed it, until its worker is stopped): removed with what it holds.
    """
    from .io.atomic import process_alive, temporary_owner

    for folder, names in plan.outputs.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            pid = temporary_owner(entry, names)
            # Our own leftovers too: by the time of a sweep, this process writes nothing more.
            if pid is not None and (pid in (0, os.getpid()) or not process_alive(pid)):
                path = Path(folder) / entry
                try:
                    if path.is_dir() and not path.is_symlink():  # a zarr array being written
                        import shutil

                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
                except OSError:
                    pass


__all__ = ["INPUT_EXTENSIONS", "InputItem", "BatchSummary", "BatchPlan", "Outcome", "expand_inputs",
           "plan_batch", "run_batch", "run_one", "make_progress", "NullProgress", "BarProgress", "default_jobs"]
