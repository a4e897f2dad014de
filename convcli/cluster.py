"""Many inputs as dask.distributed tasks (``apply --scheduler ADDRESS``).

The batch is planned, checked and reported exactly as :mod:`convcli.batch` does it;
only where the inputs run changes. Each task is a plain function of paths and typed
specs — :func:`convcli.batch.run_one` on one input — that reads its input and writes
its outputs itself, through the same atomic writers (temporary file, then rename), so
the output folder must be on storage every worker shares, under the same path. A task
re-run after its worker died writes the same bytes again. One task per input, not per
group of inputs: grouping 4 or 10 inputs a task changed nothing measurable on the
benchmark (200 images, 2 workers: 93–97 % of the workers' time in tasks either way), and
an input that kills its worker would take its group-mates down with it. A large input
runs as tasks of its own, one per band of output rows (:mod:`convcli.cluster_bands`).

dask.distributed owns scheduling, retries and memory: a task whose worker dies
(killed, out of memory) is given to another worker by the scheduler, up to its
``distributed.scheduler.allowed-failures`` (3 by default) times, after which that
input is reported as failed and the batch goes on. Work in flight is bounded
(:data:`TASKS_PER_THREAD` per worker thread), so a batch of 100,000 inputs never
holds 100,000 futures.

Nothing here is imported without ``--scheduler``: dask and distributed load only
inside :func:`connect` and the task loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .apply import STDOUT, Job, input_stem
from .errors import ConvcliError, InputError, OptionError, OutputError, is_disk_full

if TYPE_CHECKING:  # pragma: no cover
    from .batch import BatchPlan, InputItem, Outcome

#: ``--scheduler local``: start a LocalCluster of ``-j`` worker processes for the run.
LOCAL = "local"

#: Seconds to reach the scheduler (and, for a remote one, to see a worker) by default.
DEFAULT_TIMEOUT = 10.0

#: Tasks in flight per worker thread: one running and a few queued behind it, so a worker
#: never waits for the client's round trip between two tasks (a network's, on a cluster).
TASKS_PER_THREAD = 4

#: How often the client re-reads the cluster's thread count (workers come and go).
RESIZE_SECONDS = 2.0

#: The loggers dask and its server stack write to (silenced in this process for the run).
LOGGERS = ("distributed", "distributed.client", "distributed.scheduler", "distributed.nanny",
           "distributed.worker", "distributed.core", "distributed.comm", "distributed.deploy", "tornado",
           "tornado.application", "asyncio", "bokeh")


@dataclass(frozen=True)
class ClusterSpec:
    """Where the tasks run: ``--scheduler`` and ``--scheduler-timeout``.

    ``address`` is ``tcp://host:port`` (any address dask.distributed's ``Client``
    takes: ``tls://``, ``ucx://``, …) or :data:`LOCAL`; ``timeout`` bounds the
    connection (exit 2 after it). From Python, ``client`` may instead be a connected
    ``distributed.Client`` (a Dask Gateway cluster's ``cluster.get_client()``, say, which
    carries its own credentials): it is used as it is and left open.
    """

    address: str
    timeout: float = DEFAULT_TIMEOUT
    client: object = field(default=None, compare=False, repr=False)

    @classmethod
    def from_client(cls, client, *, timeout: float = DEFAULT_TIMEOUT) -> "ClusterSpec":
        """Run on the cluster of an existing ``distributed.Client``."""
        return cls(str(client.scheduler.address), timeout, client)

    @property
    def local(self) -> bool:
        return self.address == LOCAL


# --- connecting --------------------------------------------------------------------------------

class Session:
    """A client connected to a scheduler with at least one worker of our version.

    :meth:`close` is idempotent: it closes the client and, for ``local``, stops the
    LocalCluster and its worker processes (waiting for them), then restores the
    log levels it silenced.
    """

    def __init__(self, spec: ClusterSpec, client, cluster, quiet: "_QuietDask") -> None:
        self.spec = spec
        self.client = client
        self.cluster = cluster
        self._quiet = quiet
        self._closed = False
        self._owns_client = spec.client is None

    def threads(self) -> int:
        """Worker threads the scheduler knows now; 0 when it cannot say right now."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # the scheduler is briefly busy: keep the window as it was
            return 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.client is not None and self._owns_client:
                with contextlib.suppress(Exception):
                    self.client.close(timeout=5)
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.close(timeout=10)
        finally:
            self._quiet.restore()


