#!/usr/bin/env python3
"""Time convcli's engine against the peers installed here, and write ``benchmarks/README.md``.

Usage::

    python benchmarks/run.py                     # every workload, every installed peer
    python benchmarks/run.py -w W1 -w W3 -r 3    # some workloads, 3 timed runs each
    python benchmarks/run.py --no-write          # print the table only

Each (workload, tool) pair runs in a fresh child process (``--child``), so one tool's
threads, caches and memory do not disturb the next, and its peak memory can be read from
the kernel: after a warm-up call the child resets its resident-set high-water mark
(``/proc/self/clear_refs``), runs once more and reports ``VmHWM`` minus the resident size
before the call. "Extra" is that peak minus the output's own size: the scratch memory.

Peers are optional: scipy always (it is installed with scikit-image), torch, OpenCV and
TensorFlow when importable; a peer that is missing is listed as skipped. All tools get the
same float32 input and compute the same layer (TensorFlow's ``same`` padding, zeros border,
cross-correlation); every peer's output is checked against convcli's before it is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # cli_bench, batch_bench
THREADS = os.cpu_count() or 1


# ----------------------------------------------------------------------------- workloads
def gaussian(size: int, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    g2 = np.outer(g, g)
    return (g2 / g2.sum()).astype(np.float32)


SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)

WORKLOADS = {
    "W1": dict(desc="1080p RGB, 4 filters 3×3×3, same, bias, ReLU", hw=(1080, 1920), c=3, k=(3, 3), f=4,
               bias=True, relu=True),
    "W2": dict(desc="1080p RGB, 64 filters 3×3×3, same", hw=(1080, 1920), c=3, k=(3, 3), f=64),
    "W3": dict(desc="1080p RGB, 31×31 Gaussian (σ 5), depthwise", hw=(1080, 1920), c=3, dw=gaussian(31, 5.0)),
    "W4": dict(desc="4K RGB, 16 filters 5×5×3, stride 2, same, 2×2 max-pool", hw=(2160, 3840), c=3, k=(5, 5),
               f=16, stride=2, pool=True),
    "W5": dict(desc="1080p RGB, Sobel-x depthwise", hw=(1080, 1920), c=3, dw=SOBEL_X),
    "L21": dict(desc="1080p gray, one 21×21 random (not separable) kernel, same", hw=(1080, 1920), c=1,
                k=(21, 21), f=1),
}


def make_data(name: str):
    """(input H×W×C float32, HWIO weights or None, bias or None, depthwise kernel or None)."""
    spec = WORKLOADS[name]
    rng = np.random.default_rng(20240531)
    x = (rng.random(spec["hw"] + (spec["c"],), dtype=np.float32) * 255).astype(np.float32)
    if "dw" in spec:
        return x, None, None, spec["dw"]
    w = rng.standard_normal(spec["k"] + (spec["c"], spec["f"])).astype(np.float32)
    b = rng.standard_normal(spec["f"]).astype(np.float32) if spec.get("bias") else None
    return x, w, b, None


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


# ----------------------------------------------------------------------------- tools
def tool_convcli(name, x, w, b, dw):
    from convcli import engine
    from convcli.layer import ConvSpec, PoolSpec

    spec = WORKLOADS[name]
    engine.set_threads(THREADS)
    # Steady state: a long-running process has cv2 loaded (the engine imports it once it has
    # saved its import time); one-shot commands are timed by benchmarks/cli_bench.py.
    engine.opencv.module()
    if dw is not None:
        bank = engine.WeightsBank(dw)
        conv = ConvSpec.from_options(padding="same", depthwise=True)
    else:
        bank = engine.WeightsBank(w, b)
        conv = ConvSpec.from_options(padding="same", stride=spec.get("stride", 1),
                                     activation="relu" if spec.get("relu") else None)
    pool = PoolSpec.from_options(mode="max", size=2) if spec.get("pool") else None
    info = {}

    def run():
        result = engine.run_layer(x, bank, conv, pool)
        info["algorithm"] = f"{result.algorithm}/{result.backend}"
        return result.output

    return run, info


def tool_convcli_numpy(name, x, w, b, dw):
    """convcli with its optional OpenCV backend and compiled core switched off (numpy/scipy paths only)."""
    from convcli import engine

    engine.use_opencv(False)
    engine.use_ccore(False)
    return tool_convcli(name, x, w, b, dw)


def epilogue(out, b, spec):
    """Bias, ReLU and 2×2 max-pool, as the workload asks, for peers that only correlate."""
    if b is not None:
        out += b
    if spec.get("relu"):
        np.maximum(out, 0, out=out)
    if spec.get("pool"):
        ph, pw = out.shape[0] // 2, out.shape[1] // 2
        out = out[:2 * ph, :2 * pw].reshape(ph, 2, pw, 2, -1).max(axis=(1, 3))
    return out


def tool_scipy_ndimage(name, x, w, b, dw):
    from scipy import ndimage

    spec = WORKLOADS[name]
    h, wd, c = x.shape
    planes = [np.ascontiguousarray(x[:, :, ch]) for ch in range(c)]
    if dw is not None:
        u, s, vt = np.linalg.svd(dw.astype(np.float64))
        if s[1] < 1e-6 * s[0]:  # separable: two 1-D passes, as gaussian_filter does
            col, row = (u[:, 0] * s[0]).astype(np.float32), vt[0].astype(np.float32)

            def run():
                return np.stack([ndimage.correlate1d(ndimage.correlate1d(p, col, axis=0, mode="constant"),
                                                     row, axis=1, mode="constant") for p in planes], axis=2)
            return run, {"algorithm": "correlate1d ×2"}

        def run():
            return np.stack([ndimage.correlate(p, dw, mode="constant") for p in planes], axis=2)
        return run, {"algorithm": "correlate"}
    stride = spec.get("stride", 1)
    kh = w.shape[0]
    # ndimage centres odd kernels: the same as TF 'same' at stride 1; at stride 2 TF's
    # window for output y starts at 2y − pad_top, so take rows/cols pad_top − kh//2 + … .
    top = same_pads(h, kh, stride)[0]
    off = kh // 2 - top

    def run():
        maps = []
        for f in range(w.shape[3]):
            acc = ndimage.correlate(planes[0], w[:, :, 0, f], mode="constant")
            for ch in range(1, c):
                acc += ndimage.correlate(planes[ch], w[:, :, ch, f], mode="constant")
            if stride > 1:
                acc = acc[off::stride, off::stride]
            maps.append(acc)
        out = np.stack(maps, axis=2)
        return epilogue(out, b, spec)
    return run, {"algorithm": "correlate"}


def tool_scipy_fft(name, x, w, b, dw):
    from scipy import signal

    spec = WORKLOADS[name]
    if spec.get("stride", 1) != 1 or (w is not None and w.shape[3] * x.shape[2] > 16):
        return None
    planes = [np.ascontiguousarray(x[:, :, ch]) for ch in range(x.shape[2])]
    if dw is not None:
        def run():
            return np.stack([signal.fftconvolve(p, dw[::-1, ::-1], mode="same") for p in planes], axis=2)
        return run, {"algorithm": "fftconvolve"}

    def run():
        maps = []
        for f in range(w.shape[3]):
            acc = sum(signal.fftconvolve(p, w[::-1, ::-1, ch, f], mode="same") for ch, p in enumerate(planes))
            maps.append(acc)
        out = np.stack(maps, axis=2).astype(np.float32)
        if b is not None:
            out += b
        if spec.get("relu"):
            np.maximum(out, 0, out=out)
        return out
    return run, {"algorithm": "fftconvolve"}


def tool_torch(name, x, w, b, dw):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    spec = WORKLOADS[name]
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    h, wd, c = x.shape
    if dw is not None:
        wt = torch.from_numpy(np.ascontiguousarray(np.repeat(dw[None, None], c, axis=0)))
        kh, kw = dw.shape
        groups, stride, bt = c, 1, None
    else:
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        kh, kw = w.shape[:2]
        groups, stride = 1, spec.get("stride", 1)
        bt = torch.from_numpy(b) if b is not None else None
    top, bottom = same_pads(h, kh, stride)
    left, right = same_pads(wd, kw, stride)

    def run():
        with torch.no_grad():
            y = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, stride=stride, groups=groups)
            if spec.get("relu"):
                y = F.relu(y)
            if spec.get("pool"):
                y = F.max_pool2d(y, 2)
            return y[0].permute(1, 2, 0).numpy()
    return run, {"algorithm": "conv2d"}


def tool_opencv(name, x, w, b, dw):
    import cv2

    cv2.setNumThreads(THREADS)
    spec = WORKLOADS[name]
    border = cv2.BORDER_CONSTANT
    if dw is not None:
        u, s, vt = np.linalg.svd(dw.astype(np.float64))
        if s[1] < 1e-6 * s[0]:
            col, row = (u[:, 0] * s[0]).astype(np.float32), vt[0].astype(np.float32)
            return (lambda: cv2.sepFilter2D(x, cv2.CV_32F, row, col, borderType=border)), {"algorithm": "sepFilter2D"}
        return (lambda: cv2.filter2D(x, cv2.CV_32F, dw, borderType=border)), {"algorithm": "filter2D"}
    stride = spec.get("stride", 1)
    kh = w.shape[0]
    off = kh // 2 - same_pads(x.shape[0], kh, stride)[0]
    planes = [np.ascontiguousarray(x[:, :, ch]) for ch in range(x.shape[2])]

    def run():
        maps = []
        for f in range(w.shape[3]):
            acc = cv2.filter2D(planes[0], cv2.CV_32F, w[:, :, 0, f], borderType=border)
            for ch in range(1, len(planes)):
                acc += cv2.filter2D(planes[ch], cv2.CV_32F, w[:, :, ch, f], borderType=border)
            maps.append(acc[off::stride, off::stride] if stride > 1 else acc)
        out = cv2.merge(maps) if len(maps) <= 512 else np.stack(maps, axis=2)
        out = out.reshape(out.shape[0], out.shape[1], -1)
        return epilogue(out, b, spec)
    return run, {"algorithm": "filter2D per channel"}


def tool_tensorflow(name, x, w, b, dw):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    spec = WORKLOADS[name]
    xt = tf.constant(x[None])
    if dw is not None:
        wt = tf.constant(np.repeat(dw[:, :, None, None], x.shape[2], axis=2))

        @tf.function
        def layer(v):
            return tf.nn.depthwise_conv2d(v, wt, [1, 1, 1, 1], "SAME")
    else:
        wt = tf.constant(w)
        bt = tf.constant(b) if b is not None else None
        stride = spec.get("stride", 1)

        @tf.function
        def layer(v):
            y = tf.nn.conv2d(v, wt, stride, "SAME")
            if bt is not None:
                y = y + bt
            if spec.get("relu"):
                y = tf.nn.relu(y)
            if spec.get("pool"):
                y = tf.nn.max_pool2d(y, 2, 2, "VALID")
            return y

    return (lambda: layer(xt)[0].numpy()), {"algorithm": "tf.nn"}


TOOLS = {
    "convcli": (tool_convcli, None),
    "convcli (numpy only)": (tool_convcli_numpy, None),
    "scipy.ndimage": (tool_scipy_ndimage, "scipy"),
    "scipy.signal.fftconvolve": (tool_scipy_fft, "scipy"),
    "torch": (tool_torch, "torch"),
    "opencv": (tool_opencv, "cv2"),
    "tensorflow": (tool_tensorflow, "tensorflow"),
}


# ----------------------------------------------------------------------------- child process
def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _release() -> None:
    """Hand freed memory back to the kernel, so the next call's pages count in its peak."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(workload: str, tool: str, repeats: int, budget: float, sample_path: str) -> dict:
    x, w, b, dw = make_data(workload)
    made = TOOLS[tool][0](workload, x, w, b, dw)
    if made is None:
        return {"skipped": "this tool has no way to express the layer"}
    run, info = made
    t0 = time.perf_counter()
    out = run()  # warm-up: imports, plans, graph tracing
    first = time.perf_counter() - t0
    out_bytes = int(np.asarray(out).nbytes)
    np.save(sample_path, np.asarray(out, dtype=np.float32)[::37, ::53])
    del out
    _release()
    peak = None
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident size
        base = _status("VmRSS")
        t0 = time.perf_counter()
        out = run()
        times = [time.perf_counter() - t0]
        peak = _status("VmHWM") - base
        del out
    except OSError:
        times = []
    n = repeats if first * repeats < budget else max(1, min(repeats, int(budget / max(first, 1e-6))))
    while len(times) < n:
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        del out
    return {"times": times, "median": statistics.median(times), "peak": peak, "out_bytes": out_bytes,
            "algorithm": info.get("algorithm", "")}


