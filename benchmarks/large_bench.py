"""Images larger than memory: ``convcli apply`` streaming in bands, against ``vips conv``.

Cases (issue 12's targets):

1. A 16000×16000 gray tiled TIFF (uint8, 256×256 tiles), ``-k sobel-x --padding same
   --format tiff`` (a float32 tiled BigTIFF out), against ``vips conv`` with the same
   kernel at float precision writing a float tiled BigTIFF; wall time and peak RSS of
   each process. The same image with ``--format png`` and ``--format zarr`` (convcli only).
2. A 20000×20000 RGB tiled TIFF through a two-layer ``--pipeline`` (3×3 conv of 8 filters,
   stride 2, ReLU, 2×2 max pool; then a 3×3 conv of 8 filters), peak RSS.

Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``). The tools alternate round by
round and medians are quoted, with the ratio of medians measured in the same run; the
machine is shared, so the figures move by tens of percent from run to run.
The images are made once, tile by tile (never whole in memory), under
``benchmarks/_work/`` (git-ignored). Run: ``python benchmarks/large_bench.py`` (writes
``benchmarks/LARGE.md``); ``--size`` and ``--rounds`` for quicker looks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "large"
SOBEL_X = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
PIPELINE = """\
layers:
  - conv: {kernels: [%s], stride: 2, activation: relu}
  - pool: {mode: max, size: 2}
  - conv: {kernels: [%s]}
"""


def make_tiff(path: Path, height: int, width: int, channels: int, tile: int = 256) -> Path:
    """A tiled uint8 TIFF of smooth gradients, rings and noise, written tile by tile."""
    import tifffile

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    def tiles():
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y, x = np.mgrid[y0:y0 + tile, x0:x0 + tile].astype(np.float32)
                rings = np.sin(np.hypot(x - width / 2, y - height / 2) / 50)
                base = 127 + 60 * np.sin(x / 97.0) * np.cos(y / 131.0) + 40 * rings
                noise = np.random.default_rng(y0 * 7919 + x0).integers(-12, 13, (tile, tile))
                gray = np.clip(base + noise, 0, 255).astype(np.uint8)
                yield gray if channels == 1 else np.stack([gray, gray[::-1], 255 - gray][:channels], axis=-1)

    shape = (height, width) if channels == 1 else (height, width, channels)
    tifffile.imwrite(path, data=tiles(), shape=shape, dtype=np.uint8, tile=(tile, tile), bigtiff=True,
                     photometric="minisblack" if channels == 1 else "rgb")
    return path


def run_measured(command: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds user + system) of one child process; raises if it fails."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {stderr[-500:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=16000, help="side of the gray image (default 16000)")
    parser.add_argument("--rgb-size", type=int, default=20000, help="side of the RGB image (default 20000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "LARGE.md")
    parser.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument("--append", action="store_true", help="add this run's table to --out")
    args = parser.parse_args()

    convcli = [sys.executable, "-m", "convcli"]
    vips = shutil.which("vips")
    gray = make_tiff(WORK / f"gray{args.size}.tif", args.size, args.size, 1)
    rgb = WORK / f"rgb{args.rgb_size}.tif"
    if not args.cases or "rgb" in args.cases:
        make_tiff(rgb, args.rgb_size, args.rgb_size, 3)
    out = WORK / "out"
    (WORK / "sobel.mat").write_text("3 3 1 0\n" + "\n".join(" ".join(str(v) for v in row) for row in SOBEL_X) + "\n")
    (WORK / "net.yaml").write_text(PIPELINE % (", ".join(["sobel-x", "sobel-y", "edge", "sharpen", "box-blur",
                                                          "emboss", "prewitt-x", "prewitt-y"]),
                                               ", ".join(["sobel-x", "sobel-y", "edge", "sharpen", "box-blur",
                                                          "emboss", "prewitt-x", "prewitt-y"])))
    cases = {
        "convcli tiff": convcli + ["apply", str(gray), "-k", "sobel-x", "--padding", "same", "--format", "tiff",
                                   "-o", str(out), "--quiet"],
        "vips conv": [vips, "conv", str(gray), str(out / "vips.tif[tile,bigtiff]"), str(WORK / "sobel.mat"),
                      "--precision", "float"] if vips else None,
        "convcli png": convcli + ["apply", str(gray), "-k", "sobel-x", "--padding", "same", "--format", "png",
                                  "-o", str(out), "--quiet"],
        "convcli zarr": convcli + ["apply", str(gray), "-k", "sobel-x", "--padding", "same", "--format", "zarr",
                                   "-o", str(out), "--quiet"],
        "convcli rgb pipeline": convcli + ["apply", str(rgb), "--pipeline", str(WORK / "net.yaml"), "--format", "tiff",
                                           "-o", str(out), "--quiet"],
    }
    wanted = [name.strip() for name in args.cases.split(",") if name.strip()]
    times: dict[str, list[float]] = {name: [] for name, cmd in cases.items() if cmd and (not wanted or name in wanted)}
    peaks: dict[str, list[float]] = {name: [] for name in times}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    for round_index in range(args.rounds):
        order = list(times) if round_index % 2 == 0 else list(reversed(times))
        for name in order:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            seconds, peak, cpu = run_measured(cases[name], WORK)
            times[name].append(seconds)
            peaks[name].append(peak)
            cpus[name].append(cpu)
            print(f"round {round_index + 1} {name}: {seconds:.2f} s, CPU {cpu:.2f} s, {peak:.0f} MB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    lines = [
        "# Large images: streaming in bands against libvips",
        "",
        f"`python benchmarks/large_bench.py --rounds {args.rounds}` on this project's 2-core machine (shared with"
        " other jobs while measured: figures move by tens of percent between runs). Tools alternate round by round;"
        " medians; peak RSS is each process's own maximum resident set (`ru_maxrss`).",
        "",
        f"Gray: {args.size}×{args.size} uint8 tiled TIFF; RGB: {args.rgb_size}×{args.rgb_size}×3 uint8 tiled TIFF"
        " (both 256×256 tiles). `-k sobel-x --padding same`; vips: `vips conv IN OUT.tif[tile,bigtiff] sobel.mat"
        " --precision float`. The pipeline: 3×3 conv of 8 filters, stride 2, ReLU, 2×2 max pool; 3×3 conv of 8"
        " filters; tiff out. Default `--memory-limit` (1 GiB).",
        "",
        f"### {', '.join(times)} ({args.rounds} rounds)",
        "",
        "| case | wall time (median) | CPU user+sys (median) | peak RSS (max) | wall times of the runs |",
        "|---|---:|---:|---:|---|",
    ]
    for name in times:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(f"| {name} | {median[name]:.2f} s | {statistics.median(cpus[name]):.2f} s |"
                     f" {max(peaks[name]):.0f} MB | {runs} |")
    if "vips conv" in median and "convcli tiff" in median:
        ratio = median["convcli tiff"] / median["vips conv"]
        wins = sum(a <= b for a, b in zip(times["convcli tiff"], times["vips conv"]))
        lines += ["", f"convcli tiff / vips conv, median wall times: {ratio:.2f}× (convcli as fast or faster in"
                      f" {wins} of {len(times['vips conv'])} rounds); CPU: "
                      f"{statistics.median(cpus['convcli tiff']) / statistics.median(cpus['vips conv']):.2f}×"]
    text = "\n".join(lines) + "\n"
    if args.append and args.out.exists():
        table = lines[next(i for i, line in enumerate(lines) if line.startswith("### ")):]
        text = args.out.read_text() + "\n" + "\n".join(table) + "\n"
    args.out.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
