"""The engine's thread count and a small shared pool that runs row ranges of one layer in parallel.

numpy's matmul, copies and ufuncs and scipy.fft release the GIL, so threads over
disjoint bands of output rows use both cores without copying the input. Batch workers
(``-j N``) call :func:`set_threads` with 1 so N processes do not each start a pool.

A layer's tiles are planned for the machine (:data:`CPUS`), never for the thread count
set here, and BLAS runs on one thread inside the engine: OpenBLAS and pocketfft round a
pixel differently depending on the shape of the call it is in (seen on AVX-512 cores), so
this is what keeps every output bit the same whatever ``-j`` or :func:`set_threads` says.
The threads then take whole tiles (:func:`tile_ranges`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ..errors import OptionError
from . import _blas

#: The CPUs of this machine: how many threads a layer's tiles are planned for.
CPUS = max(1, os.cpu_count() or 1)
_threads = CPUS
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()
_running = threading.local()  # .active: this thread is running a range (a nested call runs inline)


def set_threads(n: int) -> None:
    """Set how many threads the engine may use (≥ 1; batch workers use 1)."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OptionError(f"threads: must be a whole number of at least 1, got {n!r}")
    _threads = n


def get_threads() -> int:
    """How many threads the engine uses (default: the number of CPUs)."""
    return _threads


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="convcli-engine")
            _pool_size = n
        return _pool


#: What a thread's tiles must hold before a second thread pays: this many bytes of scratch,
#: or this many multiply-adds per tile. Below both, every numpy call is short and the
#: threads spend their time handing the GIL over. Measured on 1080p, one thread against
#: two: a gray 3×3 kernel (0.2 M multiply-adds per tile on two threads) 8.4 against 13 ms,
#: a 3×3×3 single filter 24 against 64, W1 with a 2×2 max-pool (0.4 M) 53 against 109;
#: W5 without OpenCV (2.5 MB tiles) 46 against 32; W4 (5 M per tile, 1.6 MB) 200 against 180
#: in one measurement, equal within the noise in another.
PARALLEL_MIN_BYTES = 2 << 20
PARALLEL_MIN_MACS = 2_000_000


def threads_for(budget: int, macs_per_byte: float = 0.0) -> int:
    """How many threads of this machine should share a layer whose tiles may use ``budget`` bytes in all.

    ``macs_per_byte``: the multiply-adds a tile does per byte of its scratch. This is the
    number of parts the budget is cut into (each part one tile's scratch), computed from
    :data:`CPUS` alone so that the tiles do not depend on :func:`set_threads`; at most
    ``min(parts, get_threads())`` threads then run them.
    """
    for n in range(CPUS, 1, -1):
        share = budget // n
        if share >= PARALLEL_MIN_BYTES or share * macs_per_byte >= PARALLEL_MIN_MACS:
            return n
    return 1


def split_rows(n_rows: int, min_rows: int = 1, parts: int | None = None) -> list[tuple[int, int]]:
    """Cut [0, n_rows) into at most ``parts`` (default get_threads()) contiguous ranges of at least ``min_rows``."""
    parts = max(1, min(_threads if parts is None else parts, n_rows // max(1, min_rows)))
    bounds = [n_rows * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts) if bounds[k + 1] > bounds[k]]


def tile_ranges(n_rows: int, tile_rows: int, parts: int, min_rows: int = 1) -> list[tuple[int, int]]:
    """[0, n_rows) as at most ``min(parts, get_threads())`` ranges of whole tiles of ``tile_rows`` rows.

    Every boundary is a multiple of ``tile_rows``, so a range's tiles, cut from its start,
    are the tiles of the whole, whatever the number of ranges; each range holds at least
    ``min_rows`` rows where it can.
    """
    n_tiles = -(-n_rows // max(1, tile_rows))
    per_range = -(-max(1, min_rows) // max(1, tile_rows))  # tiles a range needs for min_rows
    count = max(1, min(parts, _threads, n_tiles // per_range))
    bounds = [min(n_rows, n_tiles * k // count * tile_rows) for k in range(count + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(count) if bounds[k + 1] > bounds[k]]


def run_ranges(fn, ranges) -> None:
    """Call ``fn(r0, r1)`` for every range, in parallel when there are several; re-raise errors.

    The calling thread runs the first range itself while the pool's threads run the others:
    a short layer then starts at once, and only the other threads have to be woken (waking
    an idle core's thread took 0.05 to several ms on this VM; W5, 2 ms, sometimes ran on one
    thread while the other was still being woken). BLAS runs on one thread in every case:
    the ranges are the parallelism (BLAS threads under them would oversubscribe the cores),
    and a BLAS call's rounding depends on how many threads it splits its work between.
    """
    nested = getattr(_running, "active", False)
    if len(ranges) <= 1 or nested:
        with _blas.threads(1):
            for r0, r1 in ranges:
                fn(r0, r1)
        return

    def one(r0: int, r1: int) -> None:
        _running.active = True
        try:
            with _blas.threads(1):
                fn(r0, r1)
        finally:
            _running.active = False

    pool = _executor(len(ranges) - 1)
    futures = [pool.submit(one, r0, r1) for r0, r1 in ranges[1:]]
    try:
        one(*ranges[0])
    finally:
        for fut in futures:  # the others finish before an error of this thread's range is raised
            fut.exception()
    for fut in futures:
        fut.result()
