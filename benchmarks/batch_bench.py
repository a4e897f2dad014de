"""Batch throughput: images per second of ``convcli apply FOLDER -j N`` next to ImageMagick.

200 RGB images of 512×512 (generated, deterministic) go through a 4-filter bank
(edge, sobel-x, sobel-y, box-blur; 3×3, valid padding) to 4 gray PNG maps each,
with ``-j 1`` and ``-j 2``. The peer is ImageMagick's ``convert -morphology
Convolve`` run once per image through ``xargs -P N`` (same parallelism), reading
the image once, converting it to gray and writing the same 4 maps; it runs only
when a real ImageMagick is found (``convert -version`` must start with ``Version: ImageMagick``).

Both sides write PNGs with zlib level 1 (convcli's default ``--compress-level``;
``-define png:compression-level=1`` for ImageMagick) and get the machine's cores
divided by N as threads per process (convcli's workers do this themselves;
``MAGICK_THREAD_LIMIT`` for ImageMagick). Times are wall-clock for the whole
command, start-up included, best of ``--repeat`` runs.

Run: ``python benchmarks/batch_bench.py`` (writes ``benchmarks/BATCH.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KERNELS = {
    "edge": "3x3: -1,-1,-1 -1,8,-1 -1,-1,-1",
    "sobel-x": "3x3: -1,0,1 -2,0,2 -1,0,1",
    "sobel-y": "3x3: -1,-2,-1 0,0,0 1,2,1",
    "box-blur": "3x3: 0.111111,0.111111,0.111111 0.111111,0.111111,0.111111 0.111111,0.111111,0.111111",
}


def make_images(folder: Path, count: int, size: int) -> None:
    """Photo-like test images: smooth colour fields, edges and a little noise."""
    from PIL import Image

    rng = np.random.default_rng(2024)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        fx, fy, phase = rng.uniform(1, 6, 3)
        base = np.stack([np.sin(2 * np.pi * (fx * xx + phase)), np.cos(2 * np.pi * fy * yy),
                         np.sin(2 * np.pi * (fx * xx + fy * yy))], axis=2)
        block = ((xx * 8).astype(int) + (yy * 8).astype(int)) % 2  # hard edges
        pixels = 110 + 70 * base + 40 * block[:, :, None] + rng.normal(0, 6, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"img{i:04d}.png")


def find_imagemagick() -> list[str] | None:
    """The command of a real ImageMagick (``magick`` or ``convert``), or None.

    Every directory on PATH is searched, since an earlier ``convert`` may be
    something else; a candidate counts only if its ``-version`` says ImageMagick.
    """
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for name, prefix in (("magick", []), ("convert", [])):
            path = Path(directory) / name
            if not (path.is_file() and os.access(path, os.X_OK)):
                continue
            try:
                version = subprocess.run([str(path), *prefix, "-version"], capture_output=True, text=True,
                                         timeout=20).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if version.startswith("Version: ImageMagick"):
                return [str(path)] if name == "convert" else [str(path), "convert"]
    return None


def imagemagick_version(command: list[str]) -> str:
    out = subprocess.run([command[0], "-version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].replace("Version: ", "") if out else "?"


def timed(run, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def run_convcli(images: Path, out: Path, jobs: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "convcli", "apply", str(images), "-o", str(out), "-j", str(jobs), "-q"]
    for name in KERNELS:
        args += ["-k", name]
    subprocess.run(args, check=True)


def run_imagemagick(command: list[str], images: Path, out: Path, jobs: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # One ImageMagick process per image: read once, to gray, then each kernel to its own PNG.
    steps = ["-colorspace", "Gray", "-define", "png:compression-level=1", "-write", "mpr:g", "+delete"]
    for name, kernel in KERNELS.items():
        steps += ["mpr:g", "-morphology", "Convolve", kernel, "-write", f"{out}/$(basename \"$0\" .png)_{name}.png",
                  "+delete"]
    steps = steps[:-3] + [steps[-2]]  # the last map is the command's own output file, not a -write
    script = " ".join(shlex.quote(c) for c in command) + ' "$0" ' + " ".join(
        a if a.startswith(f"{out}/") else shlex.quote(a) for a in steps)
    files = "\0".join(str(p) for p in sorted(images.glob("*.png")))
    env = dict(os.environ, MAGICK_THREAD_LIMIT=str(max(1, (os.cpu_count() or 1) // jobs)))
    subprocess.run(["xargs", "-0", "-P", str(jobs), "-n", "1", "sh", "-c", script], input=files.encode(),
                   check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--write", default=str(HERE / "BATCH.md"), help="Markdown file for the results.")
    args = parser.parse_args()
    jobs_list = [int(j) for j in args.jobs.split(",")]
    magick = find_imagemagick()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        make_images(images, args.count, args.size)
        for jobs in jobs_list:
            seconds = timed(lambda: run_convcli(images, Path(tmp) / "convcli", jobs), args.repeat)
            assert len(list((Path(tmp) / "convcli").iterdir())) == 4 * args.count
            rows.append(("convcli apply -j N", jobs, seconds))
            print(f"convcli -j {jobs}: {seconds:.2f} s, {args.count / seconds:.1f} images/s", flush=True)
            if magick:
                seconds = timed(lambda: run_imagemagick(magick, images, Path(tmp) / "im", jobs), args.repeat)
                assert len(list((Path(tmp) / "im").iterdir())) == 4 * args.count
                rows.append(("ImageMagick convert -morphology Convolve, xargs -P N", jobs, seconds))
                print(f"ImageMagick -P {jobs}: {seconds:.2f} s, {args.count / seconds:.1f} images/s", flush=True)
    peer = imagemagick_version(magick) if magick else "not installed: skipped (apt-get install imagemagick)"
    lines = [
        "# Batch throughput",
        "",
        f"`python benchmarks/batch_bench.py`: {args.count} RGB images of {args.size}×{args.size} (PNG), a bank of",
        "4 filters (edge, sobel-x, sobel-y, box-blur; 3×3, valid) → 4 gray 8-bit PNG maps per image,",
        "zlib level 1 on both sides; wall-clock time of the whole command, start-up included,",
        f"best of {args.repeat}.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, load average {load:.1f} at the start (a shared machine: expect ±20 %).",
        f"Peer: {peer}.",
        "",
        "| tool | parallel processes | seconds | images/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for tool, jobs, seconds in rows:
        lines.append(f"| {tool} | {jobs} | {seconds:.2f} | {args.count / seconds:.1f} |")
    lines += [
        "",
        "Not the same operation in every detail: ImageMagick converts to luma gray first and clamps",
        "each map to 0..255, while convcli correlates every channel and sums them (one map per",
        "filter, as a CNN layer) and stretches each map's min..max to 0..255 (`--normalize minmax`).",
        "The work per image — decode, four 3×3 filters, four PNG encodes — is the same.",
        "",
    ]
    Path(args.write).write_text("\n".join(lines))
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