class _QuietDask:
    """Silences dask's loggers and warnings in this process; :meth:`restore` undoes it.

    convcli's standard error carries convcli's lines only: a worker killed and
    restarted, a connection retried or a cluster shut down is dask's business.
    """

    def __init__(self) -> None:
        self._levels = {name: logging.getLogger(name).level for name in LOGGERS}
        for name in LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # dask's own warnings only: an input's (Pillow's on a truncated file…) still shows.
        warnings.filterwarnings("ignore", module=r"(distributed|dask|tornado|bokeh)(\.|$)")

    def restore(self) -> None:
        self._warnings.__exit__(None, None, None)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while the LocalCluster starts.

    The cluster's event-loop thread is created inside the block and inherits the
    mask; the worker processes it spawns (and re-spawns after a worker dies)
    inherit it from that thread. A terminal's Ctrl-C then reaches this process
    alone, which stops the cluster in order, as the local pool does.
    """
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        # multiprocessing's resource tracker, started on the first spawn, unblocks SIGINT in the
        # thread that starts it (CPython's resource_tracker.ensure_running): start it now.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def connect(spec: ClusterSpec, *, workers: int) -> Session:
    """Connect to ``spec.address`` (or start a LocalCluster of ``workers`` processes).

    Raises
    ------
    OptionError
        If distributed is not installed; if the scheduler cannot be reached within
        ``spec.timeout`` seconds, or has no worker after that long; if a worker
        lacks convcli or runs another version of it; if ``local`` and the
        LocalCluster does not start. Nothing has been read or written yet.
    """
    try:
        import distributed
    except ImportError:
        raise OptionError("--scheduler: needs dask.distributed; install it with pip install 'convcli[cluster]'") \
            from None
    quiet = _QuietDask()
    client = cluster = None
    try:
        if spec.client is not None:
            client = spec.client
        elif spec.local:
            cluster = _local_cluster(distributed, workers)
            client = distributed.Client(cluster, timeout=spec.timeout, set_as_default=False)
        else:
            client = _client(distributed, spec)
        if not spec.local:
            try:
                client.wait_for_workers(1, timeout=spec.timeout)
            except (TimeoutError, OSError):
                raise OptionError(f"--scheduler {spec.address}: the scheduler has no worker after "
                                  f"{spec.timeout:g} s; start some with: dask worker {spec.address}") from None
        problem = version_problem(spec.address, _worker_versions(client), local_version())
        if problem:
            raise OptionError(problem)
    except BaseException:
        Session(spec, client, cluster, quiet).close()
        raise
    return Session(spec, client, cluster, quiet)


def _local_cluster(distributed, workers: int):
    """A LocalCluster of ``workers`` single-threaded processes on 127.0.0.1, no dashboard.

    The workers start without dask's ``MALLOC_TRIM_THRESHOLD_`` (distributed.nanny.pre-spawn-environ):
    setting it turns off glibc's adaptive mmap threshold, so every image-sized array is a fresh
    mmap and its pages are faulted in again — +1.2 s of system time on the 200-image benchmark
    (4.5 s of CPU in all), measured with the local pool given the same variable.
    """
    import dask

    environ = {name: value for name, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if name != "MALLOC_TRIM_THRESHOLD_"}
    try:
        with _sigint_blocked(), dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address=None,
                                            silence_logs=logging.CRITICAL + 1)
    except Exception as err:  # e.g. a worker process that cannot start (no spawnable __main__)
        raise OptionError(f"--scheduler local: the LocalCluster did not start: {_first_line(err)}") from None


def _client(distributed, spec: ClusterSpec):
    """A Client of ``spec.address``, or the one-line usage error of why not."""
    from distributed.comm.addressing import get_address_host_port

    try:
        # Checked before a Client exists: one whose constructor fails is left half made, and
        # its finaliser would hang the interpreter's exit (2 × the timeout) with a traceback.
        get_address_host_port(spec.address)
    except (ValueError, TypeError) as err:
        raise OptionError(f"--scheduler {spec.address}: cannot connect: {_first_line(err)}") from None
    started = time.monotonic()
    try:
        return distributed.Client(spec.address, timeout=spec.timeout, set_as_default=False)
    except Exception as err:  # OSError, TimeoutError…
        _disarm_half_made_clients(distributed)
        waited = time.monotonic() - started
        reason = _first_line(err)
        if waited >= spec.timeout * 0.9:
            raise OptionError(f"--scheduler {spec.address}: no scheduler answered within {spec.timeout:g} s"
                              f" (--scheduler-timeout); is 'dask scheduler' running there?") from None
        raise OptionError(f"--scheduler {spec.address}: cannot connect: {reason}") from None


def _disarm_half_made_clients(distributed) -> None:
    """Mark the Client a failed constructor left behind as closed, so its finaliser does nothing."""
    import gc

    for obj in gc.get_objects():
        if isinstance(obj, distributed.Client) and obj.status not in ("running", "closed"):
            obj.status = "closed"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def local_version() -> str:
    """This installation's convcli version (as the workers' check reads theirs)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        return version("convcli")
    except PackageNotFoundError:  # run from a source tree without installing
        return __version__


