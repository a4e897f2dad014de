"""Per-thread control of OpenBLAS's thread count (the BLAS numpy ships with), via ctypes.

The engine parallelises over tiles itself; a BLAS that also starts threads inside every
tile's matmul oversubscribes the cores, and OpenBLAS's spinning threads become very slow
when another process holds a core. OpenBLAS ≥ 0.3.27 has ``openblas_set_num_threads_local``,
which sets the count for the calling thread only, so the user's own numpy use is left
alone. When the symbol cannot be found (another BLAS), this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

_func = None
_looked = False
_lock = threading.Lock()


def _find():
    global _func, _looked
    with _lock:
        if _looked:
            return _func
        _looked = True
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
            for path in sorted(paths):
                # PyDLL: the call (a few hundred ns) keeps the GIL. Through CDLL it released
                # and retook it, and on the engine's threads that handover took 0.1 ms a call.
                lib = ctypes.PyDLL(path)
                func = getattr(lib, "openblas_set_num_threads_local", None)
                if func is not None:
                    func.restype, func.argtypes = ctypes.c_int, [ctypes.c_int]
                    _func = func
                    break
        except (OSError, AttributeError, IndexError):
            _func = None
        return _func


@contextlib.contextmanager
def threads(n: int):
    """Run the block with OpenBLAS using ``n`` threads in this thread, then restore."""
    func = _find()
    if func is None:
        yield
        return
    previous = func(int(n))
    try:
        yield
    finally:
        func(previous if previous > 0 else 0)