# ----------------------------------------------------------------------------- parent
def available(module: str | None, python: str) -> bool:
    if module is None:
        return True
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def measure(workload, tool, repeats, budget, python):
    work = HERE / "_work"
    work.mkdir(exist_ok=True)
    sample = work / f"{workload}_{tool}.npy"
    cmd = [python, str(Path(__file__).resolve()), "--child", workload, tool, "--repeats", str(repeats),
           "--budget", str(budget), "--sample", str(sample)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": tail[:200]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "times" in result:
        result["sample"] = str(sample)
    return result


def agree(a_path: str, b_path: str) -> float:
    a, b = np.load(a_path), np.load(b_path)
    if a.shape != b.shape:
        return float("inf")
    scale = max(1e-6, float(np.abs(a).max()))
    return float(np.abs(a - b).max() / scale)


# Issue 14 (the compiled core): TensorFlow on W1, W2, W4; OpenCV on W3, W5; scipy.ndimage on L21.
TARGETS = {"W1": ("tensorflow", 0.5), "W2": ("tensorflow", 0.7), "W4": ("tensorflow", 0.6), "W3": ("opencv", 1.0),
           "W5": ("opencv", 1.0), "L21": ("scipy.ndimage", 0.1)}


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def fmt_mb(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workload", action="append", choices=list(WORKLOADS))
    parser.add_argument("-t", "--tool", action="append", choices=list(TOOLS))
    parser.add_argument("-r", "--repeats", type=int, default=5, help="timed runs per tool (median reported)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed runs per tool at most")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every tool this many times, alternating tools, and pool the runs "
                             "(drift on a shared machine then hits every tool alike)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not write README.md")
    parser.add_argument("--cli", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the command-line cases (benchmarks/cli_bench.py; default: when "
                             "no -w/-t narrows the run)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "TOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.repeats, args.budget, args.sample)))
        return 0

    python = sys.executable
    tools = args.tool or list(TOOLS)
    present = {t: available(TOOLS[t][1], python) for t in tools}
    rows, verdicts = [], []
    names = args.workload or list(WORKLOADS)
    collected: dict[tuple[str, str], dict] = {}
    for round_no in range(args.rounds):
        for name in names:
            for tool in tools:
                if not present[tool]:
                    collected[name, tool] = {"skipped": "not installed"}
                    continue
                print(f"round {round_no + 1}: {name} {tool} …", file=sys.stderr, flush=True)
                r = measure(name, tool, args.repeats, args.budget, python)
                seen = collected.get((name, tool))
                if seen is None or "times" not in seen or "times" not in r:
                    collected[name, tool] = r if seen is None or "times" in r else seen
                    if "times" in r:
                        r["peaks"] = [r["peak"]]
                else:  # pool the runs of every round
                    seen["times"] += r["times"]
                    seen["median"] = statistics.median(seen["times"])
                    seen["peaks"].append(r["peak"])
                    known = [p for p in seen["peaks"] if p is not None]
                    seen["peak"] = statistics.median(known) if known else None
    for name in names:
        results = {tool: collected[name, tool] for tool in tools}
        ours = results.get("convcli", {})
        timed = {t: r for t, r in results.items() if "median" in r}
        peers = {t: r for t, r in timed.items() if not t.startswith("convcli")}
        fastest = min(peers, key=lambda t: peers[t]["median"]) if peers else None
        for tool, r in results.items():
            if "median" not in r:
                rows.append((name, tool, r.get("skipped") or r.get("error", "?"), "", "", "", "", ""))
                continue
            ratio = r["median"] / peers[fastest]["median"] if fastest else float("nan")
            diff = agree(r["sample"], ours["sample"]) if "sample" in ours and tool != "convcli" else 0.0
            own = tool.startswith("convcli")
            extra = None if r["peak"] is None else r["peak"] - r["out_bytes"]
            share = "" if extra is None else f"{100 * extra / r['out_bytes']:.0f} %"
            rows.append((name, tool, r["algorithm"], fmt_ms(r["median"]), f"{ratio:.2f}×",
                         fmt_mb(extra), share, "" if tool == "convcli" else f"{diff:.1e}"))
            if own:
                rows[-1] = (rows[-1][0], f"**{tool}**") + rows[-1][2:]
        if "median" in ours:
            kind, limit = TARGETS.get(name, ("fastest", 1.0))
            ref_tool = fastest if kind == "fastest" else kind
            if ref_tool in peers:
                ratio = ours["median"] / peers[ref_tool]["median"]
                ok = ratio <= limit
                verdicts.append(f"- {name}: convcli {fmt_ms(ours['median'])} ms vs {ref_tool} "
                                f"{fmt_ms(peers[ref_tool]['median'])} ms = {ratio:.2f}× (target ≤ {limit}×): "
                                f"{'met' if ok else 'missed'}")
            else:
                verdicts.append(f"- {name}: target needs {ref_tool}, which is not installed here")
            if ours.get("peak") is not None:
                share = (ours["peak"] - ours["out_bytes"]) / ours["out_bytes"]
                verdicts.append(f"  - {name} memory: {fmt_mb(ours['peak'] - ours['out_bytes'])} MB above the output "
                                f"({100 * share:.0f} % of it; target ≤ 25 %): {'met' if share <= 0.25 else 'missed'}")

    header = ("| workload | tool | path | median ms | × fastest peer | extra MB | extra / output | "
              "max rel. diff vs convcli |\n|---|---|---|---:|---:|---:|---:|---:|")
    table = header + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    print(table)
    print("\n".join(verdicts))
    cli_text, cli_verdicts = "", []
    if args.cli if args.cli is not None else not (args.workload or args.tool):
        import cli_bench

        print("command-line cases …", file=sys.stderr, flush=True)
        cli_text, cli_verdicts = cli_bench.report(max(5, args.repeats))
        print(cli_text)
        print("\n".join(cli_verdicts))
        if not args.no_write:
            cli_bench.write(cli_text, cli_verdicts)
    elif not args.no_write:
        cli_text, cli_verdicts = kept_cli_section()
    if not args.no_write:
        write_readme(table, verdicts + cli_verdicts, args.repeats, args.rounds, cli_text)
    return 0