def _worker_versions(client) -> dict[str, object]:
    """Each worker's installed convcli version, or the exception reading it raised.

    ``importlib.metadata.version`` is sent, not a function of convcli: a worker
    without convcli could not unpickle one.
    """
    from importlib.metadata import version

    return client.run(version, "convcli", on_error="return")


def version_problem(address: str, versions: dict[str, object], expected: str) -> str | None:
    """The line that says which worker lacks convcli or runs another version; None if all agree."""
    missing = sorted(worker for worker, found in versions.items() if not isinstance(found, str))
    other = sorted(worker for worker, found in versions.items() if isinstance(found, str) and found != expected)
    if not missing and not other:
        return None
    count = len(missing) + len(other)
    of = f" ({count} of {len(versions)} workers)" if count > 1 else ""
    if missing:
        return (f"--scheduler {address}: worker {missing[0]} has no convcli{of}; install the same version there:"
                f" pip install 'convcli[cluster]=={expected}'")
    return (f"--scheduler {address}: worker {other[0]} runs convcli {versions[other[0]]}, this is {expected}{of};"
            f" install the same version on every worker")


# --- paths: absolute for the workers, as given for the reports ---------------------------------

class _Paths:
    """Relative paths of the command line made absolute, so any worker finds them.

    A worker's current folder is not ours. Inputs, ``-o``, ``--montage`` and the
    files the job reads are sent as absolute paths (on the shared storage, under
    the same path everywhere); what comes back — ``--json``'s ``input`` and
    ``outputs``, error messages — is turned back into the names the user typed,
    so the reports are those of a local run.
    """

    def __init__(self, cwd: str) -> None:
        self.cwd = Path(cwd)
        self.pairs: dict[str, str] = {}  # absolute form → as given

    def absolute(self, given: str) -> str:
        if os.path.isabs(given):
            return given
        full = str(self.cwd / given)
        self.pairs[full] = str(Path(given))
        return full

    def folder(self, given: Path | str) -> Path:
        if os.path.isabs(given):
            return Path(given)
        full = self.cwd / given
        shown = str(Path(given))
        self.pairs[str(full) + os.sep] = "" if shown == "." else shown + os.sep
        self.pairs[str(full)] = shown
        return full

    def local(self, text: str) -> str:
        for full in sorted(self.pairs, key=len, reverse=True):
            if full in text:
                text = text.replace(full, self.pairs[full])
        return text


def _absolute_job(job: Job, paths: _Paths) -> Job:
    out = job.output
    directory = out.directory
    if directory is not None and directory != STDOUT:
        directory = paths.folder(directory)
    montage = out.montage
    if montage is not None and not os.path.isabs(montage):
        # Escape braces of the folder's name: the template is formatted with {stem}.
        cwd = str(paths.cwd).replace("{", "{{").replace("}", "}}")
        montage = os.path.join(cwd, montage)
    reads = tuple(replace(read, path=paths.absolute(read.path)) for read in job.reads)
    return replace(job, output=replace(out, directory=directory, montage=montage), reads=reads)


