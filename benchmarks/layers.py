"""Small and few-filter layers: which path ``auto`` picks, and what OpenCV and threads change.

The W1–W5 workloads of ``run.py`` are the issue's targets; this script times the layers in
between that users run most from the command line: one kernel on the channel sum (``-k
edge`` on a photo), one or two 3-D filters, a few filters with bias and ReLU, a pooled
layer. For each, on a 1080p RGB image (float32, ``same`` padding, in process):

- ``auto``: the engine as ``convcli apply`` runs it (OpenCV allowed when installed);
- ``numpy only``: the same with the OpenCV backend switched off;
- ``numpy, 1 thread``: that, with the engine on one thread.

The three are timed in turns (``--repeat`` rounds), so drift on a shared machine hits them
alike; the table shows medians. The largest difference between the ``auto`` and ``numpy
only`` outputs is printed too (float32 rounding of different summation orders).

Run: ``python benchmarks/layers.py`` (writes ``benchmarks/LAYERS.md``; ``--no-write`` prints only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from convcli import engine  # noqa: E402
from convcli.layer import ConvSpec, PoolSpec  # noqa: E402

EDGE = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32)


def layers(rng: np.random.Generator) -> dict[str, tuple]:
    """name -> (bank, ConvSpec, PoolSpec or None)."""
    same = ConvSpec.from_options(padding="same")
    relu = ConvSpec.from_options(padding="same", activation="relu")
    pool = PoolSpec.from_options(mode="max", size=2, stride=None, padding="valid")

    def bank(shape, bias=False):
        return engine.WeightsBank(rng.standard_normal(shape).astype(np.float32),
                                  rng.standard_normal(shape[-1]) if bias else None)

    return {
        "edge 3×3 on the channel sum": (engine.WeightsBank(EDGE), same, None),
        "1 filter 3×3×3": (bank((3, 3, 3, 1)), same, None),
        "2 filters 3×3×3, bias, ReLU": (bank((3, 3, 3, 2), True), relu, None),
        "4 filters 3×3×3, bias, ReLU (W1)": (bank((3, 3, 3, 4), True), relu, None),
        "4 filters 3×3×3, bias, ReLU, 2×2 max-pool": (bank((3, 3, 3, 4), True), relu, pool),
        "4 filters 5×5×3": (bank((5, 5, 3, 4)), same, None),
        "16 filters 3×3×3": (bank((3, 3, 3, 16)), same, None),
    }


def measure(x, bank, spec, pool, repeat: int) -> dict:
    variants = {"auto": (True, None), "numpy only": (False, None), "numpy, 1 thread": (False, 1)}
    threads = engine.get_threads()
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs, paths = {}, {}
    try:
        for round_ in range(repeat + 1):  # the first round warms up (imports, FFT plans)
            for name, (cv, n) in variants.items():
                engine.use_opencv(cv)
                engine.set_threads(n or threads)
                started = time.perf_counter()
                result = engine.run_layer(x, bank, spec, pool)
                elapsed = time.perf_counter() - started
                if round_:
                    times[name].append(elapsed)
                else:
                    outputs[name], paths[name] = result.output, f"{result.algorithm}/{result.backend}"
    finally:
        engine.use_opencv(True)
        engine.set_threads(threads)
    scale = max(1e-30, float(np.abs(outputs["numpy only"]).max()))
    return {"paths": paths, "ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
            "diff": float(np.abs(outputs["auto"] - outputs["numpy only"]).max()) / scale}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1080)
    x = rng.uniform(0, 255, (1080, 1920, 3)).astype(np.float32)
    try:
        import cv2

        opencv = f"OpenCV {cv2.__version__}"
    except ImportError:
        opencv = "no OpenCV (install the `fast` extra): auto is numpy only"
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"numpy {np.__version__}, {opencv}. Medians of {args.repeat} rounds, in process, 1080p RGB float32.",
             "", "| layer | auto: path | auto ms | numpy only: path | numpy only ms | numpy, 1 thread ms "
             "| max rel. diff |", "|---|---|---:|---|---:|---:|---:|"]
    for name, (bank, spec, pool) in layers(rng).items():
        r = measure(x, bank, spec, pool, args.repeat)
        ms, paths = r["ms"], r["paths"]
        lines.append(f"| {name} | {paths['auto']} | {ms['auto']:.1f} | {paths['numpy only']} | "
                     f"{ms['numpy only']:.1f} | {ms['numpy, 1 thread']:.1f} | {r['diff']:.1e} |")
        print(lines[-1], flush=True)
    if not args.no_write:
        (HERE / "LAYERS.md").write_text("# Small and few-filter layers (`python benchmarks/layers.py`)\n\n"
                                        + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