def kept_cli_section() -> tuple[str, list[str]]:
    """The command-line tables of ``benchmarks/CLI.md`` (its last run), for a README written
    without running them (``--no-cli``): they are kept, marked as from that run."""
    path = HERE / "CLI.md"
    if not path.exists():
        return "", []
    text = path.read_text()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    body, _, targets = body.partition("\n## Targets\n")
    note = "(Not re-run with the engine table above: the last run of `benchmarks/cli_bench.py`, from CLI.md.)\n\n"
    return note + body.strip() + "\n", [line for line in targets.strip().splitlines() if line.strip()]


def write_readme(table: str, verdicts: list[str], repeats: int, rounds: int = 1, cli_text: str = "") -> None:
    import numpy
    import scipy

    desc = "\n".join(f"| {k} | {v['desc']} |" for k, v in WORKLOADS.items())
    # The command-line cases (benchmarks/cli_bench.py), their headings one level down.
    cli_section = ("\n## Command-line cases (whole processes)\n\n" + cli_text.replace("\n## ", "\n### ")
                   if cli_text else "")
    text = f"""# Benchmarks

`benchmarks/run.py` times convcli's engine (`convcli.engine.run_layer`, the code `convcli
apply` runs) against the peers installed in the same Python, on the workloads of issue 4.
This file is written by the script; edit the script, not the tables.

## Running it

```sh
python benchmarks/run.py            # all workloads, every installed peer, and the command-line
                                    # cases (benchmarks/cli_bench.py); rewrites this file and CLI.md
python benchmarks/run.py -w W3 -r 3 --no-write
python benchmarks/large_bench.py    # images larger than memory against `vips conv` (LARGE.md)
```

scipy is always there. The other peers are optional and skipped when missing. Install them
in a separate virtual environment so the project's own environment stays lean
(`.bench-venv/` is git-ignored):

```sh
python3 -m venv .bench-venv
.bench-venv/bin/pip install -e . torch==2.13.0 opencv-python-headless tensorflow-cpu
.bench-venv/bin/python benchmarks/run.py
```

`torch==2.13.0` resolves to the CPU wheel; a bare `torch` may pull a multi-gigabyte CUDA build.

## How it measures

- Every (workload, tool) pair runs in its own child process: one warm-up call (imports,
  FFT plans, TensorFlow tracing), then up to {repeats} timed calls (fewer for tools slower
  than the time budget). This was done in {rounds} round(s), the tools alternating, and the
  table shows the median of all timed calls of all rounds.
- Peak memory: after the warm-up the child resets the kernel's resident-set high-water mark
  (`/proc/self/clear_refs`) and reads `VmHWM` after one call. "extra" is that peak minus the
  output's size, i.e. the scratch memory a tool needs beyond its result.
- All tools compute the same layer: float32, cross-correlation, TensorFlow `same` padding with
  zeros. Each peer's output is compared with convcli's on a sample of pixels (last column).
- Threads: every tool may use all {THREADS} cores.
- Fresh memory: every call's output is new memory for convcli, scipy, OpenCV and torch, and
  the kernel zero-fills each page on its first touch (0.2–0.6 ms per MB on this VM: 100 ms
  and more for W2's 531 MB), while TensorFlow's allocator keeps its pool between calls.

## The engine's paths

`convcli.engine` has one entry point and several paths; `--algorithm auto` (the default)
lets a cost model (`convcli/engine/choose.py`) pick one from the layer's sizes, and the
table's "path" column says which ran (`path/backend`):

- **direct**: per tile of output rows, every kernel tap's (strided, dilated) slice of the
  band copied into a patch matrix by one numpy call, then sgemm (BLAS) in slices of 2048
  pixels; scratch is reused from tile to tile.
- **separable**: kernels of rank ≤ 2 (SVD) as two 1-D passes, each a small banded GEMM.
- **fft**: overlap-save with `scipy.fft` (real transforms, threads) over bands of rows, or
  2-D blocks when a band would not fit the memory budget.
- **opencv** backend (only when `cv2` is importable, only in `auto`): `sepFilter2D` /
  `filter2D` at stride 1, for per-channel filtering (depthwise blurs, edge filters: one
  call on the whole image) and for layers of up to 4 maps (a call per channel and filter
  on bands of rows, summed and interleaved while in cache, the bias as the calls' `delta`).
  The cost model picks it only where it saves at least 15 ms a call, so a one-off command,
  which also pays cv2's 21 ms import, loses at most a few ms. Where it is picked it is
  several times faster than any numpy formulation (see the "convcli (numpy only)" rows, the
  same engine with OpenCV and the compiled core switched off). Every path is tested to give
  the same numbers (`tests/test_engine_paths.py`, `tests/test_ccore.py`).
- **ccore** backend (the compiled core, `convcli/engine/_ccore.c`, built by `pip install`):
  direct convolution without im2col. Per output row, register blocks of pixels × maps
  (16-lane vectors: one pixel × 16 maps for many maps; 16/L pixels × L maps for few maps
  and depthwise layers, from input rows expanded once into an L1-sized ring), bias and
  activation fused, valid pooling with stride = size folded row by row so the un-pooled
  map never reaches memory; borders through the padded image's index maps. Built for
  AVX-512, AVX2+FMA and the baseline in one binary, chosen at import; the GIL is released
  and the engine's threads take whole bands (a band's bits do not depend on the bands).
  Rank-1 kernels where each map reads one channel (depthwise blurs and edge filters, 2-D
  kernels on the channel sum) take its separable loop (`separable/ccore`): per thread a ring
  of input rows filtered horizontally, then the vertical pass with bias and activation, the
  output written with non-temporal stores; `kh + kw` multiply-adds per value instead of
  `kh·kw`, the same bits whatever the bands, column tiles and threads.

## Workloads

| name | layer |
|---|---|
{desc}

## Results

Machine: {platform.machine()}, {THREADS} cores, Python {platform.python_version()}, numpy {numpy.__version__},
scipy {scipy.__version__}. Shared machines are noisy: repeat before drawing fine conclusions.

{table}
{cli_section}
## Targets (issue 14)

{chr(10).join(verdicts)}
"""
    (HERE / "README.md").write_text(text, encoding="utf-8")
    (HERE / "_work").mkdir(exist_ok=True)
    (HERE / "_work" / "last_table.json").write_text(json.dumps({"table": table, "verdicts": verdicts,
                                                                "repeats": repeats, "rounds": rounds}),
                                                    encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