def _montage_pairs(job: Job, items: "list[InputItem]", paths: _Paths) -> None:
    """Each input's montage file: absolute → as the local run names it."""
    from .apply import montage_path

    template = job.output.montage
    if template is None or os.path.isabs(template):
        return
    for item in items:
        stem = input_stem(item.source)
        local = str(montage_path(template, stem))
        paths.pairs[str(paths.cwd / local)] = local


# --- tasks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Shared:
    """What every task of a batch needs, sent to each worker once (as a task's result)."""

    job: Job
    inputs: frozenset[str]
    many: bool


def _hold(shared: _Shared) -> _Shared:
    """The task whose result the others depend on: recomputed if the workers holding it die."""
    return shared


def run_inputs(work: "list[tuple[int, InputItem]]", shared: _Shared) -> "list[Outcome]":
    """The task: :func:`convcli.batch.run_one` on each ``(index, input)``, in order.

    The engine runs one thread per task: a dask worker runs one task per thread it
    has, and the outputs are the same bits whatever the thread count.
    """
    from . import engine
    from .batch import run_one

    engine.set_threads(1)
    return [run_one(index, item, shared.job, shared.inputs, shared.many) for index, item in work]


def cluster_outcomes(session: Session, indices: list[int], items: "list[InputItem]", job: Job, plan: "BatchPlan",
                     reporter, many: bool) -> "Iterator[Outcome]":
    """Run ``indices`` as tasks on ``session``'s cluster; yield each outcome as it finishes.

    At most :data:`TASKS_PER_THREAD` tasks per worker thread are in flight. With
    ``--print`` (output in input order) an input is only submitted when it is
    fewer than that many places ahead of the earliest unwritten one. Large inputs
    (:func:`_large_inputs`) run after the others, each as band tasks. Closing the
    generator cancels what is still queued.

    Raises
    ------
    InputError
        The connection to the scheduler is lost (its futures come back cancelled): the
        inputs left cannot be processed (exit 1).
    """
    from distributed import KilledWorker, as_completed

    from .batch import _failed

    client = session.client
    paths = _Paths(os.getcwd())
    remote_job = _absolute_job(job, paths)
    _montage_pairs(job, [items[i] for i in indices], paths)
    remote_items = {i: replace(items[i], source=paths.absolute(items[i].source)) for i in indices}
    shared = client.submit(_hold, _Shared(remote_job, plan.inputs, many), pure=False,
                           key=f"convcli-job-{os.getpid()}-{time.time_ns()}")
    ordered = job.print_maps
    queue = list(reversed(indices))
    pending: dict = {}
    # with_results: each result is fetched by the client's event loop as its task ends, not
    # by a round trip from here (4 ms an input on the benchmark: a third of the work).
    running = as_completed(loop=client.loop, with_results=True, raise_errors=False)
    window = TASKS_PER_THREAD * max(1, session.threads())
    resized = time.monotonic()

    def submit_more() -> None:
        while queue and len(pending) < window and (
                not ordered or not pending or queue[-1] < reporter.next_index + window):
            index = queue.pop()
            future = client.submit(run_inputs, [(index, remote_items[index])], shared, pure=False,
                                   key=f"convcli-{index}-{shared.key}")
            pending[future] = index
            running.add(future)

    large = _large_inputs(indices, items, remote_items, remote_job, plan)
    queue = [i for i in queue if i not in large]
    try:
        submit_more()
        for future, result in running if pending else ():
            index = pending.pop(future)
            if future.status == "finished":
                outcomes = result
            else:  # a failed task comes as (type, exception, traceback), a cancelled one as the exception
                err = result[1] if isinstance(result, tuple) else result
                if isinstance(err, CancelledError):  # we cancel nothing: the scheduler is gone
                    raise _lost(session, len(pending) + len(queue) + len(large) + 1)
                if isinstance(err, KilledWorker):
                    message = (f"{items[index].source}: the workers running it died (killed, out of memory,"
                               " or a crash in native code) each time it was tried")
                else:  # a task that would not unpickle on its worker…
                    message = f"{items[index].source}: on the cluster: {type(err).__name__}: {_first_line(err)}"
                outcomes = [_failed(index, items[index], message, 0.0)]
            for outcome in outcomes:
                yield _as_given(outcome, items, paths)
            if time.monotonic() - resized > RESIZE_SECONDS:
                window = TASKS_PER_THREAD * (session.threads() or window // TASKS_PER_THREAD)
                resized = time.monotonic()
            submit_more()
        for done, (index, band_input) in enumerate(large.items()):
            try:
                outcome = _run_large(session, index, items[index], band_input)
            except CancelledError:
                raise _lost(session, len(large) - done) from None
            yield _as_given(outcome, items, paths)
    finally:
        if client.status == "running":  # else there is no scheduler to tell
            with contextlib.suppress(Exception):
                client.cancel([*pending, shared], force=True)


#: Up to this many inputs, every one is looked at (its header) for the band-task path; in
#: larger batches only files of at least :data:`LARGE_FILE_BYTES` are, so a batch of 100,000
#: photos does not read 100,000 headers here before its first task.
LARGE_CHECK_INPUTS = 256
LARGE_FILE_BYTES = 16 << 20


def _large_inputs(indices: list[int], items: "list[InputItem]", remote_items: dict, job: Job,
                  plan: "BatchPlan") -> dict:
    """The inputs that run as band tasks (:mod:`convcli.cluster_bands`), by index."""
    if job.memory_limit is None:
        return {}
    from .cluster_bands import plan_large

    found = {}
    for index in indices:
        source = remote_items[index].source
        if len(indices) > LARGE_CHECK_INPUTS:
            try:
                if os.stat(source).st_size < LARGE_FILE_BYTES:
                    continue
            except OSError:
                continue
        large = plan_large(source, job, rel_dir=items[index].rel_dir, inputs=plan.inputs)
        if large is not None:
            found[index] = large
    return found


def _lost(session: Session, left: int) -> InputError:
    """The error of a batch whose scheduler went away (its futures came back cancelled)."""
    return InputError(f"--scheduler {session.spec.address}: lost the connection to the scheduler;"
                        f" {left} inputs not done (run again with --skip-existing to finish)")


def _run_large(session: Session, index: int, item: "InputItem", large) -> "Outcome":
    """One large input's bands as tasks; its outcome (failures as the local batch words them)."""
    from distributed import KilledWorker

    from .batch import Outcome, _failed
    from .cluster_bands import run_large

    started = time.perf_counter()
    try:
        return Outcome(index, run_large(session.client, large,
                                        window=TASKS_PER_THREAD * max(1, session.threads())))
    except KilledWorker:
        return _failed(index, item, f"{item.source}: the workers running one of its bands died (killed, out of"
                       " memory, or a crash in native code) each time it was tried", time.perf_counter() - started)
    except OutputError as err:  # a full disk stops the batch, as it does locally
        return _failed(index, item, str(err), time.perf_counter() - started, disk_full=err.disk_full)
    except ConvcliError as err:
        return _failed(index, item, str(err), time.perf_counter() - started)
    except MemoryError:
        return _failed(index, item, f"{item.source}: out of memory", time.perf_counter() - started)
    except OSError as err:
        return _failed(index, item, f"{item.source}: {err.strerror or err}", time.perf_counter() - started,
                       disk_full=is_disk_full(err.errno))
    except Exception as err:  # as batch.run_one words it: one bad input never stops the batch
        return _failed(index, item, f"{item.source}: internal error: {type(err).__name__}: {err}",
                       time.perf_counter() - started)


def _as_given(outcome: "Outcome", items: "list[InputItem]", paths: _Paths) -> "Outcome":
    """The outcome with the input and paths named as on the command line."""
    result = outcome.result
    result.input = items[outcome.index].source
    result.outputs = [paths.local(path) for path in result.outputs]
    if result.error is not None:
        result.error = paths.local(result.error)
    return outcome


__all__ = ["LOCAL", "DEFAULT_TIMEOUT", "ClusterSpec", "Session", "connect", "cluster_outcomes", "run_inputs",
           "version_problem", "local_version"]
